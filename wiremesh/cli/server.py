"""`wiremesh server`: run the control server."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import typer

from wiremesh.agent.connection import reason
from wiremesh.cli.common import console, fail, setup_logging, split_listen


def server(
    db: str = typer.Option("sqlite:///var/lib/wiremesh/server.db", "--db", envvar="WIREMESH_DB",
                           help="sqlite:///PATH (embedded, default) or postgresql://USER@HOST/DB"),
    listen: str = typer.Option("0.0.0.0:8080", "--listen", help="HOST:PORT to serve the API on"),
    admin_token_file: Path | None = typer.Option(
        None, "--admin-token-file",
        help="Also write the initial admin token here (mode 0600) on first start"),
    tls_cert: Path | None = typer.Option(
        None, "--tls-cert", dir_okay=False,
        help="PEM certificate chain to serve HTTPS with (needs --tls-key)"),
    tls_key: Path | None = typer.Option(None, "--tls-key", dir_okay=False,
                                        help="PEM private key of --tls-cert"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging"),
) -> None:
    """Run the control server (HTTP API, netmap streams, /metrics).

    Serve it over HTTPS (--tls-cert/--tls-key) or behind a reverse proxy that terminates
    TLS: agents and the admin CLI refuse plain HTTP to anything but loopback.

    On first start with an empty store it prints an admin token once; keep it.
    """
    # Imported here: the store and web stack are heavy, and every other command (and
    # `--help`) should start fast.
    from wiremesh.server.app import create_app
    from wiremesh.store.db import BadDatabaseURL, async_url

    setup_logging(verbose)
    host, port = split_listen(listen, "--listen")
    tls = _tls_files(tls_cert, tls_key)
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
                timeout_graceful_shutdown=2,
                ssl_certfile=tls[0] if tls else None, ssl_keyfile=tls[1] if tls else None)


def _tls_files(cert: Path | None, key: Path | None) -> tuple[str, str] | None:
    """The certificate and key to serve HTTPS with, checked now so a bad pair is one line."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        fail("--tls-cert and --tls-key go together")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except OSError as e:
        fail(f"--tls-cert {cert} / --tls-key {key}: {reason(e)}")
    return str(cert), str(key)
