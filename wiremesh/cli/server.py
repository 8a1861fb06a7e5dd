"""`wiremesh server`: run the control server."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import typer
from pydantic import ValidationError

from wiremesh.agent.connection import reason
from wiremesh.cli.common import fail, print_text, read_text, setup_logging, split_listen
from wiremesh.core.wire import (
    DEFAULT_MESH_DOMAIN,
    DEFAULT_MTU,
    DNS_CONFIG,
    MTU_MAX,
    MTU_MIN,
    DnsConfig,
    describe,
)
from wiremesh.wg.keys import make_private_dirs, write_private_key


def server(
    db: str = typer.Option(
        "sqlite:////var/lib/wiremesh/server.db", "--db", envvar="WIREMESH_DB",
        help="sqlite:////ABSOLUTE/PATH (embedded, default; sqlite:///PATH is relative to the "
             "working directory) or postgresql://USER@HOST/DB"),
    listen: str = typer.Option("0.0.0.0:8080", "--listen", help="HOST:PORT to serve the API on"),
    admin_token_file: Path | None = typer.Option(
        None, "--admin-token-file",
        help="Also write the initial admin token here (mode 0600) on first start"),
    tls_cert: Path | None = typer.Option(
        None, "--tls-cert", dir_okay=False,
        help="PEM certificate chain to serve HTTPS with (needs --tls-key)"),
    tls_key: Path | None = typer.Option(None, "--tls-key", dir_okay=False,
                                        help="PEM private key of --tls-cert"),
    no_relay: bool = typer.Option(False, "--no-relay",
                                  help="Do not serve the embedded relay (/api/v1/relay)"),
    relay: list[str] = typer.Option(
        [], "--relay", help="URL of a standalone relay (`wiremesh relay`) to advertise to "
        "agents, e.g. wss://relay1.example:8443; repeatable; agents try them in this order, "
        "then the embedded relay"),
    relay_secret_file: Path | None = typer.Option(
        None, "--relay-secret-file",
        help="Credential standalone relays check peer tokens with; created (mode 0600) if "
        "missing; give the same file to each `wiremesh relay --secret-file`"),
    stun_listen: str = typer.Option(
        "0.0.0.0:3478", "--stun-listen",
        help="HOST:PORT (UDP) of the STUN responder agents learn their NAT mapping from; "
             "'off' to run none"),
    dns_domain: str = typer.Option(
        DEFAULT_MESH_DOMAIN, "--dns-domain",
        help="Domain peers' names resolve under (`<peer>.<domain>`, answered by each agent)"),
    dns_zone: list[str] = typer.Option(
        [], "--dns-zone",
        help="Split DNS: ZONE=IP[,IP...] sends names in ZONE to those nameservers (e.g. "
             "corp.example=198.18.0.53, behind a route); repeatable"),
    mtu: int = typer.Option(
        DEFAULT_MTU, "--mtu", min=MTU_MIN, max=MTU_MAX,
        help="Mesh-wide WireGuard interface MTU sent to every agent; e.g. 1200 when some "
             "underlay path carries only 1280-byte packets. An "
             "agent's `wiremesh up --mtu` overrides it for that peer"),
    oidc_issuer: str | None = typer.Option(
        None, "--oidc-issuer", envvar="WIREMESH_OIDC_ISSUER", rich_help_panel="Login (OIDC)",
        help="Issuer URL of the OpenID provider users log in with (enables /auth/login, "
             "the console login and `wiremesh up --login`)"),
    oidc_client_id: str | None = typer.Option(
        None, "--oidc-client-id", envvar="WIREMESH_OIDC_CLIENT_ID",
        rich_help_panel="Login (OIDC)", help="This server's client id at the provider"),
    oidc_client_secret_file: Path | None = typer.Option(
        None, "--oidc-client-secret-file", dir_okay=False, rich_help_panel="Login (OIDC)",
        help="File holding the client secret"),
    oidc_scopes: str = typer.Option(
        "openid email profile offline_access", "--oidc-scopes", rich_help_panel="Login (OIDC)",
        help="Scopes to ask for (add 'groups' where the provider wants it for the groups "
             "claim; offline_access gives the refresh tokens users are re-checked with)"),
    oidc_groups_claim: str = typer.Option(
        "groups", "--oidc-groups-claim", rich_help_panel="Login (OIDC)",
        help="ID-token claim listing the user's groups (policy group idp.NAME)"),
    oidc_admin_group: list[str] = typer.Option(
        [], "--oidc-admin-group", rich_help_panel="Login (OIDC)",
        help="Provider group whose members are admins (repeatable)"),
    oidc_auditor_group: list[str] = typer.Option(
        [], "--oidc-auditor-group", rich_help_panel="Login (OIDC)",
        help="Provider group whose members are auditors: read only (repeatable)"),
    oidc_ca_file: Path | None = typer.Option(
        None, "--oidc-ca-file", dir_okay=False, rich_help_panel="Login (OIDC)",
        help="PEM CA to verify the provider with (default: the system's CAs)"),
    public_url: str | None = typer.Option(
        None, "--public-url", rich_help_panel="Login (OIDC)",
        help="This server's URL as browsers reach it (the redirect URI is "
             "PUBLIC_URL/auth/callback; default: the URL of each request)"),
    session_ttl: int = typer.Option(
        12 * 3600, "--session-ttl", min=60, rich_help_panel="Login (OIDC)",
        help="Seconds a browser login lasts"),
    peer_login_ttl: int = typer.Option(
        0, "--peer-login-ttl", min=0, rich_help_panel="Login (OIDC)",
        help="Seconds a user's peer stays in the mesh after `wiremesh up --login` before "
             "its user must log in again (0: no limit)"),
    oidc_check_interval: int = typer.Option(
        300, "--oidc-check-interval", min=1, rich_help_panel="Login (OIDC)",
        help="Seconds between re-checks of each user at the provider (refresh token): a "
             "user removed there loses access within this"),
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
    tls = tls_files(tls_cert, tls_key)
    stun = None if stun_listen == "off" else split_listen(stun_listen, "--stun-listen")
    try:
        async_url(db)
    except BadDatabaseURL as e:
        fail(str(e))

    oidc = None
    if oidc_issuer is not None:
        from datetime import timedelta

        from wiremesh.server.oidc import OidcConfig

        if not oidc_client_id or oidc_client_secret_file is None:
            fail("--oidc-issuer needs --oidc-client-id and --oidc-client-secret-file")
        if not oidc_issuer.startswith("https://"):
            fail(f"--oidc-issuer {oidc_issuer!r}: expected an https:// URL")
        client_secret = read_text(oidc_client_secret_file, "--oidc-client-secret-file").strip()
        if not client_secret:
            fail(f"--oidc-client-secret-file {oidc_client_secret_file}: the file is empty")
        oidc = OidcConfig(
            issuer=oidc_issuer, client_id=oidc_client_id, client_secret=client_secret,
            scopes=oidc_scopes, groups_claim=oidc_groups_claim,
            admin_groups=tuple(oidc_admin_group), auditor_groups=tuple(oidc_auditor_group),
            ca_file=str(oidc_ca_file) if oidc_ca_file else None,
            session_ttl=timedelta(seconds=session_ttl),
            peer_login_ttl=timedelta(seconds=peer_login_ttl) if peer_login_ttl else None,
            check_interval=timedelta(seconds=oidc_check_interval),
            public_url=public_url)

    advertised = [relay_url(u) for u in relay]
    dns = dns_config(dns_domain, dns_zone)
    # Everything that can fail is checked before the app's start-up touches the store: the
    # first start bootstraps it and prints the initial admin token once, so a failure after
    # that (a token file or port refused) lost the token for good.
    if admin_token_file is not None:
        token_file_writable(admin_token_file)
    secret = None if relay_secret_file is None else relay_secret(relay_secret_file)
    database_reachable(db)
    if stun is not None:
        udp_port_free(*stun)
    sockets = listening_sockets(host, port)
    show_database(db)

    def show_token(token: str) -> None:
        print_text(("initial admin token (shown once):", "bold"), f" {token}")
        if admin_token_file is not None:
            try:
                write_private_key(admin_token_file, token)
            except OSError as e:  # checked at start: only a change since then gets here
                print_text(("error:", "bold red"), f" --admin-token-file {admin_token_file}: "
                           f"cannot write it: {reason(e)}; the token is the one above",
                           err=True)

    def show_fingerprint(fp: str) -> None:
        print_text(("server key fingerprint:", "bold"),
                   f" {fp}  (agents pin it: wiremesh up --server-fingerprint)")

    app = create_app(db, on_admin_token=show_token, on_fingerprint=show_fingerprint,
                     relay=not no_relay, relays=advertised,
                     relay_secret=secret, stun_listen=stun, dns=dns, mtu=mtu, oidc=oidc)
    serve(app, sockets, tls, verbose)


def serve(app: Any, sockets: list[socket.socket], tls: tuple[str, str] | None,
          verbose: bool) -> None:
    """Run uvicorn on `sockets`, bound before start-up (see listening_sockets); exit code 3,
    as uvicorn.run's, when the app's start-up fails (uvicorn logged why)."""
    import uvicorn

    config = uvicorn.Config(app, log_level="debug" if verbose else "warning",
                            timeout_graceful_shutdown=2,
                            ssl_certfile=tls[0] if tls else None,
                            ssl_keyfile=tls[1] if tls else None, **RELAY_WS_OPTIONS)
    server = uvicorn.Server(config)
    with contextlib.suppress(KeyboardInterrupt):  # as uvicorn.run: Ctrl-C is no traceback
        server.run(sockets=sockets)
    if not server.started:
        raise typer.Exit(3)


def show_database(db: str) -> None:
    """Name the SQLite file in use, absolute: a relative --db path is relative to the working
    directory (a systemd unit's, say), where a wrong one silently started an empty mesh with
    a new signing key and a new admin token, refusing every agent's token."""
    from wiremesh.store.db import sqlite_file

    path = sqlite_file(db)
    if path is not None:
        print_text(("database:", "bold"), f" {path}")


def dns_config(domain: str, zones: list[str]) -> DnsConfig:
    """--dns-domain and --dns-zone values as the netmap carries them (one line if bad)."""
    items = []
    for z in zones:
        name, sep, servers = z.partition("=")
        if not sep or not servers:
            fail(f"--dns-zone {z!r}: expected ZONE=IP[,IP...]")
        items.append({"zone": name, "nameservers": servers.split(",")})
    try:
        return DNS_CONFIG.validate_python({"domain": domain, "zones": items})
    except ValidationError as e:
        fail(f"--dns-domain/--dns-zone: {describe(e)}")


def tls_files(cert: Path | None, key: Path | None) -> tuple[str, str] | None:
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


def database_reachable(db: str) -> None:
    """Connect once now, so a database that is down or refuses us is one line naming it
    (from the app's start-up it is a traceback through uvicorn's lifespan)."""
    import asyncio

    from sqlalchemy import text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import DBAPIError, SQLAlchemyError

    from wiremesh.store.db import make_engine

    async def connect() -> None:
        engine = make_engine(db)
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        finally:
            await engine.dispose()

    try:
        asyncio.run(connect())
    except (OSError, SQLAlchemyError) as e:
        why = str(e.orig) if isinstance(e, DBAPIError) else reason(e) or str(e)
        shown = make_url(db).render_as_string(hide_password=True)
        fail(f"--db {shown}: cannot connect: {' '.join(why.split())}")


def udp_port_free(host: str, port: int) -> None:
    """Bind the STUN responder's address now, so one in use is a line, not a traceback."""
    try:
        for sock in bound_sockets(host, port, socket.SOCK_DGRAM):
            sock.close()
    except OSError as e:
        fail(f"--stun-listen {host}:{port}: {reason(e) or e}")


def listening_sockets(host: str, port: int) -> list[socket.socket]:
    """The API's listening sockets, bound now and handed to uvicorn: an address in use was
    uvicorn's error after start-up had bootstrapped the store and printed the initial admin
    token, which was then lost."""
    try:
        return bound_sockets(host, port, socket.SOCK_STREAM)
    except OSError as e:
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        fail(f"cannot listen on {where}: {reason(e)}")


def bound_sockets(host: str, port: int, kind: socket.SocketKind) -> list[socket.socket]:
    """Sockets bound to each address `host` resolves to, as asyncio binds them for uvicorn
    (TCP) and the STUN responder (UDP); raises OSError, with none left open."""
    stream = kind == socket.SOCK_STREAM
    sockets: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(host, port, type=kind, flags=socket.AI_PASSIVE)
        for family, _, proto, _, addr in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            if stream:
                # As asyncio's create_server did for uvicorn: a port our last run left in
                # TIME_WAIT is free, and "::" stays IPv6 only.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            if stream:
                # On Linux two SO_REUSEADDR sockets may bind one port: only one can listen.
                sock.listen()
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


# Relay frames are at most 32 + 65535 bytes; encrypted packets do not compress. uvicorn's
# own protocol left an upgrade request with an oversized header unanswered, forever
# (wiremesh/relay/uvicorn_ws.py).
RELAY_WS_OPTIONS: dict[str, Any] = {"ws_max_size": 1 << 17, "ws_per_message_deflate": False,
                                    "ws": "wiremesh.relay.uvicorn_ws:WebSocketProtocol"}


def token_file_writable(path: Path) -> None:
    """Exit 2 now unless the initial admin token can be written to `path` (creating its
    directory): the app writes it only after bootstrapping the store, which makes the token
    once and never again."""
    if path.is_dir():
        fail(f"--admin-token-file {path}: is a directory")
    try:
        make_private_dirs(path.parent)
    except OSError as e:
        fail(f"--admin-token-file {path}: cannot create its directory: {reason(e)}")
    # The file is written beside it and renamed over it: only the directory must be writable.
    if not os.access(path.parent, os.W_OK | os.X_OK):
        fail(f"--admin-token-file {path}: cannot write in {path.parent}")


def relay_secret(path: Path, create: bool = True) -> str:
    """The relay credential in `path`; a new random one is written there if it is missing."""
    if path.exists():
        secret = read_text(path, "relay secret file").strip()
    elif create:
        secret = secrets.token_urlsafe(32)
        try:
            write_private_key(path, secret)
        except OSError as e:
            fail(f"--relay-secret-file {path}: cannot write it: {reason(e)}")
    else:
        fail(f"--secret-file {path}: no such file (the server's --relay-secret-file)")
    if len(secret) < 16:
        fail(f"relay secret file {path}: holds fewer than 16 characters")
    return secret


def relay_url(url: str) -> str:
    """A `--relay` value as agents get it: ws(s):// (http(s) accepted), the relay path added
    when none is given."""
    from wiremesh.relay.switch import RELAY_PATH

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError as e:  # and for an unclosed IPv6 bracket
        fail(f"--relay {url!r}: {e}; expected wss://HOST:PORT or wss://HOST:PORT/PATH")
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.hostname:
        fail(f"--relay {url!r}: expected wss://HOST:PORT or wss://HOST:PORT/PATH")
    path = parts.path if parts.path not in ("", "/") else RELAY_PATH
    return urlunsplit((scheme, parts.netloc, path, "", ""))
