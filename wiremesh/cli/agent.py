"""`wiremesh up` (enrol and run) and `wiremesh agent` (run from saved state)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import time
from dataclasses import asdict
from pathlib import Path
from typing import NoReturn

import httpx
import typer
from pydantic import ValidationError

from wiremesh.agent import pidfile, prefs
from wiremesh.agent import state as statefile
from wiremesh.agent.client import ServerRefused
from wiremesh.agent.connection import Trust, unreachable
from wiremesh.cli.common import (
    CaFileOpt,
    InsecureOpt,
    console,
    fail,
    print_text,
    server_trust,
    setup_logging,
    split_listen,
)
from wiremesh.core.wire import MTU_MAX, MTU_MIN, check_peer_name, describe, fingerprint
from wiremesh.wg.keys import BadKey, load_or_create_private_key

StateDirOpt = typer.Option(statefile.DEFAULT_STATE_DIR, "--state-dir",
                           help="Where the key pair and saved state live")
MetricsOpt = typer.Option(None, "--metrics-listen",
                          help="HOST:PORT to serve Prometheus /metrics on (off by default)")
BackendOpt = typer.Option("auto", "--wg-backend",
                          help="auto (kernel if present, else wireguard-go), kernel or userspace")


ExitNodeOpt = typer.Option(
    None, "--exit-node",
    help="Send all traffic through this exit node (a peer name), 'auto' (the best one policy "
         "allows, failing over between them) or 'none'; kept for later runs. While no chosen "
         "exit node is available, internet traffic is held, never sent outside the tunnel")
AllowLanOpt = typer.Option(
    None, "--exit-node-allow-lan/--no-exit-node-allow-lan",
    help="With an exit node, keep local networks reachable outside the tunnel")


def _check_backend(backend: str) -> str:
    if backend not in ("auto", "kernel", "userspace"):
        fail(f"--wg-backend {backend!r}: choose auto, kernel or userspace")
    return backend


def _listen(value: str | None) -> tuple[str, int] | None:
    return None if value is None else split_listen(value, "--metrics-listen")


def up(
    servers: list[str] = typer.Option(
        ..., "--server", envvar="WIREMESH_SERVER",
        help="Server URL; repeatable: replicas of one server (same database), tried in turn "
             "when one fails"),
    setup_key: str | None = typer.Option(None, "--setup-key", envvar="WIREMESH_SETUP_KEY",
                                         help="Setup key from `wiremesh keys create`"),
    login: bool = typer.Option(
        False, "--login", help="Enrol as a user instead of with a setup key: log in at the "
        "server's OpenID provider with the URL and code shown. On an enrolled machine: log "
        "in again (a new key pair; the same peer)"),
    name: str | None = typer.Option(
        None, "--name", help="Peer name, also its DNS name under the mesh domain: letters, "
        "digits, '-', '_' and dots between labels (default: the hostname)"),
    interface: str = typer.Option("wm0", "--interface", help="WireGuard interface name"),
    listen_port: int = typer.Option(51820, "--listen-port", min=1, max=65535,
                                    help="WireGuard UDP port"),
    endpoint: list[str] = typer.Option([], "--endpoint",
                                       help="Address peers can reach us at (IP or IP:PORT); "
                                       "repeatable; the server adds the address it sees"),
    state_dir: Path = StateDirOpt,
    backend: str = BackendOpt,
    metrics_listen: str | None = MetricsOpt,
    ca_file: Path | None = CaFileOpt,
    insecure: bool = InsecureOpt,
    server_fingerprint: str | None = typer.Option(
        None, "--server-fingerprint",
        help="Refuse to enrol unless the server's signing key has this fingerprint (shown by "
             "`wiremesh keys create` and at server start); without it the key is pinned as "
             "the server shows it"),
    exit_node: str | None = ExitNodeOpt,
    exit_node_allow_lan: bool | None = AllowLanOpt,
    dns: bool | None = typer.Option(
        None, "--dns/--no-dns",
        help="Resolve <peer>.<mesh domain> through the system resolver (default on); kept"),
    resolv_conf: Path | None = typer.Option(
        None, "--resolv-conf", dir_okay=False,
        help="Manage this resolv.conf instead of systemd-resolved or /etc/resolv.conf; kept"),
    mtu: int | None = typer.Option(
        None, "--mtu", min=MTU_MIN, max=MTU_MAX,
        help="This peer's WireGuard interface MTU, over the mesh-wide one the server sends "
             "(kept in the saved state); e.g. 1200 on a network that carries only 1280-byte "
             "packets"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Enrol this machine (if not enrolled yet) and run the agent.

    Enrol with a setup key, or as a user with --login. The server is verified with the
    system's CAs or --ca-file; that choice is saved with the enrolment, so `wiremesh agent`
    verifies it the same way.
    """
    from wiremesh.agent.runner import enroll_peer

    server, replicas = servers[0], servers[1:]
    setup_logging(verbose)
    _check_backend(backend)
    listen = _listen(metrics_listen)  # before enrolment spends a one-time setup key
    if len(interface) > 15:
        fail(f"--interface {interface!r}: at most 15 characters")
    if (setup_key is None) == (not login):
        fail("give either --setup-key KEY or --login")
    if name is not None:
        try:
            check_peer_name(name)
        except ValueError as e:
            fail(f"--name: {e}")
    saved = _saved_config(state_dir)
    if saved is not None and saved.server != server:
        fail(f"{state_dir} holds an enrolment with {saved.server}; use another --state-dir")
    _save_prefs(state_dir, exit_node=exit_node, exit_allow_lan=exit_node_allow_lan, dns=dns,
                resolv_conf=None if resolv_conf is None else str(resolv_conf.absolute()))
    if saved is None or login:
        trust = server_trust(server, ca_file, insecure)
        for url in replicas:
            server_trust(url, ca_file, insecure)
        name = name or (saved.name if saved is not None else None)
        try:
            if login:
                setup_key, server_fingerprint = _device_login(
                    server, trust, name, server_fingerprint)
            if saved is not None:
                # Logged in again: the user's peer gets a new key pair.
                statefile.private_key_path(state_dir).unlink(missing_ok=True)
            assert setup_key is not None
            st = asyncio.run(enroll_peer(state_dir, server, setup_key, name, interface,
                                         listen_port, endpoint, trust, server_fingerprint,
                                         replicas))
        except (ServerRefused, BadKey) as e:
            fail(str(e))
        except (OSError, httpx.HTTPError) as e:
            fail(unreachable(server, e))
        console.print(f"enrolled as {st.config.name}; pinned server key "
                      f"{fingerprint(st.config.server_key or '')}", highlight=False)
    if mtu is not None:
        _save_mtu(state_dir, mtu)
    _run(state_dir, backend, listen)


def _save_mtu(state_dir: Path, mtu: int) -> None:
    st = statefile.load(state_dir)
    if st.config.mtu != mtu:
        st.config = dataclasses.replace(st.config, mtu=mtu)
        statefile.save(state_dir, st)


def _device_login(server: str, trust: Trust, name: str | None,
                  expected_fingerprint: str | None) -> tuple[str, str | None]:
    """Log in at the server's provider (device grant); the setup key it gives this machine
    and the server fingerprint to hold the enrolment to."""
    from wiremesh.agent.client import device_login

    def show(start: dict[str, object]) -> None:
        where = start.get("verification_uri_complete") or start.get("verification_uri")
        # print_text never breaks a URL over lines (people and the lab copy it).
        print_text(f"To connect this machine, open {where}\nand enter the code ",
                   (str(start.get("user_code")), "bold"), " (waiting...)")

    hostname = name or socket.gethostname().split(".")[0]
    answer = asyncio.run(device_login(server, trust, hostname, show))
    console.print(f"logged in as {answer.get('user')}", highlight=False)
    return str(answer["setup_key"]), expected_fingerprint or answer.get("server_fingerprint")


def agent(state_dir: Path = StateDirOpt, backend: str = BackendOpt,
          metrics_listen: str | None = MetricsOpt,
          verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Run the agent from saved state (works while the server is down)."""
    setup_logging(verbose)
    _check_backend(backend)
    listen = _listen(metrics_listen)
    try:
        statefile.load(state_dir)
        prefs.load(state_dir)  # read again as the agent starts, where an error was a traceback
        load_or_create_private_key(statefile.private_key_path(state_dir))
    except (statefile.StateError, prefs.PrefsError, BadKey) as e:
        fail(str(e))
    _run(state_dir, backend, listen)


def _saved_config(state_dir: Path) -> statefile.AgentConfig | None:
    """The saved enrolment, or None when there is none or it cannot be read (`up` enrols
    afresh, `down` still stops the agent); exit 2 when the state dir itself is unusable."""
    try:
        return statefile.load(state_dir).config
    except statefile.StateDirError as e:
        fail(str(e))
    except statefile.StateError:
        return None


def _running_pid(state_dir: Path) -> int | None:
    try:
        return pidfile.running_pid(state_dir)
    except pidfile.PidFileError as e:
        fail(str(e))


def set_prefs(
    state_dir: Path = StateDirOpt,
    exit_node: str | None = ExitNodeOpt,
    exit_node_allow_lan: bool | None = AllowLanOpt,
) -> None:
    """Change this agent's choices (the exit node) and tell the running agent at once."""
    if exit_node is None and exit_node_allow_lan is None:
        fail("nothing to set: give --exit-node or --exit-node-allow-lan")
    new = _save_prefs(state_dir, enrolled=True, exit_node=exit_node,
                      exit_allow_lan=exit_node_allow_lan)
    what = f"exit node {new.exit_node or 'none'}" + (
        " (local networks outside the tunnel)" if new.exit_node and new.exit_allow_lan else "")
    pid = _running_pid(state_dir)
    if pid is None:
        console.print(f"saved {what}; no agent runs from {state_dir}", highlight=False)
        return
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        console.print(f"saved {what}; the agent just stopped", highlight=False)
        return
    except PermissionError:
        fail(f"saved {what}, but not allowed to signal the agent (pid {pid}); run as root")
    console.print(f"{what}: told the running agent (pid {pid})", highlight=False)


def _save_prefs(state_dir: Path, enrolled: bool = False, **changes: object) -> prefs.Prefs:
    """Saved choices with the given ones (None: unchanged) replaced; exit 2 naming a bad one.
    With `enrolled`, also exit 2 (saving nothing) unless `state_dir` holds an enrolment: a
    mistyped --state-dir was made, with a prefs.json no agent reads. Checked after the
    choices, so a bad one is named even there."""
    given = {k: v for k, v in changes.items() if v is not None}
    if given.get("exit_node") == "none":
        given["exit_node"] = None
    try:
        statefile.check_dir(state_dir)  # first: for a file given as dir, prefs.json was named
        current = prefs.load(state_dir)
        new = prefs.Prefs(**{**asdict(current), **given})
    except (statefile.StateError, prefs.PrefsError) as e:
        fail(str(e))
    except ValidationError as e:
        fail(describe(e))
    try:
        if enrolled:
            statefile.load(state_dir)
        if new != current:
            prefs.save(state_dir, new)
    except (statefile.StateError, prefs.PrefsError) as e:
        fail(str(e))
    return new


def _run(state_dir: Path, backend: str, listen: tuple[str, int] | None) -> NoReturn:
    from wiremesh.agent.runner import run_forever

    try:
        with pidfile.hold(state_dir):
            code = run_forever(state_dir, backend, listen)
    except pidfile.PidFileError as e:
        fail(str(e))
    raise typer.Exit(code)


def down(
    state_dir: Path = StateDirOpt,
    forget: bool = typer.Option(
        False, "--forget",
        help="Also delete the saved state and the private key: this machine leaves the mesh "
        "for good and needs a setup key to come back"),
) -> None:
    """Stop the agent running from --state-dir; it removes its WireGuard interface and firewall.

    The explicit, local way to take an agent down. A 401 from the server never does it, so
    a server restored from an old backup or started on an empty database cannot take the
    mesh down.
    """
    cfg = _saved_config(state_dir)
    pid = _running_pid(state_dir)
    if pid is None:
        console.print(f"no agent runs from {state_dir}")
    else:
        _stop(pid, state_dir)
        what = f"interface {cfg.interface}" if cfg else "its interface"
        console.print(f"stopped the agent (pid {pid}); it removed {what} and its firewall")
    if forget:
        _forget(state_dir, cfg)


def _stop(pid: int, state_dir: Path, timeout: float = 30.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    except PermissionError:
        fail(f"not allowed to stop the agent (pid {pid}); run as its user (root)")
    deadline = time.monotonic() + timeout
    while _running_pid(state_dir) is not None:  # the agent unlocks it as it exits
        if time.monotonic() > deadline:
            fail(f"the agent (pid {pid}) did not stop within {timeout:.0f} s")
        time.sleep(0.1)


def _forget(state_dir: Path, cfg: statefile.AgentConfig | None) -> None:
    files = [p for p in statefile.files(state_dir) if p.exists()]
    if not files:
        console.print(f"nothing saved in {state_dir}")
        return
    peer = f"peer {cfg.name} " if cfg else "this peer "
    console.print(f"deleting {', '.join(str(p) for p in files)}: {peer}must enrol again with a "
                  "setup key; the server lists it until `wiremesh peers delete`", highlight=False)
    for p in files:
        p.unlink()
