"""Run a list of passes with a content-addressed cache.

Each step's output lives under ``cache_dir()/build/<key>/`` with an ``artifact.json`` describing it,
where the key hashes :meth:`Pass.cache_key` (pass, config, input digest, target), the edgeml version
and, for passes that may read calibration data, the data's fingerprint. So a rebuild with one changed
option reruns only the steps from that option on. Entries are written into a staging directory and
renamed into place, so an interrupted build never leaves a half-written entry. Passes that measure
rather than transform (``cacheable = False``: evaluate, benchmark, package) always run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgeml._version import __version__
from edgeml.compiler.passes.base import Artifact, BuildContext, Pass, get_pass
from edgeml.jsontypes import JSON, JSONDict, as_dict, as_list, as_str, as_strs
from edgeml.paths import cache_dir

Step = tuple[str, dict[str, JSON]]


@dataclass
class StepRecord:
    name: str
    config: dict[str, JSON]
    seconds: float
    cached: bool

    def to_json(self) -> JSONDict:
        return {"name": self.name, "config": self.config, "seconds": round(self.seconds, 3), "cached": self.cached}


def build_cache_root() -> Path:
    return cache_dir() / "build"


def artifact_to_json(artifact: Artifact, root: Path) -> JSONDict:
    def rel(p: Path) -> str:
        try:
            return str(p.resolve().relative_to(root.resolve()))
        except ValueError:
            return str(p.resolve())

    return {"path": rel(artifact.path), "format": artifact.format, "precision": artifact.precision,
            "digest": artifact.digest, "extra_files": [rel(p) for p in artifact.extra_files],
            "runtime": artifact.runtime, "metadata": artifact.metadata}


def artifact_from_json(data: JSONDict, root: Path) -> Artifact:
    runtime = data["runtime"]
    return Artifact(path=root / as_str(data["path"]), format=as_str(data["format"]),
                    precision=as_str(data["precision"]), digest=as_str(data["digest"]),
                    extra_files=tuple(root / p for p in as_strs(data["extra_files"])),
                    runtime=None if runtime is None else as_str(runtime), metadata=dict(as_dict(data["metadata"])))


def _step_key(pass_key: str, name: str, ctx: BuildContext, uses_calibration: bool) -> str:
    parts = [pass_key, name, __version__]
    fingerprint = getattr(ctx.calibration, "fingerprint", None)
    if uses_calibration and fingerprint is not None:
        parts.append(fingerprint())
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def _load_cached(entry: Path) -> Artifact | None:
    meta = entry / "artifact.json"
    if not meta.is_file():
        return None
    try:
        artifact = artifact_from_json(json.loads(meta.read_text()), entry)
    except (ValueError, KeyError):
        return None
    return artifact if all(p.is_file() for p in artifact.files) else None


def run_steps(artifact: Artifact, steps: Sequence[Step], ctx: BuildContext, *, scratch: Path,
              use_cache: bool = True, records: list[StepRecord] | None = None,
              trail: list[Artifact] | None = None) -> Artifact:
    """Run ``steps`` in order starting from ``artifact``. ``records`` collects timings and cache hits;
    ``trail`` collects every intermediate artifact (the input of step i is ``trail[i]``)."""
    for name, config in steps:
        if trail is not None:
            trail.append(artifact)
        cls = get_pass(name)
        p = cls(**config)
        started = time.perf_counter()
        cacheable = use_cache and bool(getattr(cls, "cacheable", True))
        cached = False
        if cacheable:
            key = _step_key(p.cache_key(artifact, ctx), name, ctx, bool(getattr(cls, "uses_calibration", True)))
            entry = build_cache_root() / key
            hit = _load_cached(entry)
            if hit is not None:
                artifact, cached = hit, True
            else:
                artifact = _run_into_cache(p, artifact, ctx, entry, config)
        else:
            workdir = scratch / f"{len(records or [])}-{name}-{uuid.uuid4().hex[:6]}"
            workdir.mkdir(parents=True)
            ctx.workdir = workdir
            artifact = _record(p.run(artifact, ctx), name, config)
        if records is not None:
            records.append(StepRecord(name, config, time.perf_counter() - started, cached))
    return artifact


def _record(artifact: Artifact, name: str, config: dict[str, JSON]) -> Artifact:
    passes: list[JSON] = [*as_list(artifact.metadata.get("passes", [])), {"name": name, "config": config}]
    return artifact.evolve(metadata={**artifact.metadata, "passes": passes})


def _run_into_cache(p: Pass, artifact: Artifact, ctx: BuildContext, entry: Path, config: dict[str, JSON]) -> Artifact:
    staging = entry.with_name(f".{entry.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}")
    staging.mkdir(parents=True)
    try:
        ctx.workdir = staging
        out = _record(p.run(artifact, ctx), p.name, config)
        (staging / "artifact.json").write_text(json.dumps(artifact_to_json(out, staging), default=str))
        try:
            os.rename(staging, entry)
        except OSError:  # another build wrote the same entry first: identical content, use theirs
            shutil.rmtree(staging, ignore_errors=True)
        loaded = _load_cached(entry)
        if loaded is None:
            raise OSError(f"build cache entry {entry} is unreadable; delete it and rebuild")
        return loaded
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
