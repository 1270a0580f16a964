"""The fleet dashboard: a static page whose script reads the same token-guarded ``/v1`` API the CLI uses.

The page itself holds no data, so it is served without a token; the operator pastes an API token into
its login form, the script keeps it in ``sessionStorage`` (gone when the tab closes) and sends it as
``Authorization: Bearer`` on every data request. That keeps one auth path for the whole server: no
cookie sessions, no CSRF surface, and the auth-table test still covers every data route. Charts are
inline SVG drawn by the bundled script — nothing is loaded from a CDN, so it works air-gapped.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

STATIC_DIR = Path(__file__).parent / "static"
MOUNT_PATH = "/dashboard"


def mount(app: FastAPI) -> None:
    """Serve the dashboard's files under ``/dashboard/``."""
    from fastapi.staticfiles import StaticFiles

    app.mount(MOUNT_PATH, StaticFiles(directory=STATIC_DIR, html=True), name="dashboard")
