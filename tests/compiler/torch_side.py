"""The user's side of the PyTorch front-end: run by the tests in a Python that holds torch *and* edgeml,
as a PyTorch user's does (tests/support/toolchain.py: user_python_with_torch; the test suite's own
environment stays torch-free).

``python torch_side.py OUTDIR``, on two small real-ish models:

- ``edgeml.compile(module, example_inputs=..., dynamic_shapes=...)`` in process: a CNN feeding an LSTM
  with explicit state (x, h, c) -> (y, h', c'), batch dynamic; the bundle is loaded with ``edgeml.load``
  and run on fresh inputs of another batch size beside torch eager;
- a GRU with state as a ``torch.export.ExportedProgram``: compiled in process (named outputs), and
  saved with ``torch.export.save`` (for ``edgeml build model.pt2``) beside fresh inputs and torch
  eager's outputs on them for the test to compare that bundle against.

Writes ``OUTDIR/result.json`` (cosines, provenance) and ``OUTDIR/gru.pt2`` + ``OUTDIR/gru_check.npz``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

import edgeml


class ConvLSTM(torch.nn.Module):
    """Image frames -> CNN features -> one LSTM step with the caller's state."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1))
        self.lstm = torch.nn.LSTM(16, 24, batch_first=True)
        self.head = torch.nn.Linear(24, 5)

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor):  # type: ignore[no-untyped-def]
        feats = self.features(x).flatten(1).unsqueeze(1)
        out, (h2, c2) = self.lstm(feats, (h, c))
        return self.head(out[:, -1]), h2, c2


class GRUStep(torch.nn.Module):
    """A streaming GRU: frames [batch, 5, 12] and state [1, batch, 20] -> scores, next state."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = torch.nn.GRU(12, 20, batch_first=True)
        self.out = torch.nn.Linear(20, 3)

    def forward(self, frames: torch.Tensor, state: torch.Tensor):  # type: ignore[no-untyped-def]
        seq, nxt = self.gru(frames, state)
        return torch.sigmoid(self.out(seq)), nxt


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def conv_lstm(out_dir: Path) -> dict[str, object]:
    torch.manual_seed(0)
    model = ConvLSTM().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model.features[1].running_mean.uniform_(-0.5, 0.5)
        model.features[1].running_var.uniform_(0.5, 2.0)
    batch = torch.export.Dim("batch")
    example = (torch.randn(2, 3, 16, 16), torch.randn(1, 2, 24), torch.randn(1, 2, 24))
    result = edgeml.compile(model, "x86-cpu", example_inputs=example,
                            dynamic_shapes={"x": {0: batch}, "h": {1: batch}, "c": {1: batch}},
                            precision="fp32", runtime="onnxruntime", output=out_dir / "convlstm.edgepkg",
                            benchmark_seconds=0.05, progress=False)
    fresh = (torch.randn(3, 3, 16, 16), torch.randn(1, 3, 24), torch.randn(1, 3, 24))
    with torch.no_grad():
        eager = [t.numpy() for t in model(*fresh)]
    with edgeml.load(result.bundle_path) as bundle:
        got = bundle.predict(x=fresh[0].numpy(), h=fresh[1].numpy(), c=fresh[2].numpy())
        names = [s.name for s in bundle.manifest.outputs]
        inputs = [{"name": s.name, "shape": list(s.shape)} for s in bundle.manifest.inputs]
        provenance = bundle.manifest.raw["provenance"]
    return {"bundle": str(result.bundle_path), "outputs": names, "inputs": inputs, "provenance": provenance,
            "cosines": {n: cosine(got[n], e) for n, e in zip(names, eager, strict=True)},
            "max_abs": {n: float(np.abs(got[n] - e).max()) for n, e in zip(names, eager, strict=True)}}


def gru_pt2(out_dir: Path) -> dict[str, object]:
    torch.manual_seed(1)
    model = GRUStep().eval()
    batch = torch.export.Dim("batch")  # torch.export specializes the GRU's time steps: they stay 5
    example = (torch.randn(2, 5, 12), torch.zeros(1, 2, 20))
    program = torch.export.export(model, example, dynamic_shapes={"frames": {0: batch}, "state": {1: batch}})
    torch.export.save(program, out_dir / "gru.pt2")
    fresh = (torch.randn(3, 5, 12), torch.randn(1, 3, 20))
    with torch.no_grad():
        scores, state = model(*fresh)
    np.savez(out_dir / "gru_check.npz", frames=fresh[0].numpy(), state=fresh[1].numpy(),
             out_scores=scores.numpy(), out_state=state.numpy())
    # the ExportedProgram object itself, in process: its own example inputs check the export
    result = edgeml.compile(program, "x86-cpu", precision="fp32", runtime="onnxruntime",
                            export_options={"output_names": ["scores", "next_state"]},
                            output=out_dir / "gru-program.edgepkg", benchmark_seconds=0.05, progress=False)
    with edgeml.load(result.bundle_path) as bundle:
        got = bundle.predict(frames=fresh[0].numpy(), state=fresh[1].numpy())
        origin = bundle.manifest.raw["provenance"]["import"]
    return {"source_kind": origin["source_kind"], "outputs": sorted(got),
            "cosines": {"scores": cosine(got["scores"], scores.numpy()),
                        "next_state": cosine(got["next_state"], state.numpy())}}


def main() -> None:
    out_dir = Path(sys.argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"torch": torch.__version__, "conv_lstm": conv_lstm(out_dir), "gru_program": gru_pt2(out_dir)}
    (out_dir / "result.json").write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
