"""Known peers from the control server: a full sync in pages, then changes by long poll,
into the gateway's SQLite cache (store.py), which holds the revision it is at.

A restart resumes from that revision; while the server is unreachable the cache keeps
serving and the sync retries with backoff. Keys the server no longer lets in are handed to
`on_revoked` the moment their change is committed to the cache, so installed peers go at
once (provisioner.py). Every answer must carry the signature of the server key pinned at
enrolment (core/wire.py `verify_feed`), and what it holds is checked (keys, addresses)
before it is stored: a stolen TLS key or a misissued certificate cannot feed the gateway.
"""

from __future__ import annotations

import binascii
import ipaddress
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from wiremesh.agent.connection import Trust
from wiremesh.core.wire import (
    FEED_SIGNATURE_HEADER,
    BadMessage,
    is_canonical_ipv4,
    verify_feed,
)
from wiremesh.gateway.backoff import Backoff
from wiremesh.gateway.metrics import GatewayMetrics
from wiremesh.gateway.store import KnownPeerStore, StoreError, SyncedRow

log = logging.getLogger("wiremesh.gateway.sync")
PAGE = 50_000
WAIT_S = 20.0
SYNC_CACHE_MB = 64


class FeedError(ValueError):
    """The server answered something the gateway will not store."""


@dataclass(frozen=True)
class SyncConfig:
    server: str
    token: str
    server_key: str  # pinned at enrolment: every answer must be signed with it
    peer_key: str  # the gateway's own public key (answers are signed for it)
    trust: Trust = field(default_factory=Trust)
    page: int = PAGE
    wait: float = WAIT_S


def parse_row(row: Any) -> SyncedRow:
    """[peer id, base64 key, overlay address] from the feed -> a checked cache row."""
    if not (isinstance(row, list) and len(row) == 3 and isinstance(row[0], int)
            and isinstance(row[1], str) and isinstance(row[2], str)):
        raise FeedError(f"known peer: expected [id, key, address], got {str(row)[:80]}")
    try:
        key = binascii.a2b_base64(row[1], strict_mode=True)
    except binascii.Error:
        key = b""
    if len(key) != 32 or key == bytes(32):
        raise FeedError(f"known peer {row[0]}: not a WireGuard key: {row[1][:50]!r}")
    return row[0], key, _host(row[0], row[2])


def _host(peer_id: int, address: str) -> str:
    """`address` as one host's network (`a.b.c.d/32`); plain IPv4 addresses, all a feed of
    550,000 holds, are checked without building ipaddress objects (5x cheaper)."""
    if is_canonical_ipv4(address):
        return address + "/32"
    try:
        net = ipaddress.ip_network(address)
    except ValueError as e:
        raise FeedError(f"known peer {peer_id}: address: {e}") from None
    if net.num_addresses != 1:
        raise FeedError(f"known peer {peer_id}: address {address!r} is not one host")
    return str(net)


def _groups(body: dict[str, Any]) -> list[str]:
    groups = body.get("groups")
    if not (isinstance(groups, list) and all(isinstance(g, str) and g for g in groups)):
        raise FeedError("the answer names no admitted groups")
    return groups


class KnownPeerSync:
    def __init__(self, cfg: SyncConfig, db: Path, metrics: GatewayMetrics,
                 on_revoked: Callable[[list[bytes]], None]) -> None:
        self.cfg = cfg
        self.db = db
        self.metrics = metrics
        self.on_revoked = on_revoked
        self.synced = threading.Event()  # set once the cache holds some server revision

    def run(self, stop: threading.Event) -> None:
        store = KnownPeerStore(self.db, busy_timeout=10.0, cache_mb=SYNC_CACHE_MB)
        client = httpx.Client(
            base_url=self.cfg.server, headers={"Authorization": f"Bearer {self.cfg.token}"},
            verify=self.cfg.trust.verify(),
            timeout=httpx.Timeout(15.0, read=self.cfg.wait + 15.0))
        backoff = Backoff(initial=0.5)
        try:
            if store.sync_revision() is not None:
                self.synced.set()
            while not stop.is_set():
                try:
                    self._step(client, store)
                except (httpx.HTTPError, FeedError, StoreError, OSError) as e:
                    delay = backoff.failed(time.monotonic())
                    self.metrics.sync_errors.inc()
                    log.warning("event=sync_failed failures=%d retry_in_s=%.1f error=%s",
                                backoff.failures, delay, e or e.__class__.__name__)
                    stop.wait(delay)
                else:
                    backoff.succeeded()
        finally:
            client.close()
            store.close()

    def _step(self, client: httpx.Client, store: KnownPeerStore) -> None:
        since = store.sync_revision()
        if since is None:
            self._full(client, store)
            return
        params: dict[str, Any] = {"since": since, "wait": self.cfg.wait}
        # The groups the last answer said the cache admits (kept with its revision, so after
        # a restart too): a policy change then comes as a delta, not a full re-sync.
        holds = store.held_groups()
        if holds is not None:
            params["held"] = sorted(holds) or [""]
        body = self._get(client, "/api/v1/gateway/changes", params)
        rev = body.get("revision")
        if not isinstance(rev, int):
            raise FeedError("changes: no revision")
        if body.get("reset"):
            log.info("event=sync_reset revision=%d", rev)
            self._full(client, store)
            return
        if rev == since:
            return
        held = _groups(body)
        upsert = [parse_row(r) for r in body.get("upsert", [])]
        remove = body.get("remove", [])
        if not all(isinstance(i, int) for i in remove):
            raise FeedError("changes: removed peer ids must be integers")
        gone = store.apply_changes(upsert, remove, rev, held)
        if gone:
            self.on_revoked(gone)
        self.metrics.known.set(store.count())
        self.metrics.sync_revision.set(rev)
        log.info("event=sync_changes revision=%d upserted=%d revoked=%d", rev, len(upsert),
                 len(gone))

    def _full(self, client: httpx.Client, store: KnownPeerStore) -> None:
        started = time.monotonic()
        params = {"after": 0, "limit": self.cfg.page}
        page = self._get(client, "/api/v1/gateway/known", params)
        rev = page.get("revision")
        if not isinstance(rev, int):
            raise FeedError("known: no revision")
        held = _groups(page)

        def rows(page: dict[str, Any]) -> Iterator[SyncedRow]:
            while True:
                yield from (parse_row(r) for r in page.get("peers", []))
                if page.get("next_after") is None:
                    return
                params["after"] = page["next_after"]
                page = self._get(client, "/api/v1/gateway/known", params)

        # The pages are not one snapshot: the cache holds the first page's revision, and the
        # changes since replay whatever moved while paging.
        count, gone = store.replace_synced(rows(page), rev, held)
        if gone:
            self.on_revoked(gone)
        seconds = time.monotonic() - started
        self.metrics.known.set(count)
        self.metrics.sync_revision.set(rev)
        self.metrics.sync_seconds.set(seconds)
        self.synced.set()
        log.info("%s", json.dumps({"event": "synced", "known": count, "revision": rev,
                                   "revoked": len(gone), "seconds": round(seconds, 2)}))

    def _get(self, client: httpx.Client, path: str, params: dict[str, Any]) -> dict[str, Any]:
        r = client.get(path, params=params)
        if r.status_code != 200:
            raise FeedError(f"{path}: HTTP {r.status_code}: {r.text[:200]}")
        try:
            verify_feed(self.cfg.server_key, self.cfg.peer_key, r.request.url.raw_path,
                        r.content, r.headers.get(FEED_SIGNATURE_HEADER))
        except BadMessage as e:
            raise FeedError(f"{path}: refused: {e}") from None
        try:
            body = r.json()
        except ValueError:
            raise FeedError(f"{path}: not JSON") from None
        if not isinstance(body, dict):
            raise FeedError(f"{path}: not a JSON object")
        return body
