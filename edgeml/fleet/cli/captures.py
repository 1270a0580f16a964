"""``edgeml-fleet captures``: list, export (a dataset ``edgeml build --calibration/--eval`` takes as it
is), delete captured samples, and set how long the fleet keeps them."""

from __future__ import annotations

import csv
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import numpy as np

from edgeml.fleet.cli.output import call, client, echo_json, json_option, show, table
from edgeml.fleet.client import FleetClient

CAPTURE_COLUMNS = [("received_at", "received"), ("device", "device"), ("capture_id", "capture id"),
                   ("model", "model"), ("version", "version"), ("trigger", "trigger"), ("figures", "figures"),
                   ("size", "bytes")]
PAGE = 500


def _filters(f: Any) -> Any:
    for option in (
        click.option("--model", default=None, help="only this model's samples"),
        click.option("--trigger", type=click.Choice(["drift", "low_confidence", "shadow_disagreement", "random"]),
                     default=None, help="only samples captured by this trigger"),
        click.option("--since", default=None, help="received within this long (30m, 12h, 1d) or since an ISO time"),
        click.option("--device", default=None, help="only this device's samples"),
    ):
        f = option(f)
    return f


@click.group()
def captures() -> None:
    """Samples devices captured (drift, low confidence, shadow disagreement, random): the data to retrain on."""


@captures.command("list")
@_filters
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@json_option
def captures_list(model: str | None, trigger: str | None, since: str | None, device: str | None, limit: int,
                  as_json: bool) -> None:
    """Newest first."""
    page = call("get", "/v1/captures", model=model, trigger=trigger, since=since, device=device, limit=limit)
    table(page["captures"], CAPTURE_COLUMNS, "captured samples (newest first)", as_json)


def _all(fleet: FleetClient, limit: int | None, **filters: str | None) -> Iterator[dict[str, Any]]:
    cursor, seen = None, 0
    while True:
        page = fleet.get("/v1/captures", limit=PAGE, cursor=cursor, **filters)
        for row in page["captures"]:
            if limit is not None and seen >= limit:
                return
            seen += 1
            yield row
        cursor = page["next_cursor"]
        if cursor is None:
            return


@captures.command("export")
@_filters
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="the dataset directory (created)")
@click.option("--limit", type=click.IntRange(1), default=None, help="at most this many samples (newest)")
def captures_export(model: str | None, trigger: str | None, since: str | None, device: str | None,
                    out_dir: Path, limit: int | None) -> None:
    """Write the samples' inputs as OUTPUT/NNNNNN.npz (keyed by input name) plus labels.csv (fill in its
    'label' column) and captures.json: pass OUTPUT to 'edgeml build --calibration' (or --eval with
    --labels OUTPUT/labels.csv) as it is."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    with client() as fleet, tempfile.TemporaryDirectory() as tmp:
        for capture in _all(fleet, limit, model=model, trigger=trigger, since=since, device=device):
            rows.append(capture)
            if len({r["model"] for r in rows}) > 1:
                raise click.ClickException("the samples belong to several models "
                                           f"({', '.join(sorted({r['model'] for r in rows}))}): pick one with --model")
            fleet.download(f"/v1/captures/{capture['device']}/{capture['capture_id']}/file", Path(tmp) / "s.npz")
            _write_sample(Path(tmp) / "s.npz", out_dir, len(rows) - 1, capture)
    kept = [r for r in rows if r.get("_file")]
    _write_labels(out_dir, kept)
    (out_dir / "captures.json").write_text(json.dumps(kept, indent=1, sort_keys=True, default=str))
    skipped = len(rows) - len(kept)
    click.echo(f"exported {len(kept)} sample(s) to {out_dir}" +
               (f" ({skipped} captured without inputs were skipped)" if skipped else ""))


def _write_sample(source: Path, out_dir: Path, index: int, capture: dict[str, Any]) -> None:
    with np.load(source, allow_pickle=False) as npz:
        inputs = {name[3:]: npz[name] for name in npz.files if name.startswith("in/")}
        outputs = [npz[name] for name in npz.files if name.startswith("out/")]
    if not inputs:
        return
    name = f"{index:06d}.npz"
    np.savez(out_dir / name, **inputs)
    capture["_file"] = name
    first = outputs[0] if outputs else None
    if first is not None and first.dtype.kind == "f" and first.ndim >= 1 and first.shape[-1] > 1:
        capture["_predicted"] = int(first.reshape(-1, first.shape[-1])[0].argmax())


def _write_labels(out_dir: Path, rows: list[dict[str, Any]]) -> None:
    with open(out_dir / "labels.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "device", "capture_id", "model", "version", "trigger", "predicted", "label"])
        for r in rows:
            writer.writerow([r["_file"], r["device"], r["capture_id"], r["model"], r["version"], r["trigger"],
                             r.get("_predicted", ""), ""])


@captures.command("delete")
@click.option("--model", default=None)
@click.option("--device", default=None)
@click.option("--before", default=None, help="received before this ISO time, or longer ago than 30m, 12h, 7d")
def captures_delete(model: str | None, device: str | None, before: str | None) -> None:
    """Delete captured samples (per model, per device, by age; at least one of them). Audited."""
    if model is None and device is None and before is None:
        raise click.UsageError("name what to delete: --model, --device and/or --before")
    with client() as fleet:
        result = fleet.request("DELETE", "/v1/captures",
                               params={k: v for k, v in (("model", model), ("device", device), ("before", before))
                                       if v is not None})
    click.echo(f"deleted {result['deleted']} captured sample(s)")


@captures.command("retention")
@click.option("--max-age-days", type=click.FloatRange(min=0, min_open=True), default=None)
@click.option("--max-per-device-model", type=click.IntRange(1), default=None,
              help="the oldest samples of a (device, model) beyond this many are deleted")
@json_option
def captures_retention(max_age_days: float | None, max_per_device_model: int | None, as_json: bool) -> None:
    """Show, or with options change (admin, audited), how long and how many samples the fleet keeps."""
    current = call("get", "/v1/captures-retention")
    if max_age_days is not None or max_per_device_model is not None:
        wanted = {"max_age_days": max_age_days if max_age_days is not None else current["max_age_days"],
                  "max_per_device_model": max_per_device_model if max_per_device_model is not None
                  else current["max_per_device_model"]}
        with client() as fleet:
            current = fleet.request("PUT", "/v1/captures-retention", json=wanted)
    if as_json:
        echo_json(current)
    else:
        show(current, False)
