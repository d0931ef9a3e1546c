"""The Prefect API a flow CLI talks to: the one ``PREFECT_API_URL`` names, or a temporary one when it is empty."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def prefect_api() -> Iterator[str | None]:
    """Run the block against ``$PREFECT_API_URL``; where it is set but empty (``make run`` with no server up, the
    tests), start Prefect's temporary server first and point every client at it, the events client included.

    Prefect 3.8 reads an empty URL as "start a temporary server" for its API client but as a URL for its events
    client, which then logs ``Service 'EventsWorker' failed`` and a traceback for every event of the run."""
    if os.environ.get("PREFECT_API_URL") != "":
        yield os.environ.get("PREFECT_API_URL")
        return
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    server = SubprocessASGIServer()
    server.start(timeout=get_current_settings().server.ephemeral.startup_timeout_seconds)
    print(f"prefect: a temporary server for this run at {server.address} (no PREFECT_API_URL)", file=sys.stderr)
    try:  # Prefect's settings context, the one way: Prefect read os.environ at import, so setting it now would not do
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)  # the run's last log lines reach the server before it stops
        server.stop()
