"""`wiremesh server`: run the control server."""

from __future__ import annotations

import os
from pathlib import Path

import typer
import uvicorn

from wiremesh.cli.common import console, fail, setup_logging
from wiremesh.store.db import BadDatabaseURL, async_url


def _split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        fail(f"--listen {listen!r}: expected HOST:PORT, e.g. 0.0.0.0:8080")
    return host.strip("[]") or "0.0.0.0", int(port)


def server(
    db: str = typer.Option("sqlite:///var/lib/wiremesh/server.db", "--db", envvar="WIREMESH_DB",
                           help="sqlite:///PATH (embedded, default) or postgresql://USER@HOST/DB"),
    listen: str = typer.Option("0.0.0.0:8080", "--listen", help="HOST:PORT to serve the API on"),
    admin_token_file: Path | None = typer.Option(
        None, "--admin-token-file",
        help="Also write the initial admin token here (mode 0600) on first start"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging"),
) -> None:
    """Run the control server (HTTP API, netmap streams, /metrics).

    On first start with an empty store it prints an admin token once; keep it.
    """
    from wiremesh.server.app import create_app

    setup_logging(verbose)
    host, port = _split_listen(listen)
    try:
        async_url(db)
    except BadDatabaseURL as e:
        fail(str(e))

    def show_token(token: str) -> None:
        console.print(f"[bold]initial admin token (shown once):[/] {token}", highlight=False)
        if admin_token_file is not None:
            admin_token_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(admin_token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(token + "\n")

    app = create_app(db, on_admin_token=show_token)
    uvicorn.run(app, host=host, port=port, log_level="debug" if verbose else "warning",
                timeout_graceful_shutdown=2)
