"""Test seam, loaded only by processes whose PYTHONPATH starts with this folder (see
tests/compiler/test_build_slower_candidate.py): every onnxruntime session of a quantized (QDQ) model
takes EDGEML_TEST_QDQ_DELAY_S longer per run, so an INT8 candidate is slower than float on any host.
The delay is the injected cost being measured, not a wait for anything; everything else is real."""

from __future__ import annotations

import os
import time
from typing import Any

DELAY_S = float(os.environ.get("EDGEML_TEST_QDQ_DELAY_S", "0"))


def _install() -> None:
    import onnx
    import onnxruntime

    session = onnxruntime.InferenceSession
    original_init, original_run = session.__init__, session.run

    def init(self: Any, path_or_bytes: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, path_or_bytes, *args, **kwargs)
        model = (onnx.load_from_string(path_or_bytes) if isinstance(path_or_bytes, bytes)
                 else onnx.load(str(path_or_bytes), load_external_data=False))
        self._edgeml_test_qdq = any(n.op_type == "QuantizeLinear" for n in model.graph.node)

    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(self, "_edgeml_test_qdq", False):
            time.sleep(DELAY_S)
        return original_run(self, *args, **kwargs)

    session.__init__ = init
    session.run = run


if DELAY_S > 0:
    _install()
