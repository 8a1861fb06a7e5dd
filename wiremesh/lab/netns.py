"""Throw-away hosts in network namespaces, wired by bridges that live in namespaces too.

Nothing here touches the root namespace's links, routes or firewall: every switch is a bridge
inside a namespace of its own. Every name starts with the run's prefix (`wm` + random id) so
`wiremesh lab clean` can find leftovers of a crashed run, and teardown kills every process in
every namespace before deleting it (that includes wireguard-go children of agents).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Lab address space, DESIGN.md section 7: nothing else is ever configured.
ALLOWED_NETS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24",
        "100.64.0.0/10", "198.18.0.0/15", "fd00::/8",
    )
)


NO_UDP_TABLE = "wm_no_udp"
# `ip netns exec NS` mounts the files in NETNS_ETC/NS over /etc: a host's own resolv.conf,
# which its agent manages, so no lab process ever touches the machine's /etc/resolv.conf.
NETNS_ETC = Path("/etc/netns")


class LabError(RuntimeError):
    pass


def check_lab_address(addr: str) -> None:
    net = ipaddress.ip_interface(addr).network
    if not any(net.network_address in a and net.broadcast_address in a for a in ALLOWED_NETS):
        raise LabError(f"{addr} is outside the lab's address ranges")


def missing_requirements() -> list[str]:
    """What this machine lacks to run a lab (empty = ready)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root")
    for tool in ("ip", "wireguard-go", "nft", "ping"):
        if not shutil.which(tool):
            missing.append(tool)
    if not Path("/dev/net/tun").exists():
        missing.append("/dev/net/tun")
    return missing


def run(cmd: Sequence[str], check: bool = True,
        timeout: float = 30) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise LabError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def new_run_id() -> str:
    return "wm" + secrets.token_hex(2)


@dataclass
class Host:
    lab: Lab
    name: str
    ns: str
    addresses: dict[str, str] = field(default_factory=dict)  # ifname -> address/prefix
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def resolv_conf(self) -> Path:
        return NETNS_ETC / self.ns / "resolv.conf"

    @property
    def ip(self) -> str:
        """The first underlay address (without prefix length)."""
        first = next(iter(self.addresses.values()))
        return first.split("/")[0]

    def cmd(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *argv]

    def run(self, argv: Sequence[str], check: bool = True,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return run(self.cmd(argv), check=check, timeout=timeout)

    def popen(self, argv: Sequence[str], log: Path | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen:
        out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - owned by the child
        try:
            p = subprocess.Popen(
                self.cmd(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})}, start_new_session=True,
            )
        finally:
            if log:
                out.close()  # type: ignore[union-attr]
        self.procs.append(p)
        return p

    def http_get(self, url: str, timeout_s: float = 2.0,
                 ca_file: Path | None = None) -> str | None:
        """GET `url` from inside this host's namespace (https verified with `ca_file`, else
        the system's CAs); the body, or None on any failure."""
        code = ("import ssl,sys,urllib.request;sys.stdout.write(urllib.request.urlopen("
                "sys.argv[1],timeout=float(sys.argv[2]),context=ssl.create_default_context("
                "cafile=sys.argv[3] or None)).read().decode())")
        res = self.run([sys.executable, "-c", code, url, str(timeout_s), str(ca_file or "")],
                       check=False, timeout=timeout_s + 10)
        return res.stdout if res.returncode == 0 else None

    def block_udp(self) -> None:
        """Drop all UDP in and out except on loopback: a network that lets only TCP through
        (the case the relay covers)."""
        rules = self.lab.log_dir / f"{self.name}-noudp.nft"
        rules.write_text(
            f"table inet {NO_UDP_TABLE} {{\n"
            "  chain out { type filter hook output priority 0; "
            "oif != lo meta l4proto udp counter drop; }\n"
            "  chain in { type filter hook input priority 0; "
            "iif != lo meta l4proto udp counter drop; }\n}\n")
        self.run(["nft", "-f", str(rules)])

    def ping(self, addr: str, count: int = 1, timeout_s: float = 1.0) -> bool:
        res = self.run(["ping", "-n", "-q", "-c", str(count), "-W", str(timeout_s), addr],
                       check=False, timeout=count * timeout_s + 5)
        return res.returncode == 0


@dataclass
class Switch:
    """A bridge in a namespace of its own; hosts plug in with veth pairs."""

    name: str
    ns: str
    bridge: str
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    next_host: int = 1


class Lab:
    def __init__(self, run_id: str | None = None, log_dir: Path | None = None) -> None:
        self.id = run_id or new_run_id()
        self.hosts: dict[str, Host] = {}
        self.switches: dict[str, Switch] = {}
        self.namespaces: list[str] = []
        self._links = 0
        self.log_dir = log_dir or Path(f"/tmp/{self.id}")
        self.log_dir.mkdir(parents=True, exist_ok=True)

    def name(self, suffix: str) -> str:
        n = f"{self.id}{suffix}"
        if len(n) > 15:
            raise LabError(f"name {n!r} is longer than 15 characters")
        return n

    def _add_ns(self, ns: str) -> None:
        run(["ip", "netns", "add", ns])
        self.namespaces.append(ns)
        (NETNS_ETC / ns).mkdir(parents=True, exist_ok=True)
        run(["ip", "-n", ns, "link", "set", "lo", "up"])

    def add_switch(self, name: str, subnet: str) -> Switch:
        check_lab_address(subnet)
        ns = self.name(f"s{name}")
        self._add_ns(ns)
        bridge = self.name(f"br{len(self.switches)}")
        run(["ip", "-n", ns, "link", "add", bridge, "type", "bridge"])
        run(["ip", "-n", ns, "link", "set", bridge, "up"])
        sw = Switch(name, ns, bridge, ipaddress.ip_network(subnet))
        self.switches[name] = sw
        return sw

    def add_host(self, name: str) -> Host:
        ns = self.name(f"-{name}")
        self._add_ns(ns)
        # Hosts forward only where a scenario turns it on (router peers).
        h = Host(self, name, ns)
        self.hosts[name] = h
        return h

    def connect(self, host: Host, switch: Switch, address: str | None = None) -> str:
        """Plug `host` into `switch`; returns the host's address (with prefix length)."""
        if address is None:
            address = f"{switch.network[switch.next_host]}/{switch.network.prefixlen}"
            switch.next_host += 1
        check_lab_address(address)
        self._links += 1
        inner, outer = self.name(f"e{self._links}"), self.name(f"v{self._links}")
        run(["ip", "-n", switch.ns, "link", "add", outer, "type", "veth",
             "peer", "name", inner, "netns", host.ns])
        run(["ip", "-n", switch.ns, "link", "set", outer, "master", switch.bridge, "up"])
        run(["ip", "-n", host.ns, "addr", "add", address, "dev", inner])
        run(["ip", "-n", host.ns, "link", "set", inner, "up"])
        host.addresses[inner] = address
        return address

    def disconnect(self, host: Host, ifname: str) -> None:
        """Unplug one of `host`'s links (deleting one end of a veth deletes both)."""
        run(["ip", "-n", host.ns, "link", "del", ifname])
        del host.addresses[ifname]

    def limit_path_mtu(self, host: Host, switch: Switch, mtu: int) -> None:
        """Make `switch` drop, silently, every frame toward `host` larger than `mtu`: a
        path MTU black hole (a switch port sends no ICMP), as behind a tunnel or PPPoE link
        whose ICMP is filtered."""
        inner = self.link_of(host, switch)
        port = self.name("v" + inner.removeprefix(self.name("e")))
        run(["ip", "-n", switch.ns, "link", "set", port, "mtu", str(mtu)])

    def link_of(self, host: Host, switch: Switch) -> str:
        """The host's interface on `switch`."""
        for ifname, addr in host.addresses.items():
            if ipaddress.ip_interface(addr).network == switch.network:
                return ifname
        raise LabError(f"{host.name} is not on {switch.name}")

    def close(self) -> None:
        for h in self.hosts.values():
            for p in h.procs:
                if p.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for h in self.hosts.values():
            for p in h.procs:
                try:
                    p.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
        for ns in reversed(self.namespaces):
            delete_namespace(ns)
        self.namespaces.clear()
        for sock in Path("/var/run/wireguard").glob(f"{self.id}*.sock"):
            sock.unlink(missing_ok=True)
        if not os.environ.get("WIREMESH_LAB_KEEP_LOGS"):
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def unwind_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so `finally` blocks and context managers tear down what
    this process started (Python's default for SIGTERM ends it without them)."""
    signal.signal(signal.SIGTERM, _interrupt)


def kill_namespace_processes(ns: str) -> None:
    res = run(["ip", "netns", "pids", ns], check=False)
    pids = [int(x) for x in res.stdout.split()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.02)
        pids = [p for p in pids if Path(f"/proc/{p}").exists()]
        if not pids:
            return


def delete_namespace(ns: str) -> None:
    kill_namespace_processes(ns)
    run(["ip", "netns", "del", ns], check=False)
    shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)


def clean_leftovers(prefix: str = "wm") -> list[str]:
    """Remove namespaces (and their processes) and UAPI sockets left by crashed runs."""
    res = run(["ip", "netns", "list"], check=False)
    removed = []
    for line in res.stdout.splitlines():
        ns = line.split()[0] if line.strip() else ""
        if ns.startswith(prefix):
            delete_namespace(ns)
            removed.append(ns)
    for sock in Path("/var/run/wireguard").glob(f"{prefix}*.sock"):
        sock.unlink(missing_ok=True)
        removed.append(str(sock))
    return removed
