"""The change log: hubs refresh from what changed since their revision and end exactly where a
hub loading the whole store ends; a hub that missed logged changes (trimmed) reloads whole;
concurrent writers through several stores never lose a change."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from types import SimpleNamespace

import pytest
from sqlalchemy import delete, select

from tests.api.test_api import pub
from wiremesh.core.models import Policy, PortRange, Route
from wiremesh.core.policy import ALL_GROUP, compile_netmaps
from wiremesh.core.wire import Signer
from wiremesh.server import hub as hub_module
from wiremesh.server.hub import NetmapHub
from wiremesh.store import Store, policies
from wiremesh.store.changes import bump, trim
from wiremesh.store.db import make_engine, migrate
from wiremesh.store.enrolment import NewPeer
from wiremesh.store.errors import StoreError
from wiremesh.store.tables import ChangeRow, PolicyRow

pytestmark = pytest.mark.timeout(300)
SIGNER = Signer(Signer.generate())


@dataclass
class Replica:
    store: Store
    hub: NetmapHub


@contextlib.asynccontextmanager
async def replicas(db_url: str, n: int) -> AsyncIterator[list[Replica]]:
    """n stores over one database (own engines, as replicas have), each with its hub."""
    engines = [make_engine(db_url) for _ in range(n)]
    try:
        await migrate(engines[0])
        stores = [Store(e) for e in engines]
        await stores[0].bootstrap()
        yield [Replica(s, NetmapHub(s.mesh, SIGNER)) for s in stores]
    finally:
        for e in engines:
            await e.dispose()


async def assert_as_fresh(r: Replica) -> None:
    """The hub holds what a hub starting now would: the same mesh and netmaps."""
    rev, state = await r.store.mesh.load_state()
    assert r.hub.revision == rev
    assert r.hub.state == state
    cur = r.hub.current
    # Versions say when each netmap last changed; the rest is what the hub adds to all.
    want = {pid: replace(nm, version=cur[pid].version if pid in cur else 0,
                         relays=r.hub.relays, dns=r.hub.dns, mtu=r.hub.mtu)
            for pid, nm in compile_netmaps(state).items()}
    assert cur == want


async def setup_key(store: Store, groups: list[str] = ()) -> str:  # type: ignore[assignment]
    return (await store.setup_keys.create("t", "k", True, 0, None, list(groups)))[1]


async def enroll(store: Store, key: str, *names: str) -> None:
    got = await store.enrolment.enroll_many(
        [NewPeer(key, pub(), n, 51820, ["192.0.2.9"]) for n in names])
    assert not [g for g in got if isinstance(g, StoreError)]


class Changer:
    """Random admin and agent changes, each through the store's public methods."""

    def __init__(self, store: Store, rng: random.Random, key: str) -> None:
        self.store, self.rng, self.key = store, rng, key
        self.n = 0

    async def _names(self) -> tuple[list[str], list[str]]:
        peers = sorted(p.name for p in await self.store.peers.all())
        return peers, sorted(await self.store.groups.all())

    async def step(self) -> None:
        rng, store = self.rng, self.store
        peers, groups = await self._names()
        self.n += 1
        op = rng.choice(["enroll", "enroll", "rename", "delete", "endpoints", "group", "member",
                         "member", "ungroup", "policy", "route", "unroute"])
        try:
            if op == "enroll" or not peers:
                await enroll(store, self.key, *(f"h{self.n}x{i}"
                                                for i in range(rng.randint(1, 3))))
            elif op == "rename":
                await store.peers.rename("t", rng.choice(peers), f"r{self.n}")
            elif op == "delete":
                await store.peers.delete("t", rng.choice(peers))
            elif op == "endpoints":
                pid = (await store.peers.get(rng.choice(peers))).id
                await store.peers.report_endpoints(pid, [f"198.51.100.{self.n % 250}"],
                                                   rng.choice([51820, 51821]))
            elif op == "group":
                await store.groups.create("t", f"g{self.n}",
                                          rng.sample(peers, min(len(peers), 2)))
            elif op == "member" and groups:
                await store.groups.set_membership("t", rng.choice(groups), rng.choice(peers),
                                                  rng.random() < 0.6)
            elif op == "ungroup" and groups:
                await store.groups.delete("t", rng.choice(groups))
            elif op == "policy":
                named = {g: rng.sample(peers, min(len(peers), rng.randint(0, 3)))
                         for g in rng.sample(groups, min(len(groups), 2))}
                pool = [ALL_GROUP, *groups]
                pols = [Policy(name=f"p{i}", sources=(rng.choice(pool),),
                               destinations=(rng.choice(pool),),
                               bidirectional=rng.random() < 0.3)
                        for i in range(rng.randint(1, 3))]
                await store.policies.replace("t", named, pols, None, "test")
            elif op == "route" and groups:
                await store.routes.upsert("t", Route(
                    name=f"rt{self.n % 3}", prefix=f"198.18.{self.n % 3}.0/24",
                    router_group=rng.choice(groups), metric=rng.randint(1, 200)))
            elif op == "unroute":
                await store.routes.delete("t", f"rt{self.n % 3}")
        except StoreError:
            pass  # a refused change (a group in use, a name taken) changes nothing


@pytest.mark.parametrize("seed", [1, 2])
async def test_incremental_refresh_equals_a_full_load(db_url: str, seed: int) -> None:
    async with replicas(db_url, 1) as [r]:
        rng = random.Random(seed)
        changer = Changer(r.store, rng, await setup_key(r.store))
        await r.hub.refresh()
        for _ in range(25):
            for _ in range(rng.randint(1, 3)):  # one refresh may take several changes
                await changer.step()
            await r.hub.refresh()
            await assert_as_fresh(r)
        assert r.hub.full_loads == 1, "a refresh with the whole log at hand read everything"


async def test_a_hub_that_missed_trimmed_changes_reloads_whole(db_url: str) -> None:
    async with replicas(db_url, 2) as [a, b]:
        key = await setup_key(a.store)
        await enroll(a.store, key, "x", "y")
        await a.hub.refresh()
        await b.hub.refresh()
        behind = b.hub.revision
        await a.store.groups.create("t", "ops", ["x"])
        await enroll(a.store, key, "z")
        await a.store.peers.delete("t", "y")
        async with a.store.db.tx() as s:  # the log forgets what b has not read
            await trim(s, behind + 1)
        await b.hub.refresh()
        assert b.hub.full_loads == 2
        await assert_as_fresh(b)
        names = {p.name for p in b.hub.state.peers.values()}
        assert names == {"x", "z"} and len(b.hub.state.groups["ops"]) == 1
        # Within the log again, it goes on incrementally.
        await a.store.groups.set_membership("t", "ops", "z", True)
        await b.hub.refresh()
        assert b.hub.full_loads == 2
        await assert_as_fresh(b)


async def test_a_policy_apply_logs_by_name_only_what_it_changed(db_url: str) -> None:
    async with replicas(db_url, 1) as [r]:
        ssh = Policy("ssh", (ALL_GROUP,), (ALL_GROUP,), "tcp", (PortRange(22, 22),))
        dns = Policy("dns", (ALL_GROUP,), (ALL_GROUP,), "udp", (PortRange(53, 53),))

        async def logged(rev: int) -> set[tuple[str, str]]:
            async with r.store.db.reads() as s:
                return set((await s.execute(select(ChangeRow.kind, ChangeRow.ref).where(
                    ChangeRow.revision == rev))).all())

        await r.store.policies.replace("t", {}, [ssh, dns], None, "t")
        await r.hub.refresh()
        rev = await r.store.policies.replace(
            "t", {}, [ssh, replace(dns, ports=(PortRange(54, 54),))], None, "t")
        assert await logged(rev) == {("policies", "dns")}
        rev = await r.store.policies.replace("t", {}, [ssh], None, "t")
        assert await logged(rev) == {("policies", "dns")}
        # The same file again: nothing changed, no revision.
        assert await r.store.policies.replace("t", {}, [ssh], None, "t") == rev
        assert await r.store.changes.revision() == rev
        await r.hub.refresh()
        assert r.hub.full_loads == 1
        await assert_as_fresh(r)


async def test_a_policy_change_logged_without_names_reloads_whole(db_url: str) -> None:
    """Earlier versions logged policy and route changes with no name: any of them."""
    async with replicas(db_url, 1) as [r]:
        await enroll(r.store, await setup_key(r.store), "x", "y")
        await r.hub.refresh()
        assert r.hub.full_loads == 1
        async with r.store.db.tx() as s:
            await s.execute(delete(PolicyRow))
            s.add(PolicyRow(**policies.row_values(Policy("ssh", (ALL_GROUP,), (ALL_GROUP,),
                                                          "tcp", (PortRange(22, 22),)))))
            await bump(s, policies=[""])
        await r.hub.refresh()
        assert r.hub.full_loads == 2
        await assert_as_fresh(r)
        assert [p.name for p in r.hub.state.policies] == ["ssh"]


async def test_a_slow_full_load_does_not_hold_back_the_next_change(
        db_url: str, monkeypatch) -> None:
    """The hub rests twice the time of its last incremental refresh before the next one;
    a full load (at start: 47 s at 550k peers) must not count, or the first change after a
    restart waits minutes."""
    clock = [1000.0]
    monkeypatch.setattr(hub_module, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    async with replicas(db_url, 1) as [r]:
        load_state, load_since = r.store.mesh.load_state, r.store.mesh.load_since

        async def slow_full():  # type: ignore[no-untyped-def]
            clock[0] += 50
            return await load_state()

        async def slow_since(*a):  # type: ignore[no-untyped-def]
            clock[0] += 3
            return await load_since(*a)

        monkeypatch.setattr(r.store.mesh, "load_state", slow_full)
        monkeypatch.setattr(r.store.mesh, "load_since", slow_since)
        await enroll(r.store, await setup_key(r.store), "x")
        await r.hub.refresh()
        assert r.hub.full_loads == 1 and r.hub.rest() == hub_module.COALESCE_S
        await enroll(r.store, await setup_key(r.store), "y")
        await r.hub.refresh()  # incremental, 3 s: the next one waits 6 s
        assert r.hub.full_loads == 1 and r.hub.rest() == pytest.approx(6.0)


async def _wait_for(cond, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + 10
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("busy", [True, False])
async def test_the_rest_after_a_refresh_counts_its_streams_when_changes_keep_coming(
        db_url: str, monkeypatch, busy: bool) -> None:
    """A refresh costs what reading and compiling the change took plus the lines the woken
    streams send (at 10,000 streams these cost more than the refresh; left out, refreshes
    took most of the process during an enrolment storm). The hub rests twice that only when
    more changes came meanwhile: a change after a storm does not wait out its last rest."""
    clock = [1000.0]
    monkeypatch.setattr(hub_module, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    async with replicas(db_url, 1) as [r]:
        key = await setup_key(r.store)
        await enroll(r.store, key, "x", "y")
        await r.hub.refresh()
        load_since = r.store.mesh.load_since

        async def slow_since(*a):  # type: ignore[no-untyped-def]
            clock[0] += 1
            got = await load_since(*a)
            if busy and len(r.hub.current) == 2:  # a change commits while this one is read
                await enroll(r.store, key, "w")
            return got

        monkeypatch.setattr(r.store.mesh, "load_since", slow_since)
        ev = r.hub.subscribe(next(iter(r.hub.current)))

        async def stream() -> None:
            await ev.wait()
            clock[0] += 5  # sending its line takes 5 s

        sending = asyncio.create_task(stream())
        runner = asyncio.create_task(r.hub.run(poll_interval=0.05))
        try:
            await enroll(r.store, key, "z")  # x and y now see z (the default policy)
            r.hub.poke()
            await asyncio.wait_for(sending, 10)
            if busy:  # twice the 1 + 5 s, from the end of the sending
                await _wait_for(lambda: r.hub.rest() == pytest.approx(12.0), "rest 12 s")
            else:
                await _wait_for(lambda: r.hub.rest() == hub_module.COALESCE_S, "no rest")
        finally:
            r.hub.stop()
            await asyncio.wait_for(runner, 30)


async def test_every_change_logs_its_revision(db_url: str) -> None:
    async with replicas(db_url, 1) as [r]:
        key = await setup_key(r.store, [])
        before = await r.store.changes.revision()
        await enroll(r.store, key, "a", "b")
        await r.store.groups.create("t", "g", ["a"])
        await r.store.groups.set_membership("t", "g", "b", True)
        after = await r.store.changes.revision()
        async with r.store.db.reads() as s:
            logged = (await s.execute(select(ChangeRow.revision, ChangeRow.kind)
                                      .where(ChangeRow.revision > before))).all()
        assert {rev for rev, _ in logged} == set(range(before + 1, after + 1))
        assert sorted(kind for _, kind in logged) == ["group", "peer", "peer", "peer"]


async def test_concurrent_writers_lose_no_change(db_url: str) -> None:
    """Writers through three stores at once (enrolments, memberships, renames, policy
    applies); every hub, refreshing as it goes, ends with every change, incrementally."""
    async with replicas(db_url, 3) as reps:
        key = await setup_key(reps[0].store)
        await enroll(reps[0].store, key, *(f"p{i}" for i in range(6)))
        await reps[0].store.groups.create("t", "g", [])
        for r in reps:
            await r.hub.refresh()

        async def writer(i: int) -> None:
            store = reps[i % 3].store
            await enroll(store, key, f"w{i}")
            await store.groups.set_membership("t", "g", f"p{i % 6}", i % 2 == 0)
            await store.peers.report_endpoints(
                (await store.peers.get(f"w{i}")).id, [f"198.51.100.{i}"], 51820)
            await store.peers.rename("t", f"w{i}", f"v{i}")

        async def refresher(r: Replica, done: asyncio.Event) -> None:
            while not done.is_set():
                await r.hub.refresh()
                await asyncio.sleep(0)

        done = asyncio.Event()
        refreshing = [asyncio.create_task(refresher(r, done)) for r in reps]
        try:
            await asyncio.gather(*(writer(i) for i in range(24)))
            await reps[1].store.policies.replace(
                "t", {"h": ["v1", "v2"]},
                [Policy(name="p", sources=("h",), destinations=("g",))], None, "t")
        finally:
            done.set()
            await asyncio.gather(*refreshing)
        for r in reps:
            await r.hub.refresh()
            await assert_as_fresh(r)
            assert r.hub.full_loads == 1
            names = {p.name for p in r.hub.state.peers.values()}
            assert {f"v{i}" for i in range(24)} <= names
