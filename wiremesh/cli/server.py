"""`wiremesh server`: run the control server."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from wiremesh.cli.common import console, fail, setup_logging, split_listen


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
    # Imported here: the store and web stack are heavy, and every other command (and
    # `--help`) should start fast.
    from wiremesh.server.app import create_app
    from wiremesh.store.db import BadDatabaseURL, async_url

    setup_logging(verbose)
    host, port = split_listen(listen, "--listen")
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

    import uvicorn

    app = create_app(db, on_admin_token=show_token)
    uvicorn.run(app, host=host, port=port, log_level="debug" if verbose else "warning",
                timeout_graceful_shutdown=2)
