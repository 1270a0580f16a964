"""The benchmark child process: ``python -m edgeml.compiler.benchproc JOB.json``.

Runs :func:`edgeml.compiler.hostrun.measure_here` on the job and writes ``progress DONE TOTAL`` lines
and one final ``result {json}`` line to stdout. Runs in its own process so the model's peak memory
and timings are its own (see :func:`edgeml.compiler.hostrun.measure`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main(job_path: str) -> int:
    from edgeml.compiler.hostrun import measure_here, options_from_json
    from edgeml.errors import EdgeMLError

    job = json.loads(Path(job_path).read_text())
    with np.load(job["feed"], allow_pickle=False) as data:
        feed = {k: data[k] for k in data.files}

    def progress(done: int, total: int) -> None:
        print(f"progress {done} {total}", flush=True)

    try:
        base = job.get("baseline")
        baseline = (Path(base["model"]), base["runtime"], options_from_json(base["options"])) if base else None
        result = measure_here(Path(job["model"]), job["runtime"], options_from_json(job["options"]), feed,
                              seconds=float(job["seconds"]), warmup=int(job["warmup"]),
                              max_iters=int(job["max_iters"]), min_iters=int(job["min_iters"]),
                              baseline=baseline, progress=progress)
    except EdgeMLError as exc:
        print("result " + json.dumps({"error": str(exc)}), flush=True)
        return 1
    print("result " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
