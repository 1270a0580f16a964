"""Sample inputs for a text model built with a tokenizer and no calibration data.

Random token ids are not text: a BERT-like encoder given them runs, but its gate, smoke test and reference
statistics then describe noise, and random ``token_type_ids`` crash some embedding lookups. When the build
ships a tokenizer, a few ordinary sentences tokenized by it stand in instead (padded to the longest, so
they also fix the sequence dimension). They are still not calibration data: quantized candidates keep
asking for ``--calibration``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from edgeml.bundle.manifest import TensorSpec
from edgeml.compiler.data import SampleSet

SENTENCES = (
    "The camera at the north gate reported a person walking past at night.",
    "Please restart the pump if the pressure stays low for more than ten minutes.",
    "A small dog is playing in the park.",
    "The delivery arrived two days late and the box was damaged.",
    "How do I reset my password?",
    "Temperature in the server room rose above thirty degrees this afternoon.",
    "She bought fresh bread, cheese and apples at the market.",
    "The update was rolled back on three devices after the error rate went up.",
    "Turn left at the second traffic light.",
    "Quarterly revenue grew faster than the analysts expected.",
    "The train to the airport leaves every fifteen minutes.",
    "Water the plants twice a week in summer.",
    "An engineer inspected the bridge after the storm.",
    "What time does the pharmacy open on Sundays?",
    "The children built a sandcastle near the water.",
    "Battery level is low; connect the charger.",
)


def tokenizer_samples(tokenizer: str | Path, specs: Sequence[TensorSpec]) -> SampleSet | None:
    """One sample per sentence, tokenized as the bundle will tokenize text; None when the tokenizer does not
    fill every model input (the model has inputs beside the text)."""
    from edgeml.bundle.pack import tokenizer_entry
    from edgeml.bundle.prepost import TokenizerSpec
    from edgeml.textinput import TextEncoder

    entry, path = tokenizer_entry(tokenizer, specs)
    spec = TokenizerSpec.from_json(entry)
    if sorted(spec.inputs.values()) != sorted(s.name for s in specs):
        return None
    feeds = TextEncoder(path, spec, specs).encode(list(SENTENCES))
    samples = [{name: value[i:i + 1] for name, value in feeds.items()} for i in range(len(SENTENCES))]
    return SampleSet(samples, None, "sentences tokenized by the bundle's tokenizer")
