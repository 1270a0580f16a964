"""The pieces behind :class:`edgeml.fleet.Client` (``edgeml/fleet/client.py``), each with one job::

    config.py    where the server URL and token come from: arguments, EDGEML_FLEET_URL/_TOKEN, the CLI's file
    http.py      one HTTP exchange: status codes → edgeml.errors, retries with backoff on reads
    records.py   typed, read-only views of the server's JSON (each keeps the JSON as ``raw``)
    waiting.py   waiting for a rollout: polling with backoff, the verdict, the gate figures as text

Nothing here imports the server side (FastAPI, SQLAlchemy): a CI job installs httpx and edgeml, nothing more.
"""
