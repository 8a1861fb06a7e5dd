"""The agent's link to a relay: WireGuard packets to and from peers over one WebSocket.

wireguard-go keeps talking UDP. Each relayed peer gets a UDP socket of its own on loopback;
the path manager sets that peer's WireGuard endpoint to it (`endpoint()`), so what
wireguard-go sends there goes to the relay addressed to that peer, and what the relay
delivers from that peer is sent from the same socket to wireguard-go's listen port. Only the
endpoint moves, so WireGuard keeps its session when a peer switches between direct and relay.

A packet that arrives through the relay from a peer without a socket yet gets one: WireGuard
then roams that peer's endpoint to it and answers through the relay, which is what a peer
that can only reach us through the relay needs.

The link connects to the first relay of its list that answers, skips dead ones, and starts
over from the top with backoff when it loses its relay; it stays connected even when no peer
is relayed, so peers that need the relay can reach us through it. Two peers meet only on the
same relay and every agent gets the same list, so a link that fell back to a later relay goes
back to an earlier one as soon as that answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus, WebSocketException

from wiremesh.agent.connection import raise_if_cancelled
from wiremesh.core.relayframe import MAX_FRAME, MAX_PACKET, BadFrame, check_packet, unpack
from wiremesh.wg.keys import decode_key, encode_key

log = logging.getLogger("wiremesh.agent.relay")
LOOPBACK = "127.0.0.1"
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.5, 10.0
QUEUE_FRAMES = 1024
PREFER_AFTER_S = 30.0


def relay_urls(server: str, relays: Sequence[str]) -> list[str]:
    """WebSocket URLs of `relays`; a relative entry (the server's embedded relay) is resolved
    against the server URL, http(s) becomes ws(s). Entries that are none of these are left
    out (and logged): one bad entry must not cost the others."""
    out = []
    for r in relays:
        parts = urlsplit(urljoin(server.rstrip("/") + "/", r))
        scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
        if scheme not in ("ws", "wss") or not parts.hostname or not (
                r.startswith("/") or "://" in r) or any(c.isspace() for c in r):
            log.warning("ignoring relay %r: expected ws(s)://, http(s):// or a /path", r)
            continue
        out.append(urlunsplit((scheme, parts.netloc, parts.path, parts.query, "")))
    return out


def replica_relay_urls(servers: Sequence[str], relays: Sequence[str]) -> list[str]:
    """`relay_urls` for an agent given several replicas of the server: the embedded relay (a
    path) is on each of them, so it stands for each one's, in the agent's order of replicas.
    Agents given the same list meet on the first that is up, and relaying outlives the
    first replica."""
    out: list[str] = []
    for r in relays:
        for server in servers if r.startswith("/") else servers[:1]:
            out += [u for u in relay_urls(server, [r]) if u not in out]
    return out


@dataclass
class RelayStats:
    """What went through the link; `to_relay` counts packets wireguard-go handed us."""

    to_relay_packets: int = 0
    to_relay_bytes: int = 0
    from_relay_packets: int = 0
    from_relay_bytes: int = 0
    dropped: int = 0  # no relay connected, queue full, malformed or wireguard-go busy


class RelayLink:
    def __init__(self, relays: Sequence[str], token: str, wg_port: int,
                 verify: ssl.SSLContext | bool = True, connect_timeout: float = 5.0,
                 prefer_after: float = PREFER_AFTER_S) -> None:
        """`relays`: ws(s):// URLs (see `relay_urls`), tried in order; `wg_port`: the UDP
        port wireguard-go listens on (on this host); `verify`: like httpx's, how to check the
        relay's certificate (an SSL context, True for the system CAs, False for none)."""
        self.relays = list(relays)
        self.token = token
        self.wg_addr = (LOOPBACK, wg_port)
        self.verify = verify
        self.connect_timeout = connect_timeout
        self.prefer_after = prefer_after  # seconds between checks for an earlier relay
        self.stats = RelayStats()
        self.relay_in_use: str | None = None
        self._socks: dict[bytes, socket.socket] = {}
        self._out: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_FRAMES)
        self._ws: ClientConnection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()  # relays changed or closing: leave the current relay
        self._closing = False
        self._stale = False

    # --- what the path manager uses -------------------------------------------------------

    def endpoint(self, peer_key: str) -> str:
        """The loopback `IP:PORT` wireguard-go must use as `peer_key`'s endpoint to reach it
        through the relay (the same one until `release`)."""
        host, port = self._sock_for(decode_key(peer_key)).getsockname()
        return f"{host}:{port}"

    def release(self, peer_key: str) -> None:
        """Close `peer_key`'s loopback socket (it goes direct or left the netmap)."""
        sock = self._socks.pop(decode_key(peer_key), None)
        if sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(sock.fileno())
            sock.close()

    def set_relays(self, relays: Sequence[str]) -> None:
        """A new relay list (from the netmap): reconnect if the relay in use is gone or a
        preferred one was added ahead of it."""
        new = list(relays)
        if new == self.relays:
            return
        cur = self.relay_in_use
        keep = cur is not None and cur in new and \
            new[:new.index(cur)] == self.relays[:self.relays.index(cur)]
        self.relays = new
        if not keep:
            self._wake.set()

    def reconnect(self) -> None:
        """This machine changed networks: the connection to the relay runs through the old
        one and is dead, however long its pings take to tell. Drop it and connect again."""
        self._stale = True
        self._wake.set()

    async def run(self) -> None:
        """Stay connected to the first relay that works, until `close()`."""
        self._loop = asyncio.get_running_loop()
        for key, sock in self._socks.items():
            self._watch(key, sock)
        backoff = BACKOFF_MIN_S
        while not self._closing:
            self._wake.clear()
            for url in list(self.relays):
                if await self._session(url):
                    backoff = BACKOFF_MIN_S
                    break  # it worked and ended: start over from the first relay
                if self._closing or self._wake.is_set():
                    break
            if self._closing:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._ws is not None:
            await self._ws.close()
        for key in list(self._socks):
            self.release(encode_key(key))

    @property
    def peers(self) -> list[str]:
        """Peers with a loopback socket (relayed, or heard from through the relay)."""
        return [encode_key(k) for k in self._socks]

    # --- loopback side --------------------------------------------------------------------

    def _sock_for(self, key: bytes) -> socket.socket:
        sock = self._socks.get(key)
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.bind((LOOPBACK, 0))
            self._socks[key] = sock
            if self._loop is not None:
                self._watch(key, sock)
        return sock

    def _watch(self, key: bytes, sock: socket.socket) -> None:
        assert self._loop is not None
        self._loop.add_reader(sock.fileno(), self._from_wireguard, key, sock)

    def _from_wireguard(self, key: bytes, sock: socket.socket) -> None:
        while True:
            try:
                packet, addr = sock.recvfrom(MAX_PACKET + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. ICMP port unreachable reported on this socket
            if addr != self.wg_addr:
                continue  # only wireguard-go may send through the relay
            try:
                check_packet(packet)
            except BadFrame:
                self.stats.dropped += 1
                continue
            if self._ws is None:
                self.stats.dropped += 1
                continue
            try:
                self._out.put_nowait(key + packet)
            except asyncio.QueueFull:
                self.stats.dropped += 1
                continue
            self.stats.to_relay_packets += 1
            self.stats.to_relay_bytes += len(packet)

    def _to_wireguard(self, frame: bytes) -> None:
        try:
            src, packet = unpack(frame)
        except BadFrame:
            self.stats.dropped += 1
            return
        try:
            self._sock_for(src).sendto(packet, self.wg_addr)
        except OSError:  # wireguard-go's socket buffer is full, or it is gone
            self.stats.dropped += 1
            return
        self.stats.from_relay_packets += 1
        self.stats.from_relay_bytes += len(packet)

    # --- relay side -----------------------------------------------------------------------

    def _ssl(self, url: str) -> ssl.SSLContext | None:
        if not url.startswith("wss:"):
            return None
        if isinstance(self.verify, ssl.SSLContext):
            return self.verify
        ctx = ssl.create_default_context()
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    async def _connect(self, url: str) -> ClientConnection:
        return await connect(
            url, additional_headers={"Authorization": f"Bearer {self.token}"},
            ssl=self._ssl(url), open_timeout=self.connect_timeout, compression=None,
            max_size=MAX_FRAME, ping_interval=5, ping_timeout=10)

    async def _earlier_relay_answers(self, url: str) -> None:
        """Return once a relay listed before `url` accepts us."""
        while True:
            await asyncio.sleep(self.prefer_after)
            ahead = self.relays[:self.relays.index(url)] if url in self.relays else []
            for better in ahead:
                try:
                    ws = await self._connect(better)
                except (OSError, TimeoutError, WebSocketException):
                    continue
                await ws.close()
                log.info("relay %s answers again; leaving %s for it", better, url)
                return

    async def _session(self, url: str) -> bool:
        """Serve one connection to `url`; False when it could not be opened."""
        try:
            ws = await self._connect(url)
        except InvalidStatus as e:
            log.warning("relay %s refused us (HTTP %d)", url, e.response.status_code)
            return False
        except (OSError, TimeoutError, WebSocketException) as e:
            raise_if_cancelled()
            log.warning("relay %s unreachable: %s", url, e or e.__class__.__name__)
            return False
        self._ws, self.relay_in_use = ws, url
        log.info("relay %s connected", url)
        tasks = [asyncio.create_task(self._send(ws)), asyncio.create_task(self._receive(ws)),
                 asyncio.create_task(self._wake.wait()),
                 asyncio.create_task(self._earlier_relay_answers(url))]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._ws, self.relay_in_use = None, None
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._stale:
                # A closing handshake over a dead connection would wait for its timeout.
                self._stale = False
                ws.transport.abort()
            else:
                await ws.close()
        log.info("relay %s disconnected", url)
        return True

    async def _send(self, ws: ClientConnection) -> None:
        while True:
            await ws.send(await self._out.get())

    async def _receive(self, ws: ClientConnection) -> None:
        async for msg in ws:
            if isinstance(msg, bytes):
                self._to_wireguard(msg)
            else:
                self.stats.dropped += 1
