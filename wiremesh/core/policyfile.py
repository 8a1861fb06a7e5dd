"""The policy file: groups, policies, routes and reachability tests as YAML or JSON (pure).

Format (see examples/policy.yaml)::

    groups:                       # group -> peer names; groups not listed are left as they are
      devs: [alice, bob]
    routes:                       # optional; when present it replaces every route
      - {name: lab, prefix: 198.18.1.0/24, routers: routers, metric: 100,
         router_metrics: {r1: 50}, masquerade: true, enabled: true}
                                  # metrics 0..1000000, lower wins; router_metrics name
                                  # members of the `routers` group
    policies:                     # optional; when present it replaces every policy
                                  # (`policies: []` removes them all)
      - name: devs-ssh
        sources: [devs]           # groups; `all` is every peer
        destinations: [servers]
        proto: tcp                # all | tcp | udp | icmp (default all)
        ports: [22, "8000-8100"]  # tcp/udp only; none = every port
        bidirectional: false
        enabled: true
        routes: [lab]             # routed prefixes this policy opens to its sources
        posture: {min_agent_version: 0.2.0, os: [linux, macos]}  # sources that fail it
                                  # are out of this policy's sources (core/posture.py)
        description: ...
    tests:                        # checked by `run_tests`, against the policies in force
      - {src: alice, dst: web1, proto: tcp, port: 22, expect: allow}   # once the file applies

Integers are plain decimal (`22`, not YAML 1.1's base-60 `22:22`, octal `010`, `0x16`,
`0b11` or `1_000`, which are errors naming their line and field).

API:

- `parse(text, state=None, source="policy") -> PolicyFile`, raising `PolicyFileError` whose
  `issues` each name the line and field (`str(err)` is one line for a CLI, `err.lines()` all).
  With `state`, peer names, group names and route names are checked against it too, and
  what the file keeps from it (policies, routes) against what the file changes.
- `PolicyFile.apply(state) -> MeshState`: the state with the file's groups, and its policies
  and routes when given.
- `run_tests(state, tests) -> list[TestFailure]`.
- `export(state, tests=()) -> str`: YAML that `parse` reads back to the same state.
- `plan(old, new) -> Plan`: what a change adds/removes/edits and which peers' netmaps change.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from wiremesh.core.explain import Explanation, explain
from wiremesh.core.ipam import OVERLAY_NET
from wiremesh.core.models import MeshState, Policy, PortRange, Route
from wiremesh.core.policy import ALL_GROUP, PolicyCompiler, mesh_change
from wiremesh.core.posture import OsFamily, Posture
from wiremesh.core.wire import Metric, Name, Netmap, PortRangeT, Prefix

Path = tuple[str | int, ...]


# --- errors ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Issue:
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        return f"{where}{self.field}: {self.message}" if self.field else f"{where}{self.message}"


class PolicyFileError(ValueError):
    """A policy file that cannot be used; every issue names its line and field."""

    def __init__(self, source: str, issues: Sequence[Issue]) -> None:
        self.source = source
        self.issues = tuple(issues)
        more = f" (and {len(self.issues) - 1} more)" if len(self.issues) > 1 else ""
        super().__init__(f"{source}: {self.issues[0]}{more}")

    def lines(self) -> list[str]:
        return [f"{self.source}: {i}" for i in self.issues]


def _field(path: Path) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


# --- the schema ------------------------------------------------------------------------------

class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _PostureIn(_Model):
    min_agent_version: str | None = None
    os: list[OsFamily] = []

    @field_validator("min_agent_version")
    @classmethod
    def _version(cls, v: str | None) -> str | None:
        if v is not None:
            Posture(min_agent_version=v)  # raises naming the bad version
        return v


class _PolicyIn(_Model):
    name: Name
    description: str = ""
    sources: list[Name] = Field(min_length=1)
    destinations: list[Name] = []
    proto: Literal["all", "tcp", "udp", "icmp"] = "all"
    ports: list[PortRangeT] = []
    bidirectional: bool = False
    enabled: bool = True
    routes: list[Name] = []
    posture: _PostureIn | None = None

    @field_validator("ports")
    @classmethod
    def _ports_need_tcp_or_udp(cls, v: list[PortRange], info: ValidationInfo) -> list[PortRange]:
        proto = info.data.get("proto")
        if v and proto in ("all", "icmp"):
            raise ValueError(f"ports make no sense with proto {proto}: use tcp or udp")
        return v

    @model_validator(mode="after")
    def _somewhere_to_go(self) -> _PolicyIn:
        if not self.destinations and not self.routes:
            raise ValueError("a policy needs destinations or routes")
        return self


class _RouteIn(_Model):
    name: Name
    prefix: Prefix
    routers: Name
    metric: Metric = 100
    router_metrics: dict[Name, Metric] = {}
    masquerade: bool = True
    enabled: bool = True

    @field_validator("prefix")
    @classmethod
    def _routable(cls, v: str) -> str:
        # Agents route, filter and masquerade IPv4 prefixes only; a peer's own overlay /32
        # given to a router would move that peer's traffic to the router.
        net = ipaddress.ip_network(v)
        if not isinstance(net, ipaddress.IPv4Network):
            raise ValueError(f"{v}: a route is an IPv4 network")
        if net.subnet_of(ipaddress.IPv4Network(OVERLAY_NET)):
            raise ValueError(f"{v} is inside the overlay {OVERLAY_NET}: peers' addresses "
                             "are not routed")
        if net.is_loopback or net.is_link_local or net.is_multicast:
            raise ValueError(f"{v} is a loopback, link-local or multicast network: no router "
                             "can serve it")
        return v


class _TestIn(_Model):
    src: str = Field(min_length=1)
    dst: str = Field(min_length=1)
    proto: Literal["tcp", "udp", "icmp"]
    port: int | None = Field(None, ge=1, le=65535)
    expect: Literal["allow", "deny"]

    @model_validator(mode="after")
    def _port_fits_proto(self) -> _TestIn:
        if self.proto == "icmp" and self.port is not None:
            raise ValueError("a port makes no sense with proto icmp")
        if self.proto in ("tcp", "udp") and self.port is None:
            raise ValueError(f"proto {self.proto} needs a port")
        return self


class _FileIn(_Model):
    groups: dict[Name, list[Name]] = {}
    routes: list[_RouteIn] | None = None
    policies: list[_PolicyIn] | None = None
    tests: list[_TestIn] = []


# --- the result ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyTest:
    src: str
    dst: str
    proto: Literal["tcp", "udp", "icmp"]
    port: int | None
    expect: Literal["allow", "deny"]
    line: int | None = None

    def __str__(self) -> str:
        port = f"/{self.port}" if self.port is not None else ""
        return f"{self.src} -> {self.dst} {self.proto}{port} expect {self.expect}"


@dataclass(frozen=True)
class PolicyFile:
    groups: dict[str, tuple[str, ...]]  # group -> peer names
    policies: tuple[Policy, ...] | None  # None: the file has no policies section
    routes: tuple[Route, ...] | None  # None: the file has no routes section
    tests: tuple[PolicyTest, ...]

    def apply(self, state: MeshState) -> MeshState:
        """`state` with this file's groups, and its policies and routes where it has those
        sections (peer names must resolve)."""
        # Only the names the file uses are indexed: most files name a few peers of many.
        wanted = {n for names in self.groups.values() for n in names}
        ids: dict[str, list[int]] = {}
        if wanted:
            for pid, p in state.peers.items():
                if p.name in wanted:
                    ids.setdefault(p.name, []).append(pid)
        issues = []
        groups = dict(state.groups)
        for g, names in self.groups.items():
            members = set()
            for n in names:
                found = ids.get(n, [])
                if len(found) != 1:
                    issues.append(Issue(None, f"groups.{g}", f"peer name {n!r} matches "
                                        f"{len(found) or 'no'} peers"))
                members.update(found)
            groups[g] = frozenset(members)
        if issues:
            raise PolicyFileError("policy", issues)
        return MeshState(
            peers=state.peers, groups=groups,
            policies=self.policies if self.policies is not None else state.policies,
            routes=self.routes if self.routes is not None else state.routes)


# --- parsing ---------------------------------------------------------------------------------


# Limits that keep a hostile file cheap to refuse: its size, how deep it nests and how many
# values it holds, both with every YAML alias expanded (a "billion laughs" is a few hundred
# bytes of aliases to aliases). Checked on the event stream, before any node is built.
MAX_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_NODES = 100_000
# libyaml when PyYAML has it: the pure-Python scanner takes many seconds for a 1 MiB file.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


_INT = "tag:yaml.org,2002:int"
# Integers are plain decimal: YAML 1.1 also reads `22:22` as base 60 (1342), `010` as octal,
# `0b11`, `0x1f` and `1_000`, so a typo became a valid but different port or metric. Those
# stay strings here and get the field's own error; a leading zero (octal in YAML 1.1, decimal
# in YAML 1.2) is an issue of its own (`_load`).
_DECIMAL = re.compile(r"[-+]?[0-9]+")
_LEADING_ZERO = re.compile(r"[-+]?0[0-9]+")


class _Loader(_SafeLoader):  # type: ignore[misc,valid-type]
    yaml_implicit_resolvers: ClassVar[dict[str, list[tuple[str, re.Pattern[str]]]]] = {
        first: [(tag, rx) for tag, rx in resolvers if tag != _INT]
        for first, resolvers in _SafeLoader.yaml_implicit_resolvers.items()}

    def construct_decimal(self, node: yaml.ScalarNode) -> int:
        text = self.construct_scalar(node)
        if not _DECIMAL.fullmatch(text):  # an explicit `!!int 0x1f`
            raise ValueError("an integer is plain decimal digits")
        return int(text)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        # A scalar YAML resolves to a type its value does not fit (an integer of 5,000
        # digits, a date in month 13) raises ValueError: a bad value at this node's line.
        try:
            return super().construct_object(node, deep)
        except ValueError as e:
            value = str(node.value)
            shown = value if len(value) <= 40 else value[:40] + "..."
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {shown!r}: {str(e).partition(';')[0]}",
                node.start_mark) from None


_Loader.add_implicit_resolver(_INT, re.compile(rf"{_DECIMAL.pattern}\Z"), list("-+0123456789"))
_Loader.add_constructor(_INT, _Loader.construct_decimal)


def _check_limits(text: str) -> None:
    """Raise PolicyFileError when the document, aliases expanded, is deeper than MAX_DEPTH or
    has more than MAX_NODES values. Each anchor's expanded size and height are remembered, so
    this is one pass over the events however much the aliases would expand."""
    anchored: dict[str, tuple[int, int]] = {}  # anchor -> (values, height)
    open_: list[list[Any]] = [[None, 0, 0]]  # open collections: [anchor, values, height]

    def refuse(ev: yaml.Event, why: str) -> PolicyFileError:
        line = ev.start_mark.line + 1 if ev.start_mark else None
        return PolicyFileError("policy", [Issue(line, "", f"refused: {why}")])

    for ev in yaml.parse(text, Loader=_SafeLoader):
        if isinstance(ev, yaml.CollectionStartEvent):
            open_.append([ev.anchor, 1, 1])
            continue
        if isinstance(ev, yaml.CollectionEndEvent):
            anchor, size, height = open_.pop()
        elif isinstance(ev, yaml.ScalarEvent):
            anchor, size, height = ev.anchor, 1, 1
        elif isinstance(ev, yaml.AliasEvent):
            assert ev.anchor is not None  # an alias always names its anchor
            if any(c[0] == ev.anchor for c in open_):
                raise refuse(ev, f"alias *{ev.anchor} refers to a node that contains it")
            anchor, (size, height) = None, anchored.get(ev.anchor, (1, 1))
        else:
            continue
        if anchor is not None:
            anchored[anchor] = (size, height)
        parent = open_[-1]
        parent[1] += size
        parent[2] = max(parent[2], height + 1)
        if parent[1] > MAX_NODES:
            raise refuse(ev, f"more than {MAX_NODES} values once YAML aliases are expanded "
                         "(the limit)")
        if parent[2] > MAX_DEPTH:
            raise refuse(ev, f"nested deeper than {MAX_DEPTH} levels (the limit)")


def _load(text: str) -> tuple[Any, dict[Path, int], list[Issue]]:
    """Data, the line of every path, and duplicate-key issues."""
    try:
        size = len(text.encode())
    except UnicodeEncodeError as e:  # a lone surrogate: no UTF-8 file holds one
        raise PolicyFileError("policy", [Issue(None, "", f"character {e.start + 1} is not "
                                                         "Unicode text (a lone surrogate)")]
                              ) from None
    if size > MAX_BYTES:
        raise PolicyFileError("policy", [Issue(None, "", f"the file is {size} bytes; "
                                                         f"the limit is {MAX_BYTES} (1 MiB)")])
    loader = _Loader(text)
    try:
        _check_limits(text)
        node = loader.get_single_node()
        data = None if node is None else loader.construct_document(node)
    except yaml.YAMLError as e:
        if text.lstrip().startswith(("{", "[")):
            try:  # JSON that PyYAML's YAML 1.1 does not take: no line map, but usable
                return json.loads(text), {}, []
            except json.JSONDecodeError as je:
                raise PolicyFileError("policy", [Issue(je.lineno, "", f"bad JSON: {je.msg}")]
                                      ) from None
            except ValueError as ve:  # a number too long to convert
                raise PolicyFileError("policy", [Issue(None, "", f"bad JSON: {ve}".partition(
                    ";")[0])]) from None
            except RecursionError:
                raise PolicyFileError("policy", [Issue(None, "", "refused: nested too deeply")]
                                      ) from None
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        raise PolicyFileError("policy", [Issue(mark.line + 1 if mark else None, "",
                                               f"bad YAML: {problem}")]) from None
    finally:
        loader.dispose()
    lines: dict[Path, int] = {}
    dups: list[Issue] = []

    def walk(n: yaml.Node, path: Path) -> None:
        lines[path] = n.start_mark.line + 1
        if n.tag == _INT and _LEADING_ZERO.fullmatch(n.value):
            dups.append(Issue(n.start_mark.line + 1, _field(path), f"{n.value}: a leading "
                              "zero is octal in YAML 1.1 and decimal elsewhere: write the "
                              "number without it"))
        if isinstance(n, yaml.MappingNode):
            seen: set[Any] = set()
            for k, v in n.value:
                key = k.value
                if key in seen:
                    dups.append(Issue(k.start_mark.line + 1, _field((*path, key)),
                                      f"duplicate key {key!r}"))
                seen.add(key)
                walk(v, (*path, key))
                lines[(*path, key)] = k.start_mark.line + 1
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                walk(v, (*path, i))

    if node is not None:
        walk(node, ())
    return ({} if data is None else data), lines, dups


def _line(lines: dict[Path, int], path: Path) -> int | None:
    for i in range(len(path), -1, -1):
        if path[:i] in lines:
            return lines[path[:i]]
    return None


def parse(text: str, state: MeshState | None = None, source: str = "policy") -> PolicyFile:
    """Parse and validate a policy file; with `state`, names are checked against it too."""
    try:
        data, lines, issues = _load(text)
    except PolicyFileError as e:
        raise PolicyFileError(source, e.issues) from None

    def issue(path: Path, msg: str) -> None:
        issues.append(Issue(_line(lines, path), _field(path), msg))

    if not isinstance(data, dict):
        raise PolicyFileError(source, [Issue(1, "", "expected a mapping with groups, "
                                                    "policies, routes and tests")])
    try:
        f = _FileIn.model_validate(data)
    except ValidationError as e:
        for err in e.errors():
            loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and x.startswith(
                ("function-", "[key]"))))
            msg = err["msg"].removeprefix("Value error, ")
            issue(loc, msg)
        raise PolicyFileError(source, sorted(issues, key=lambda i: i.line or 0)) from None

    _check_names(f, state, issue)
    if issues:
        raise PolicyFileError(source, sorted(issues, key=lambda i: i.line or 0))
    return PolicyFile(
        groups={g: tuple(m) for g, m in f.groups.items()},
        policies=None if f.policies is None else tuple(
            Policy(name=p.name, sources=tuple(p.sources), destinations=tuple(p.destinations),
                   protocol=p.proto, ports=tuple(p.ports), bidirectional=p.bidirectional,
                   enabled=p.enabled, destination_routes=tuple(p.routes),
                   description=p.description,
                   posture=None if p.posture is None else Posture(
                       p.posture.min_agent_version, tuple(p.posture.os)))
            for p in f.policies),
        routes=None if f.routes is None else tuple(
            Route(name=r.name, prefix=r.prefix, router_group=r.routers, metric=r.metric,
                  router_metrics=tuple(sorted(r.router_metrics.items())),
                  masquerade=r.masquerade, enabled=r.enabled)
            for r in f.routes),
        tests=tuple(PolicyTest(t.src, t.dst, t.proto, t.port, t.expect,
                               _line(lines, ("tests", i)))
                    for i, t in enumerate(f.tests)),
    )


class _Names:
    """What a file's names refer to once it applies: its own groups and routes, else
    `state`'s (None: nothing to check against)."""

    def __init__(self, f: _FileIn, state: MeshState | None) -> None:
        self.f, self.state = f, state
        self.groups = {ALL_GROUP, *f.groups, *(state.groups if state else ())}
        self.routes = {r.name for r in f.routes} if f.routes is not None else (
            {r.name for r in state.routes} if state is not None else None)
        self._peers: set[str] | None = None  # every peer's name, read once one is checked

    def _every_peer(self, state: MeshState) -> set[str]:
        if self._peers is None:
            self._peers = {p.name for p in state.peers.values()}
        return self._peers

    def peer_known(self, name: str) -> bool:
        return self.state is None or name in self._every_peer(self.state)

    def members(self, group: str) -> set[str] | None:
        """The names of `group`'s peers once the file applies."""
        if group in self.f.groups:
            return set(self.f.groups[group])
        if self.state is None:
            return None
        if group == ALL_GROUP:
            return self._every_peer(self.state)
        peers = self.state.peers
        return {peers[pid].name for pid in self.state.groups.get(group, ()) if pid in peers}


def _check_names(f: _FileIn, state: MeshState | None,
                 issue: Callable[[Path, str], None]) -> None:
    names = _Names(f, state)

    def peer(path: Path, name: str) -> bool:
        known = names.peer_known(name)
        if not known:
            issue(path, f"unknown peer {name!r}")
        return known

    for g, members in f.groups.items():
        if g == ALL_GROUP:
            issue(("groups", g), f"group {ALL_GROUP!r} is built in (every peer); "
                                 "it cannot be defined")
        for i, m in enumerate(members):
            peer(("groups", g, i), m)
    _check_routes(f, names, peer, issue)
    _check_policies(f, names, issue)
    _check_kept(f, names, issue)
    for i, t in enumerate(f.tests):
        peer(("tests", i, "src"), t.src)
        peer(("tests", i, "dst"), t.dst)
        if t.src == t.dst:
            issue(("tests", i, "dst"), "source and destination are the same peer")


def _not_a_router(peer: str, route: str, group: str) -> str:
    return (f"{peer!r} is not a router of route {route!r} (not in its router group "
            f"{group!r}): a per-router metric is for the route's routers")


def _check_routes(f: _FileIn, names: _Names, peer: Callable[[Path, str], bool],
                  issue: Callable[[Path, str], None]) -> None:
    seen: set[str] = set()
    for i, r in enumerate(f.routes or ()):
        if r.name in seen:
            issue(("routes", i, "name"), f"duplicate route name {r.name!r}")
        seen.add(r.name)
        if r.routers not in names.groups:
            issue(("routes", i, "routers"), f"unknown group {r.routers!r}")
            continue
        routers = names.members(r.routers) if r.router_metrics else None
        for name in r.router_metrics:
            path: Path = ("routes", i, "router_metrics", name)
            if peer(path, name) and routers is not None and name not in routers:
                issue(path, _not_a_router(name, r.name, r.routers))


def _check_policies(f: _FileIn, names: _Names, issue: Callable[[Path, str], None]) -> None:
    seen: set[str] = set()
    for i, p in enumerate(f.policies or ()):
        if p.name in seen:
            issue(("policies", i, "name"), f"duplicate policy name {p.name!r}")
        seen.add(p.name)
        for key in ("sources", "destinations"):
            for j, g in enumerate(getattr(p, key)):
                if g not in names.groups:
                    issue(("policies", i, key, j), f"unknown group {g!r}")
        for j, rname in enumerate(p.routes):
            if names.routes is not None and rname not in names.routes:
                issue(("policies", i, "routes", j), f"unknown route {rname!r}")


def _check_kept(f: _FileIn, names: _Names, issue: Callable[[Path, str], None]) -> None:
    """What `state` keeps (the policies or routes of a file without those sections) must
    still hold with what the file changes: every route a kept policy uses, every per-router
    metric of a kept route on a router of it."""
    state = names.state
    if state is None:
        return
    if f.policies is None and names.routes is not None:
        for p in state.policies:
            for rname in p.destination_routes:
                if rname not in names.routes:
                    issue(("routes",), f"route {rname!r} is used by policy {p.name!r}, which "
                                       "stays (the file has no policies section)")
    if f.routes is None:
        for r in state.routes:
            if r.router_group not in f.groups:
                continue  # membership unchanged: nothing this file does
            routers = names.members(r.router_group) or set()
            for name, _ in r.router_metrics:
                if name not in routers:
                    issue(("groups", r.router_group),
                          f"drops {name!r}, which route {r.name!r} gives a per-router "
                          "metric: take it out of the route's router_metrics first")


# --- tests, export, plan ---------------------------------------------------------------------


@dataclass(frozen=True)
class TestFailure:
    test: PolicyTest
    explanation: Explanation | None
    message: str


def run_tests(state: MeshState, tests: Iterable[PolicyTest]) -> list[TestFailure]:
    """The tests whose expectation the state does not meet (empty = all pass)."""
    failures = []
    for t in tests:
        where = f"line {t.line}: " if t.line is not None else ""
        try:
            ex = explain(state, t.src, t.dst, t.proto, t.port)
        except ValueError as e:
            failures.append(TestFailure(t, None, f"{where}{t}: {e}"))
            continue
        if ex.allowed != (t.expect == "allow"):
            got = "allow" if ex.allowed else "deny"
            failures.append(TestFailure(t, ex, f"{where}{t}, got {got}: {ex.summary()}"))
    return failures


class _Flow(list):
    """A list YAML writes inline: `[a, b]`."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(
    _Flow, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def _ports_out(ports: tuple[PortRange, ...]) -> _Flow:
    return _Flow(p.start if p.start == p.end else str(p) for p in ports)


def export(state: MeshState, tests: Iterable[PolicyTest] = ()) -> str:
    """The state's groups, routes and policies (and `tests`) as a policy file."""
    names = {pid: p.name for pid, p in state.peers.items()}
    doc: dict[str, Any] = {"groups": {
        g: _Flow(sorted(names[m] for m in members if m in names))
        for g, members in sorted(state.groups.items()) if g != ALL_GROUP}}
    routes = []
    for r in state.routes:
        out: dict[str, Any] = {"name": r.name, "prefix": r.prefix, "routers": r.router_group,
                               "metric": r.metric}
        if r.router_metrics:
            out["router_metrics"] = dict(r.router_metrics)
        out["masquerade"] = r.masquerade
        if not r.enabled:
            out["enabled"] = False
        routes.append(out)
    doc["routes"] = routes
    policies = []
    for p in state.policies:
        out = {"name": p.name}
        if p.description:
            out["description"] = p.description
        out["sources"] = _Flow(p.sources)
        if p.destinations:
            out["destinations"] = _Flow(p.destinations)
        out["proto"] = p.protocol
        if p.ports:
            out["ports"] = _ports_out(p.ports)
        if p.bidirectional:
            out["bidirectional"] = True
        if not p.enabled:
            out["enabled"] = False
        if p.destination_routes:
            out["routes"] = _Flow(p.destination_routes)
        if p.posture is not None:
            out["posture"] = {k: v for k, v in (
                ("min_agent_version", p.posture.min_agent_version),
                ("os", _Flow(p.posture.os_families) if p.posture.os_families else None))
                if v is not None}
        policies.append(out)
    doc["policies"] = policies
    tests_out = [{k: v for k, v in (("src", t.src), ("dst", t.dst), ("proto", t.proto),
                                    ("port", t.port), ("expect", t.expect)) if v is not None}
                 for t in tests]
    if tests_out:
        doc["tests"] = tests_out
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)


@dataclass(frozen=True)
class PeerChange:
    peer_id: int
    name: str
    peers_added: int
    peers_removed: int
    rules_added: int
    rules_removed: int
    routes_changed: int
    forward_changed: int


@dataclass(frozen=True)
class Plan:
    policies_added: tuple[str, ...]
    policies_removed: tuple[str, ...]
    policies_changed: tuple[str, ...]
    groups_added: tuple[str, ...]
    groups_removed: tuple[str, ...]
    groups_changed: tuple[str, ...]
    routes_added: tuple[str, ...]
    routes_removed: tuple[str, ...]
    routes_changed: tuple[str, ...]
    peers: tuple[PeerChange, ...]  # peers whose netmap changes, by name

    @property
    def empty(self) -> bool:
        return not any(getattr(self, f) for f in self.__dataclass_fields__)

    def lines(self) -> list[str]:
        out = []
        for kind in ("policies", "groups", "routes"):
            for verb, sign in (("added", "+"), ("removed", "-"), ("changed", "~")):
                out += [f"{sign} {kind[:-1] if kind != 'policies' else 'policy'} {n}"
                        for n in getattr(self, f"{kind}_{verb}")]
        for c in self.peers:
            out.append(f"  netmap of {c.name}: peers +{c.peers_added}/-{c.peers_removed}, "
                       f"inbound rules +{c.rules_added}/-{c.rules_removed}"
                       + (f", routes ~{c.routes_changed}" if c.routes_changed else "")
                       + (f", forward rules ~{c.forward_changed}" if c.forward_changed else ""))
        return out


def _diff_names(old: dict[str, Any], new: dict[str, Any]) -> tuple[tuple[str, ...], ...]:
    return (tuple(sorted(new.keys() - old.keys())), tuple(sorted(old.keys() - new.keys())),
            tuple(sorted(k for k in old.keys() & new.keys() if old[k] != new[k])))


def _peer_change(pid: int, name: str, a: Netmap | None, b: Netmap | None) -> PeerChange:
    empty = Netmap(0, pid, name, "")
    a, b = a or empty, b or empty
    return PeerChange(
        pid, name, len(b.peers.keys() - a.peers.keys()), len(a.peers.keys() - b.peers.keys()),
        len(b.inbound - a.inbound), len(a.inbound - b.inbound),
        len({k for k in a.routes.keys() | b.routes.keys() if a.routes.get(k) != b.routes.get(k)}),
        len(a.forward ^ b.forward))


def plan(old: MeshState, new: MeshState, compiler: PolicyCompiler | None = None) -> Plan:
    """What moving from `old` to `new` changes. `compiler` holds `old` compiled (the hub's):
    it is moved to `new` and back, two incremental changes instead of a full compile of
    `old` (at 550,000 peers 0.3 s of CPU instead of 13), and no pass over the peers when
    `new` shares `old`'s (a policy file changes none)."""
    if compiler is None:
        compiler = PolicyCompiler(old)
    try:
        changed = compiler.apply(mesh_change(old, new))
        after = {pid: compiler.netmaps.get(pid) for pid in changed}
        compiler.apply(mesh_change(new, old))
    except BaseException:
        compiler.update(old)  # however far a change got: back by a whole diff
        raise
    before = {pid: compiler.netmaps.get(pid) for pid in changed}
    def name(pid: int) -> str:
        return (new.peers.get(pid) or old.peers[pid]).name

    groups_old = {g: m for g, m in old.groups.items() if g != ALL_GROUP}
    groups_new = {g: m for g, m in new.groups.items() if g != ALL_GROUP}
    pa, pr, pc = _diff_names({p.name: p for p in old.policies}, {p.name: p for p in new.policies})
    ga, gr, gc = _diff_names(groups_old, groups_new)
    ra, rr, rc = _diff_names({r.name: r for r in old.routes}, {r.name: r for r in new.routes})
    peers = tuple(sorted((_peer_change(pid, name(pid), before.get(pid), after[pid])
                          for pid in changed),
                         key=lambda c: (c.name, c.peer_id)))
    return Plan(pa, pr, pc, ga, gr, gc, ra, rr, rc, peers)
