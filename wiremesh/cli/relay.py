"""`wiremesh relay`: run a standalone relay (see wiremesh/relay/standalone.py)."""

from __future__ import annotations

import ssl
from pathlib import Path

import typer

from wiremesh.cli.common import (
    CaFileOpt,
    InsecureOpt,
    fail,
    print_text,
    server_trust,
    setup_logging,
    split_listen,
)
from wiremesh.cli.server import RELAY_WS_OPTIONS, relay_secret, tls_files


def relay(
    listen: str = typer.Option("0.0.0.0:8443", "--listen", help="HOST:PORT to serve on"),
    server: str = typer.Option(..., "--server", envvar="WIREMESH_SERVER",
                               help="URL of the wiremesh server that vouches for peers"),
    secret_file: Path = typer.Option(
        ..., "--secret-file", help="A copy of the server's --relay-secret-file"),
    tls_cert: Path | None = typer.Option(
        None, "--tls-cert", dir_okay=False,
        help="PEM certificate chain to serve wss:// with (needs --tls-key)"),
    tls_key: Path | None = typer.Option(None, "--tls-key", dir_okay=False,
                                        help="PEM private key of --tls-cert"),
    ca_file: Path | None = CaFileOpt,
    insecure: bool = InsecureOpt,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging"),
) -> None:
    """Forward WireGuard packets between enrolled peers over WebSocket (path /api/v1/relay).

    Advertise it to agents with `wiremesh server --relay wss://HOST:PORT`.
    """
    from wiremesh.relay.standalone import create_relay_app

    setup_logging(verbose)
    host, port = split_listen(listen, "--listen")
    trust = server_trust(server, ca_file, insecure)
    tls = tls_files(tls_cert, tls_key)
    secret = relay_secret(secret_file, create=False)
    secret_accepted(server, secret, trust.verify(), secret_file)

    import uvicorn

    uvicorn.run(create_relay_app(server, secret, trust.verify()), host=host, port=port,
                log_level="debug" if verbose else "warning", timeout_graceful_shutdown=2,
                ssl_certfile=tls[0] if tls else None, ssl_keyfile=tls[1] if tls else None,
                **RELAY_WS_OPTIONS)


def secret_accepted(server: str, secret: str, verify: ssl.SSLContext | bool,
                    secret_file: Path) -> None:
    """Ask the server once now, so a wrong secret is one line at start (exit 2) rather than
    every peer refused later. A server that cannot be asked now may answer later: warn."""
    import asyncio

    from wiremesh.relay.standalone import CredentialRefused, IntrospectionFailed, Introspector

    async def ask() -> None:
        introspector = Introspector(server, secret, verify)
        try:
            await introspector.check_credential()
        finally:
            await introspector.close()

    try:
        asyncio.run(ask())
    except CredentialRefused as e:
        fail(f"--secret-file {secret_file}: {e}")
    except IntrospectionFailed as e:
        print_text(("warning:", "bold yellow"), " ", f"{e}: starting anyway; peers get 503 "
                   "until the server answers", err=True)
