"""What travels in a bundle beside the model to make it usable on its own: state pairs, a tokenizer, framing.

Three optional manifest keys, each checked against the model's inputs and outputs when a manifest is read:

- ``state``: ``[{"input": "state", "output": "stateN", "init": "zeros"}, ...]`` — a stateful (recurrent,
  streaming) model: after each call the output is fed back as the input of the next call of the same
  stream. ``init`` is the value of the first call: ``"zeros"`` (the only kind today) with the input's
  shape, a dynamic dimension taking its size from another input of the same call that names the same
  dimension, else 1.
- ``tokenizer``: ``{"file": "tokenizer/tokenizer.json", "max_length": 128, "padding": "longest",
  "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask"}}`` — a Hugging Face
  ``tokenizers`` file that turns text into the model inputs named in ``inputs`` (tokenizer field ->
  model input); ``padding`` is ``"longest"`` (pad to the longest text of the call) or ``"max_length"``.
- ``preprocess`` of ``"kind": "audio_frames"``: ``{"kind": "audio_frames", "input": "audio",
  "frame": 512, "hop": 512}`` — a client may post a PCM buffer of any length for ``input``; it is cut
  into frames of ``frame`` samples every ``hop`` samples and each frame runs in order (a stream keeps
  the samples that do not fill a frame for its next call). Image preprocessing keeps its own form
  (no ``kind``).

How state pairs are found when the build does not name them (:func:`infer_state_pairs`), on purpose
conservative: an input ``X`` pairs with an output named ``X_out``, ``X_next``, ``next_X``, ``new_X``,
``Xn`` or ``XN`` (``state``/``stateN``, ``h``/``hn``), and only when the two have the same dtype and
rank and no fixed dimension differs. Anything else is named explicitly (``--state in=out``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgeml.errors import ManifestError

if TYPE_CHECKING:
    from edgeml.bundle.manifest import TensorSpec

STATE_INITS = ("zeros",)
PADDINGS = ("longest", "max_length")
TOKENIZER_FIELDS = ("input_ids", "attention_mask", "token_type_ids")
AUDIO_FRAMES = "audio_frames"
DEFAULT_MAX_LENGTH = 512          # when neither the model's shape nor the tokenizer says otherwise
_OUTPUT_PATTERNS = ("{}_out", "{}_next", "next_{}", "new_{}", "{}n", "{}N")


@dataclass(frozen=True)
class StatePair:
    input: str
    output: str
    init: str = "zeros"

    def to_json(self) -> dict[str, str]:
        return {"input": self.input, "output": self.output, "init": self.init}

    @classmethod
    def parse(cls, text: str) -> StatePair:
        """``"state=stateN"`` (the ``--state`` flag) -> a pair."""
        name, sep, out = text.partition("=")
        if not sep or not name.strip() or not out.strip():
            raise ManifestError(f"state pair '{text}' must be INPUT=OUTPUT, e.g. --state state=stateN")
        return cls(name.strip(), out.strip())


def _compatible(a: TensorSpec, b: TensorSpec) -> bool:
    if a.dtype != b.dtype or len(a.shape) != len(b.shape):
        return False
    return all(not (isinstance(x, int) and isinstance(y, int) and x >= 0 and y >= 0 and x != y)
               for x, y in zip(a.shape, b.shape, strict=True))


def infer_state_pairs(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> list[StatePair]:
    """The pairs the naming rules in the module docstring find (each input at most one output)."""
    by_name = {o.name: o for o in outputs}
    pairs = []
    for spec in inputs:
        found = [by_name[p.format(spec.name)] for p in _OUTPUT_PATTERNS if p.format(spec.name) in by_name]
        matches = [o for o in found if _compatible(spec, o)]
        if len(matches) == 1:
            pairs.append(StatePair(spec.name, matches[0].name))
    return pairs


def check_state_pairs(pairs: Iterable[StatePair], inputs: Sequence[TensorSpec],
                      outputs: Sequence[TensorSpec]) -> list[StatePair]:
    """Every pair names a model input and output of the same dtype and rank; each used once."""
    ins, outs = {s.name: s for s in inputs}, {s.name: s for s in outputs}
    checked: list[StatePair] = []
    for pair in pairs:
        if pair.input not in ins:
            raise ManifestError(f"state input '{pair.input}' is not a model input (inputs: {', '.join(ins)})")
        if pair.output not in outs:
            raise ManifestError(f"state output '{pair.output}' is not a model output (outputs: {', '.join(outs)})")
        if not _compatible(ins[pair.input], outs[pair.output]):
            raise ManifestError(f"state '{pair.input}' {ins[pair.input].dtype}{list(ins[pair.input].shape)} cannot "
                                f"take '{pair.output}' {outs[pair.output].dtype}{list(outs[pair.output].shape)} "
                                "back: dtype and shape must match")
        if pair.init not in STATE_INITS:
            raise ManifestError(f"state '{pair.input}': init '{pair.init}' must be one of {', '.join(STATE_INITS)}")
        if any(p.input == pair.input or p.output == pair.output for p in checked):
            raise ManifestError(f"state input '{pair.input}' or output '{pair.output}' is paired twice")
        checked.append(pair)
    return checked


def state_pairs_from_json(data: Any) -> list[StatePair]:
    return [StatePair(str(d["input"]), str(d["output"]), str(d.get("init", "zeros"))) for d in data or []]


@dataclass(frozen=True)
class TokenizerSpec:
    file: str
    inputs: Mapping[str, str]             # tokenizer field (input_ids, ...) -> model input name
    max_length: int = DEFAULT_MAX_LENGTH
    padding: str = "longest"

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "inputs": dict(self.inputs), "max_length": self.max_length,
                "padding": self.padding}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TokenizerSpec:
        return cls(str(data["file"]), {str(k): str(v) for k, v in data["inputs"].items()},
                   int(data.get("max_length", DEFAULT_MAX_LENGTH)), str(data.get("padding", "longest")))

    def check(self, inputs: Sequence[TensorSpec], files: Iterable[str]) -> None:
        names = {s.name for s in inputs}
        if self.file not in set(files):
            raise ManifestError(f"tokenizer file '{self.file}' is not in the manifest's 'files'")
        unknown = sorted(set(self.inputs) - set(TOKENIZER_FIELDS))
        if unknown or "input_ids" not in self.inputs:
            raise ManifestError(f"tokenizer inputs must map input_ids (and optionally attention_mask, "
                                f"token_type_ids) to model inputs; got {sorted(self.inputs)}")
        missing = sorted(v for v in self.inputs.values() if v not in names)
        if missing:
            raise ManifestError(f"tokenizer fills {', '.join(missing)}, which the model does not take "
                                f"(inputs: {', '.join(sorted(names))})")
        if self.padding not in PADDINGS:
            raise ManifestError(f"tokenizer padding '{self.padding}' must be one of {', '.join(PADDINGS)}")


def tokenizer_inputs(inputs: Sequence[TensorSpec]) -> dict[str, str]:
    """The model inputs a tokenizer fills, found by their standard names (BERT-style encoders)."""
    names = {s.name for s in inputs}
    return {f: f for f in TOKENIZER_FIELDS if f in names}


@dataclass(frozen=True)
class AudioFraming:
    input: str
    frame: int
    hop: int

    def to_json(self) -> dict[str, Any]:
        return {"kind": AUDIO_FRAMES, "input": self.input, "frame": self.frame, "hop": self.hop}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AudioFraming:
        try:
            frame = int(data["frame"])
            framing = cls(str(data["input"]), frame, int(data.get("hop", frame)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"audio framing needs input, frame (and hop) numbers: {exc}") from None
        if not 0 < framing.hop <= framing.frame:
            raise ManifestError(f"audio framing: hop {framing.hop} must be in 1..frame ({framing.frame})")
        return framing

    def check(self, inputs: Sequence[TensorSpec]) -> None:
        spec = next((s for s in inputs if s.name == self.input), None)
        if spec is None or not spec.shape or spec.shape[-1] not in (self.frame, *(d for d in spec.shape
                                                                                 if isinstance(d, str))):
            raise ManifestError(f"audio framing: input '{self.input}' must be a model input whose last "
                                f"dimension is the frame size {self.frame}")


def audio_framing(preprocess: Mapping[str, Any] | None) -> AudioFraming | None:
    if not preprocess or preprocess.get("kind") != AUDIO_FRAMES:
        return None
    return AudioFraming.from_json(preprocess)
