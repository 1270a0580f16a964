from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeml.bundle import TensorSpec
from edgeml.compiler.data import Preprocess, load_labels, load_samples, random_samples, split
from edgeml.errors import ConfigError

IMG = [TensorSpec("image", "float32", (1, 3, 8, 10))]
TWO = [TensorSpec("a", "float32", ("N", 4)), TensorSpec("b", "int64", ("N", 2))]


def test_npz_splits_first_axis_into_batch_one_feeds_and_casts_dtypes(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, a=np.arange(12, dtype=np.float64).reshape(3, 4), b=np.ones((3, 2), dtype=np.int32))
    s = load_samples(path, TWO)
    assert len(s) == 3
    assert s[1]["a"].shape == (1, 4) and s[1]["a"].dtype == np.float32
    assert s[2]["b"].dtype == np.int64
    np.testing.assert_array_equal(s[1]["a"][0], [4, 5, 6, 7])


def test_npz_with_an_extra_leading_axis_is_indexed(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, image=np.zeros((5, 1, 3, 8, 10), dtype=np.float32))
    assert load_samples(path, IMG)[0]["image"].shape == (1, 3, 8, 10)


def test_npz_with_wrong_keys_names_the_inputs(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, a=np.zeros((3, 4), dtype=np.float32))
    with pytest.raises(ConfigError, match=r"missing: \['b'\]"):
        load_samples(path, TWO)


def test_npy_feeds_a_single_input_model_and_refuses_multi_input(tmp_path: Path) -> None:
    path = tmp_path / "d.npy"
    np.save(path, np.zeros((2, 3, 8, 10), dtype=np.float32))
    assert len(load_samples(path, IMG)) == 2
    with pytest.raises(ConfigError, match="single-input"):
        load_samples(path, TWO)


def test_shape_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "d.npy"
    np.save(path, np.zeros((2, 3, 9, 10), dtype=np.float32))
    with pytest.raises(ConfigError, match=r"wants \[1, 3, 8, 10\]"):
        load_samples(path, IMG)


def test_image_folder_with_declared_preprocessing(tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (20, 16), (255, 0, 10 * i)).save(folder / f"{i}.png")
    (folder / "notes.txt").write_text("ignored")
    prep = Preprocess(size=(10, 8), layout="NCHW", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    s = load_samples(folder, IMG, preprocess=prep)
    assert len(s) == 3
    x = s[0]["image"]
    assert x.shape == (1, 3, 8, 10)
    # red channel 255 -> (1 - 0.5) / 0.5 = 1, green 0 -> -1
    assert np.allclose(x[0, 0], 1.0) and np.allclose(x[0, 1], -1.0)
    bgr = load_samples(folder, IMG, preprocess=Preprocess(size=(10, 8), color="BGR"))[0]["image"]
    assert np.allclose(bgr[0, 2], 1.0)


def test_image_folder_guesses_nhwc_from_a_static_input(tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (32, 32)).save(folder / "a.jpg")
    s = load_samples(folder, [TensorSpec("x", "float32", (1, 12, 14, 3))])
    assert s[0]["x"].shape == (1, 12, 14, 3)


def test_image_that_does_not_fit_asks_for_declared_preprocessing(tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (32, 32)).save(folder / "a.png")
    with pytest.raises(ConfigError, match="declare the preprocessing"):
        load_samples(folder, IMG, preprocess=Preprocess(size=(32, 32)))


def test_iterables_of_arrays_and_dicts(tmp_path: Path) -> None:
    arrays = [np.zeros((3, 8, 10), dtype=np.float32) for _ in range(4)]
    assert load_samples(iter(arrays), IMG)[3]["image"].shape == (1, 3, 8, 10)
    dicts = [{"a": np.zeros(4), "b": np.zeros(2, dtype=np.int64)} for _ in range(2)]
    s = load_samples(dicts, TWO, labels=[0, 1])
    assert s[0]["a"].shape == (1, 4) and s.labels is not None and list(s.labels) == [0, 1]
    with pytest.raises(ConfigError, match="sample 0 has inputs"):
        load_samples([{"a": np.zeros(4)}], TWO)


def test_labels_from_txt_and_npy_and_count_mismatch(tmp_path: Path) -> None:
    (tmp_path / "l.txt").write_text("1\n2\n\n3\n")
    assert list(load_labels(tmp_path / "l.txt")) == [1, 2, 3]
    np.save(tmp_path / "l.npy", np.array([[0], [1]]))
    assert list(load_labels(tmp_path / "l.npy")) == [0, 1]
    (tmp_path / "bad.txt").write_text("cat\n")
    with pytest.raises(ConfigError, match="one integer"):
        load_labels(tmp_path / "bad.txt")
    with pytest.raises(ConfigError, match="3 labels for 2 samples"):
        load_samples(np.zeros((2, 3, 8, 10), dtype=np.float32), IMG, labels=tmp_path / "l.txt")


def test_split_holds_out_disjoint_samples_and_keeps_labels() -> None:
    feeds = load_samples(np.arange(40, dtype=np.float32).reshape(10, 4), [TensorSpec("x", "float32", ("N", 4))],
                         labels=np.arange(10))
    cal, ev = split(feeds, 0.3)
    assert (len(cal), len(ev)) == (7, 3)
    assert ev.labels is not None and cal.labels is not None
    assert set(ev.labels.tolist()).isdisjoint(cal.labels.tolist())
    # each held-out feed still carries its own label
    for feed, label in zip(ev, ev.labels, strict=True):
        assert feed["x"][0, 0] == label * 4


def test_random_samples_follow_specs_and_fingerprint_changes_with_data() -> None:
    s = random_samples(TWO, 3)
    assert s[0]["a"].shape == (1, 4) and s[0]["b"].dtype == np.int64
    assert s.fingerprint() == random_samples(TWO, 3).fingerprint()
    assert s.fingerprint() != random_samples(TWO, 3, seed=1).fingerprint()


def test_progress_view_reports_each_sample() -> None:
    s = random_samples(TWO, 3)
    seen: list[tuple[str, int, int]] = []
    assert len(list(s.with_progress("calibrate", lambda *a: seen.append(a)))) == 3
    assert seen[-1] == ("calibrate", 3, 3)


def test_preprocess_json_round_trip_and_unknown_keys() -> None:
    p = Preprocess(size=(4, 2), layout="NHWC", mean=(1.0, 2.0, 3.0))
    assert Preprocess.from_json(p.to_json()) == p
    with pytest.raises(ConfigError, match="'sise' is unknown"):
        Preprocess.from_json({"sise": [1, 2]})
    with pytest.raises(ConfigError, match="layout"):
        Preprocess(layout="CHW")
