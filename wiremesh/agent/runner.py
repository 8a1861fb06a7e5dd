"""The agent's life: enrol once, then keep the data plane in step with the netmap stream.

The data plane is rebuilt from the saved netmap before the server is contacted, and keeps
enforcing it for as long as the server stays unreachable: no single point of failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import socket
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import start_http_server

from wiremesh.agent import metrics, prefs
from wiremesh.agent import state as statefile
from wiremesh.agent.client import (
    CredentialsRefused,
    PeerDeleted,
    ServerBusy,
    ServerClient,
    ServerRefused,
    enroll,
    server_key,
)
from wiremesh.agent.connection import (
    INSECURE_WARNING,
    Trust,
    TrustError,
    raise_if_cancelled,
    reason,
)
from wiremesh.agent.dataplane import DataPlane, first_endpoint, make_backend
from wiremesh.agent.discovery import Discovery
from wiremesh.agent.exitnode import ExitRouting
from wiremesh.agent.names import NameService
from wiremesh.agent.paths import PathManager
from wiremesh.agent.portside import PortSide
from wiremesh.agent.probe_responder import start_responder
from wiremesh.agent.relay_link import RelayLink, replica_relay_urls
from wiremesh.agent.routes import RouteManager
from wiremesh.agent.state import AgentConfig, AgentState
from wiremesh.agent.sysdns import system_dns
from wiremesh.core.netmap import DeltaMismatch, apply_delta, digest
from wiremesh.core.wire import (
    BadMessage,
    DeletedMessage,
    DeltaMessage,
    FullMessage,
    Netmap,
    StreamMessage,
    agent_mac_key,
    enroll_proof,
    fingerprint,
    open_line,
    parse_message,
    verify_stream_key,
)
from wiremesh.firewall.nft import NftError
from wiremesh.firewall.render import RenderError
from wiremesh.wg.backend import WgError
from wiremesh.wg.keys import load_or_create_private_key, public_key_of

log = logging.getLogger("wiremesh.agent")
PATH_REPORT_S = 2.0
# A refused token is an operator's problem, not a network blip: ask again slowly.
BACKOFF_MIN, BACKOFF_MAX = 0.5, 10.0  # reconnecting after the server or the network failed
REFUSED_BACKOFF_MIN = 5.0
REFUSED_BACKOFF_MAX = 120.0


class ResyncNeeded(Exception):
    pass


async def enroll_peer(
    state_dir: Path, server: str, setup_key: str, name: str | None, interface: str,
    listen_port: int, endpoints: list[str], trust: Trust, server_fingerprint: str | None = None,
    replicas: list[str] | None = None,
) -> AgentState:
    """Generate (or reuse) the key pair locally, enrol with the public key, save the state.

    The server's signing key is checked against `server_fingerprint` (when given) before the
    setup key is sent, so an impostor learns nothing; the agent pins the key either way."""
    identity = await server_key(server, trust)
    pinned = identity.get("public_key")
    try:
        if not isinstance(pinned, str):
            raise ValueError
        got_fp = fingerprint(pinned)
    except ValueError:
        raise ServerRefused(f"the server's signing key {pinned!r} is malformed") from None
    if server_fingerprint is not None and got_fp != server_fingerprint:
        raise ServerRefused(f"server key fingerprint is {got_fp}, expected "
                            f"{server_fingerprint}: refusing to enrol")
    private = load_or_create_private_key(statefile.private_key_path(state_dir))
    body = {
        "setup_key": setup_key,
        "public_key": public_key_of(private),
        "hostname": name or socket.gethostname().split(".")[0],
        "listen_port": listen_port,
        "endpoints": endpoints,
    }
    stream_key = _stream_key(identity, pinned)
    if stream_key is not None:
        body["proof"] = enroll_proof(agent_mac_key(private, stream_key), setup_key)
    got = await enroll(server, body, trust)
    if got.get("server_key", {}).get("public_key") != pinned:
        raise ServerRefused("the enrolment answer names another server key than the server "
                            "showed before; refusing it")
    cfg = AgentConfig(
        server=server, peer_id=got["peer_id"], name=got["name"], token=got["token"],
        overlay_ip=got["overlay_ip"], overlay_prefix_len=got["overlay_prefix_len"],
        interface=interface, listen_port=listen_port, endpoints=endpoints,
        ca_file=trust.ca_file, insecure=trust.insecure, server_key=pinned,
        server_stream_key=stream_key, replicas=list(replicas or []),
    )
    st = AgentState(cfg)
    statefile.save(state_dir, st)
    log.info("enrolled as %s overlay_ip=%s; pinned server key %s", cfg.name, cfg.overlay_ip,
             got_fp)
    if got.get("note"):
        log.warning("enrolled under another name than asked: %s", got["note"])
    return st


def _stream_key(identity: dict[str, Any], pinned: str) -> str | None:
    """The server's stream key when it offers one, refused unless the pinned key signed it
    (None from a server from before MACs: the agent then asks for signed lines)."""
    key, sig = identity.get("stream_key"), identity.get("stream_key_sig")
    if key is None and sig is None:
        return None
    try:
        if not isinstance(key, str) or not isinstance(sig, str):
            raise BadMessage("the server's stream key or its signature is not a string")
        verify_stream_key(pinned, key, sig)
    except BadMessage as e:
        raise ServerRefused(f"{e}: refusing to enrol") from None
    return key


def next_netmap(held: Netmap | None, msg: StreamMessage) -> Netmap | None:
    """The netmap after a (validated) stream message (None = nothing changed)."""
    if isinstance(msg, FullMessage):
        return msg.netmap
    if isinstance(msg, DeltaMessage):
        if held is None:
            raise ResyncNeeded("delta without a base")
        try:
            return apply_delta(held, msg.delta)
        except DeltaMismatch as e:
            raise ResyncNeeded(str(e)) from None
    if isinstance(msg, DeletedMessage):
        raise PeerDeleted("this peer was deleted on the server")
    return None


class Agent:
    def _verified(self, line: str, mac_key: bytes | None = None) -> StreamMessage:
        """A stream line's message, only when it is signed with the pinned server key for
        this peer (or carries its MAC under `mac_key`, agreed with the server's stream key),
        validates, and (when it names a peer) names this one."""
        cfg = self.state.config
        if cfg.server_key is None:
            raise BadMessage("no server key pinned (state from before signed netmaps); "
                             "enrol again with `wiremesh up`")
        msg = parse_message(open_line(cfg.server_key, self.public_key, line, mac_key))
        named = (msg.netmap.peer_id if isinstance(msg, FullMessage) else
                 msg.peer_id if isinstance(msg, DeletedMessage) else cfg.peer_id)
        if named != cfg.peer_id or (isinstance(msg, DeletedMessage)
                                    and msg.public_key != self.public_key):
            raise BadMessage(f"a {msg.type} message for another peer (id {named})")
        return msg

    def __init__(self, state_dir: Path, backend: str = "auto") -> None:
        self.state_dir = state_dir
        self.state = statefile.load(state_dir)
        self.private_key = load_or_create_private_key(statefile.private_key_path(state_dir))
        self.public_key = public_key_of(self.private_key)
        self.backend_kind = backend
        self.dataplane: DataPlane | None = None
        self.portside: PortSide | None = None
        self.paths: PathManager | None = None
        self.want_full = False
        self.refusals = 0  # 401s in a row, for their backoff
        self._release: asyncio.Task | None = None
        self.prefs = prefs.load(state_dir)
        self.names: NameService | None = None
        cfg = self.state.config
        self.routes = RouteManager(cfg.interface,
                                   exit_routing=ExitRouting(cfg.interface, cfg.servers))
        self.routes.set_exit(self.prefs.exit_node, self.prefs.exit_allow_lan)
        metrics.FAILOVERS.set_function(lambda: self.routes.failovers)
        # The path manager points a peer's WireGuard endpoint at `relay.endpoint(key)` when
        # direct fails; the link stays connected either way so relayed peers reach us.
        self.relay: RelayLink | None = None

    async def _apply(self, netmap: Netmap, persist: bool = True) -> None:
        assert self.dataplane is not None
        if self.paths is not None:
            self.paths.set_netmap(netmap)
        # Holding the route manager's lock keeps a failover decided meanwhile from being
        # undone by this write; pyroute2's sync API runs its own event loop, so netlink work
        # stays off ours.
        async with self.routes.applying(netmap):
            await asyncio.to_thread(self.dataplane.apply, netmap)
        self._schedule_release()
        metrics.NETMAP_VERSION.set(netmap.version)
        metrics.PEERS.set(len(netmap.peers))
        metrics.INBOUND_RULES.set(len(netmap.inbound))
        metrics.NETMAP_UPDATES.inc()
        if self.names is not None:
            await self.names.set_netmap(netmap)
        if self.relay is not None:
            self.relay.set_relays(replica_relay_urls(self.state.config.servers,
                                                       netmap.relays))
        if self.paths is not None:
            self.paths.table.relay = self.relay is not None and bool(netmap.relays)
        if persist:
            self.state.netmap = netmap
            statefile.save(self.state_dir, self.state)

    async def reload_prefs(self) -> None:
        """Take the choices saved by `wiremesh set` (SIGHUP) without restarting the mesh."""
        try:
            new = prefs.load(self.state_dir)
        except prefs.PrefsError as e:
            log.error("keeping the current choices: %s", e)
            return
        log.info("choices reloaded: exit node %s%s", new.exit_node or "none",
                 " (local networks outside)" if new.exit_node and new.exit_allow_lan else "")
        self.prefs = new
        self.routes.set_exit(new.exit_node, new.exit_allow_lan)
        if self.dataplane is not None and self.state.netmap is not None:
            await self._apply(self.state.netmap, persist=False)

    async def _rewrite_peers(self) -> None:
        """Rewrite the WireGuard peers (first contact due, a path changed) for the netmap the
        data plane holds once the lock is ours: a rewrite that waited behind a netmap apply
        must not bring back the netmap that apply replaced (it removed a new pair's peers)."""
        if self.dataplane is None:
            return
        dataplane = self.dataplane
        async with self.routes.applying(None):
            if dataplane.netmap is not None:
                await asyncio.to_thread(dataplane.sync_peers, dataplane.netmap)
        self._schedule_release()

    def _schedule_release(self) -> None:
        """Rewrite the peers when first contact with a new peer is due (core/contact.py)."""
        due = self.dataplane.next_due() if self.dataplane else None
        if due is None or (self._release is not None and not self._release.done()):
            return

        async def release() -> None:
            await asyncio.sleep(max(0.0, due - time.monotonic()) + 0.01)
            self._release = None  # the write below schedules the next release, if any
            await self._rewrite_peers()

        self._release = asyncio.create_task(release())

    async def _stop_release(self) -> None:
        if self._release is not None:
            await _cancel(self._release)

    def _moved(self) -> None:
        """This machine changed networks: look for every path again, and get off
        connections that ran through the old network."""
        if self.paths is not None:
            self.paths.rebind()
        if self.relay is not None:
            self.relay.reconnect()


    async def _follow(self, client: ServerClient, discovery: Discovery) -> None:
        await discovery.refresh()
        refresh = asyncio.create_task(discovery.run())
        reports = asyncio.create_task(self._report_paths(client))
        try:
            held = self.state.netmap if not self.want_full else None
            since = held.version if held else 0
            metrics.SERVER_CONNECTED.set(1)
            metrics.CREDENTIALS_REFUSED.set(0)
            self.refusals = 0
            stream_key = self.state.config.server_stream_key
            mac_key = agent_mac_key(self.private_key, stream_key) if stream_key else None
            async for line in client.netmap_stream(since, digest(held) if held else None,
                                                   mac=mac_key is not None):
                try:
                    msg = self._verified(line, mac_key)
                except BadMessage as e:
                    # Nothing of it reaches WireGuard or nftables; the held netmap stays.
                    metrics.BAD_MESSAGES.inc()
                    log.error("refusing a netmap stream message (the held netmap stays): %s", e)
                    continue
                new = next_netmap(self.state.netmap, msg)
                if new is not None:
                    self.want_full = False
                    await self._apply(new)
        finally:
            await _cancel(refresh)
            await _cancel(reports)

    async def _report_paths(self, client: ServerClient) -> None:
        """Tell the server how each peer is reached, when that changes (and at least every
        minute, for the handshake times)."""
        last: list[dict[str, Any]] | None = None
        sent_at = 0.0
        while True:
            await asyncio.sleep(PATH_REPORT_S)
            if self.paths is None or self.dataplane is None:
                return
            status = await asyncio.to_thread(self.dataplane.backend.status)
            report = self.paths.report(status.peers)
            shape = [{k: v for k, v in r.items() if k != "last_handshake"} for r in report]
            if shape != last or time.monotonic() - sent_at > 60:
                try:
                    await client.report_paths(report)
                except (httpx.HTTPError, OSError, ServerRefused) as e:
                    raise_if_cancelled()
                    log.warning("cannot report paths: %s", e)
                    continue
                last, sent_at = shape, time.monotonic()

    async def run(self) -> None:
        cfg = self.state.config
        backend = await asyncio.to_thread(make_backend, self.backend_kind, cfg.interface)
        self.portside = _open_portside(cfg.listen_port, cfg.interface)
        if self.portside is not None:
            # The relay link joins once the server can be verified (see _until_trusted).
            self.paths = PathManager(self.portside, self.private_key, None, self._rewrite_peers)
        self.dataplane = DataPlane(backend, cfg, self.private_key, self.routes.routed_prefixes,
                                   self.paths.endpoint if self.paths else first_endpoint)
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(asyncio.to_thread, self.dataplane.close)
            # Runs once the failover loop has stopped (callbacks run last first).
            exit_routing = self.routes.exit_routing
            if exit_routing is not None:
                stack.push_async_callback(asyncio.to_thread, exit_routing.off)
            await asyncio.to_thread(self.dataplane.start)
            # Every peer answers failover probes; its ACL admits only peers that may use
            # its routes.
            responder = await start_responder(cfg.overlay_ip)
            stack.callback(responder.close)
            if self.prefs.dns:
                resolv_conf = Path(self.prefs.resolv_conf) if self.prefs.resolv_conf else None
                self.names = NameService(system_dns(cfg.interface, resolv_conf, self.state_dir),
                                         cfg.overlay_ip)
                stack.push_async_callback(self.names.close)
                await self.names.start(self.state.netmap)
            if self.portside is not None:
                await self.portside.start()
                stack.callback(self.portside.close)
                follow = asyncio.create_task(self.portside.follow())
                stack.push_async_callback(_cancel, follow)
            if self.paths is not None:
                paths = asyncio.create_task(self.paths.run())
                stack.push_async_callback(_cancel, paths)
            if self.state.netmap is not None:
                log.info("rebuilding from saved netmap version=%d", self.state.netmap.version)
                await self._apply(self.state.netmap, persist=False)
            failover = asyncio.create_task(self.routes.run(backend))
            stack.push_async_callback(_cancel, failover)
            stack.push_async_callback(self._stop_release)
            if cfg.insecure:
                log.warning(INSECURE_WARNING.format(url=cfg.server))
            await _until_trusted(cfg)
            # Relays are verified like the server; the link works while the server is down.
            held = self.state.netmap.relays if self.state.netmap else ()
            self.relay = RelayLink(replica_relay_urls(cfg.servers, held), cfg.token,
                                   cfg.listen_port, verify=cfg.trust.verify())
            metrics.RELAY.link = self.relay
            relay_task = asyncio.create_task(self.relay.run())
            stack.push_async_callback(_cancel, relay_task)
            stack.push_async_callback(self.relay.close)
            if self.paths is not None:
                self.paths.relay = self.relay
                self.paths.table.relay = bool(held)
            client = ServerClient(cfg.servers, cfg.token, cfg.trust)
            stack.push_async_callback(client.close)
            discovery = Discovery(client, cfg, self.portside, on_moved=self._moved)
            await self._follow_forever(client, discovery)

    async def _follow_forever(self, client: ServerClient, discovery: Discovery) -> None:
        backoff = BACKOFF_MIN
        while True:
            try:
                await self._follow(client, discovery)
                backoff = BACKOFF_MIN
            except ResyncNeeded as e:
                # Keep enforcing what we hold while asking for a full map.
                log.warning("netmap resync: %s", e)
                self.want_full = True
                continue
            except (NftError, WgError, RenderError) as e:
                # The held netmap is still enforced; the same update comes again on retry.
                log.error("could not apply netmap update: %s; retrying", e)
            except CredentialsRefused as e:
                # Tearing down here would let a restored or empty database take the whole
                # mesh down; only `wiremesh down` on this machine removes the agent.
                metrics.SERVER_CONNECTED.set(0)
                metrics.CREDENTIALS_REFUSED.set(1)
                refused_backoff = min(REFUSED_BACKOFF_MIN * 2 ** self.refusals,
                                      REFUSED_BACKOFF_MAX)
                self.refusals += 1
                log.error("%s: %s; keeping the mesh on netmap version=%s and asking again in "
                          "%.0f s (if this peer should go, run `wiremesh down` on it)",
                          client.server, e,
                          self.state.netmap.version if self.state.netmap else None,
                          refused_backoff)
                await asyncio.sleep(refused_backoff)
                continue
            except ServerBusy as e:
                metrics.SERVER_CONNECTED.set(0)
                log.info("%s: %s; trying again in about %.0f s", client.server, e,
                         e.retry_after)
                await client.next_server()
                await asyncio.sleep(jittered(max(e.retry_after, backoff)))
                continue
            except (httpx.HTTPError, OSError, ServerRefused, ValueError) as e:
                raise_if_cancelled()
                metrics.SERVER_CONNECTED.set(0)
                log.warning("no netmap from %s (%s); keeping netmap version=%s",
                            client.server, reason(e),
                            self.state.netmap.version if self.state.netmap else None)
                # Another replica (when there are several) serves the same mesh.
                await client.next_server()
            await asyncio.sleep(jittered(backoff))
            backoff = min(backoff * 2, BACKOFF_MAX)


def jittered(delay: float) -> float:
    """`delay` spread over +-50%: agents that lost the same replica come back spread out,
    not all in the same instant."""
    return delay * random.uniform(0.5, 1.5)


async def _until_trusted(cfg: AgentConfig) -> None:
    """Wait until the saved way of verifying the server works (e.g. a CA file that went
    missing comes back); the saved netmap stays enforced meanwhile."""
    while True:
        try:
            cfg.trust.check(cfg.server)
            return
        except TrustError as e:
            log.error("cannot verify the server: %s; enforcing the saved netmap, checking "
                      "again in %.0f s", e, REFUSED_BACKOFF_MAX)
            await asyncio.sleep(REFUSED_BACKOFF_MAX)


def _open_portside(port: int, ifname: str) -> PortSide | None:
    try:
        return PortSide(port, ifname)
    except OSError as e:
        log.warning("no endpoint discovery through NAT (raw and packet sockets: %s)", e)
        return None


async def _cancel(task: asyncio.Task) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def run_forever(state_dir: Path, backend: str = "auto",
                metrics_listen: tuple[str, int] | None = None) -> int:
    """Run until SIGINT/SIGTERM; returns the process exit code."""
    agent = Agent(state_dir, backend)
    if metrics_listen is not None:
        start_http_server(metrics_listen[1], addr=metrics_listen[0])

    async def main() -> int:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        reloads: set[asyncio.Task] = set()

        def reload() -> None:
            t = asyncio.create_task(agent.reload_prefs())
            reloads.add(t)
            t.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, reload)
        try:
            await agent.run()
        except asyncio.CancelledError:
            log.info("stopping")
            return 0
        except PeerDeleted as e:
            log.error("%s; stopping", e)
            return 3
        return 0

    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(main())
    return 0
