"""The processes of a lab mesh: a real server and real agents on hosts of a `Topology`.

Admin calls go through the real CLI run inside the server's namespace, so the lab exercises
exactly what an operator would type.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client.parser import text_string_to_metric_families

from wiremesh.agent.state import private_key_path
from wiremesh.lab.netns import Host, Lab, LabError
from wiremesh.lab.pki import ServerCert
from wiremesh.wg.backend import WgDeviceStatus
from wiremesh.wg.keys import public_key_of
from wiremesh.wg.uapi import UapiClient

if TYPE_CHECKING:
    from rich.console import Console

    from wiremesh.lab.topology import Topology

SERVER_PORT = 8080
AGENT_METRICS_PORT = 9101  # on each agent host's own loopback


def wait_until(pred: Callable[[], bool], timeout: float, what: str,
               interval: float = 0.05) -> None:
    """Poll `pred` until true; raises LabError naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def wiremesh_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "wiremesh", *args]


def host_metrics(host: Host, url: str = f"http://127.0.0.1:{AGENT_METRICS_PORT}/metrics",
                 ca_file: Path | None = None) -> dict[str, float]:
    """Prometheus samples read at `url` from inside `host` (default: the agent's), as
    name{labels} -> value; samples without labels under their bare name."""
    body = host.http_get(url, ca_file=ca_file) or ""
    out = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


@dataclass
class LabAgent:
    name: str
    host: Host
    ifname: str
    state_dir: Path
    proc: subprocess.Popen | None = None

    @property
    def overlay_ip(self) -> str:
        """From the agent's saved state (no round trip to the server)."""
        state = json.loads((self.state_dir / "state.json").read_text())
        ip: str = state["config"]["overlay_ip"]
        return ip

    def metrics(self) -> dict[str, float]:
        """The agent's Prometheus samples (name -> value), read inside its namespace."""
        return host_metrics(self.host)

    @property
    def public_key(self) -> str | None:
        """Its WireGuard public key, once it has made its key pair."""
        try:
            return public_key_of(private_key_path(self.state_dir).read_text().strip())
        except OSError:
            return None

    def wg_status(self) -> WgDeviceStatus | None:
        """The agent's WireGuard device over UAPI; None while it is not up."""
        try:
            return UapiClient(self.ifname).get()
        except Exception:
            return None

    def wg_peers(self) -> dict[str, Any]:
        status = self.wg_status()
        return status.peers if status else {}


@dataclass
class MeshLab:
    """The server speaks HTTPS with a certificate from a throw-away CA (`tls`); every agent
    and admin call verifies it with that CA, as a real deployment would."""

    topo: Topology
    server: Host
    tls: ServerCert
    agents: dict[str, LabAgent] = field(default_factory=dict)
    # Public hosts for relays; `tls` is valid for their addresses too, so a relay can serve it.
    relays: dict[str, Host] = field(default_factory=dict)
    server_proc: subprocess.Popen | None = None
    admin_token: str = ""
    server_args: list[str] = field(default_factory=list)  # more `wiremesh server` options

    @property
    def lab(self) -> Lab:
        return self.topo.lab

    @property
    def url(self) -> str:
        return f"https://{self.server.ip}:{SERVER_PORT}"

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.lab.log_dir}/server.db"

    def log(self, name: str) -> Path:
        return self.lab.log_dir / f"{name}.log"

    # --- server -------------------------------------------------------------------------------

    def start_server(self, timeout: float = 30) -> None:
        token_file = self.lab.log_dir / "admin.token"
        self.server_proc = self.server.popen(
            wiremesh_cmd("server", "--db", self.db_url,
                         "--listen", f"{self.server.ip}:{SERVER_PORT}",
                         "--admin-token-file", str(token_file),
                         "--tls-cert", str(self.tls.cert_file),
                         "--tls-key", str(self.tls.key_file), *self.server_args),
            log=self.log("server"))
        wait_until(lambda: self._server_healthy(), timeout, "the server to answer")
        if not self.admin_token:
            self.admin_token = token_file.read_text().strip()

    def _server_healthy(self) -> bool:
        if self.server_proc is not None and self.server_proc.poll() is not None:
            raise LabError(f"server exited: {self.tail('server')}")
        return self.server.http_get(f"{self.url}/healthz", timeout_s=1.0,
                                    ca_file=self.tls.ca_file) is not None

    def stop_server(self) -> None:
        stop(self.server_proc)
        self.server_proc = None

    def admin(self, *args: str) -> Any:
        """Run `wiremesh ARGS --json` against the server; returns the parsed JSON."""
        res = self.server.run(
            wiremesh_cmd(*args, "--server", self.url, "--token", self.admin_token,
                         "--ca-file", str(self.tls.ca_file), "--json"),
            check=False, timeout=60)
        if res.returncode != 0:
            raise LabError(f"wiremesh {' '.join(args)} failed: {res.stderr.strip()}")
        return json.loads(res.stdout.strip().splitlines()[-1]) if res.stdout.strip() else None

    # --- agents -------------------------------------------------------------------------------

    def add_agent(self, name: str, host: Host) -> LabAgent:
        """An agent (not started yet) that will run on `host`."""
        idx = len(self.agents) + 1
        a = LabAgent(name, host, self.lab.name(f"w{idx}"), self.lab.log_dir / f"state-{name}")
        self.agents[name] = a
        return a

    def start_agent(self, a: LabAgent, setup_key: str | None = None,
                    extra: Sequence[str] = (), login: bool = False) -> None:
        """`wiremesh up` with a setup key or as a user (`login`: the agent prints the URL
        and code to its log), with `extra` options (first start), or `wiremesh agent` (saved
        state)."""
        common = ["--state-dir", str(a.state_dir), "--wg-backend", "userspace",
                  "--metrics-listen", f"127.0.0.1:{AGENT_METRICS_PORT}"]
        if setup_key or login:
            how = ["--login"] if login else ["--setup-key", str(setup_key)]
            # Names for peers go into the host's own resolv.conf (see netns.NETNS_ETC).
            argv = wiremesh_cmd("up", "--server", self.url, *how,
                                "--ca-file", str(self.tls.ca_file),
                                "--name", a.name, "--interface", a.ifname,
                                "--resolv-conf", str(a.host.resolv_conf), *extra, *common)
        else:
            argv = wiremesh_cmd("agent", *common)
        a.proc = a.host.popen(argv, log=self.log(a.name))

    def start(self, key_name: str) -> None:
        """The server, then every agent enrolling with one setup key."""
        self.start_server()
        self.start_agents(self.create_setup_key(key_name))

    def create_setup_key(self, name: str) -> str:
        """A reusable setup key good for every agent of the lab."""
        key = self.admin("keys", "create", name, "--reusable",
                         "--usage-limit", str(max(1, len(self.agents))))["key"]
        return str(key)

    def start_agents(self, setup_key: str) -> None:
        for a in self.agents.values():
            self.start_agent(a, setup_key)

    def stop_agent(self, a: LabAgent) -> None:
        stop(a.proc)
        a.proc = None

    def agent_alive(self, a: LabAgent) -> bool:
        if a.proc is not None and a.proc.poll() is not None:
            raise LabError(f"agent {a.name} exited ({a.proc.returncode}): {self.tail(a.name)}")
        return True

    def wait_agents_configured(self, agents: Iterable[LabAgent], expect_peers: int,
                               timeout: float = 60) -> None:
        agents = list(agents)

        def ready() -> bool:
            return all(self.agent_alive(a) and len(a.wg_peers()) >= expect_peers
                       for a in agents)

        wait_until(ready, timeout, f"agents to configure {expect_peers} WireGuard peers")

    def tail(self, name: str, lines: int = 15) -> str:
        try:
            return "\n".join(self.log(name).read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def print_logs(self, console: Console) -> None:
        """The last lines of the server's and every agent's log (after a failure)."""
        for name in ["server", *self.agents]:
            console.print(f"[dim]--- {name} log ---\n{self.tail(name)}[/]", highlight=False)


def stop(proc: subprocess.Popen | None, timeout: float = 10) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def ping_pairs(pairs: list[tuple[Host, str]], deadline_s: float,
               per_ping_s: float = 1.0) -> dict[tuple[str, str], float | None]:
    """Ping every (host, address) concurrently, retrying failures until the deadline.
    Returns the round-trip time in ms per (host name, address), None where it never answered."""
    result: dict[tuple[str, str], float | None] = {(h.name, ip): None for h, ip in pairs}
    pending = list(pairs)
    deadline = time.monotonic() + deadline_s
    while pending:
        procs = [(h, ip, subprocess.Popen(
            h.cmd(["ping", "-n", "-c", "1", "-W", str(per_ping_s), ip]),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)) for h, ip in pending]
        pending = []
        for h, ip, p in procs:
            out, _ = p.communicate()
            if p.returncode == 0:
                result[(h.name, ip)] = _rtt_ms(out)
            else:
                pending.append((h, ip))
        if pending and time.monotonic() > deadline:
            break
    return result


def _rtt_ms(ping_output: str) -> float:
    for line in ping_output.splitlines():
        if "time=" in line:
            return float(line.split("time=")[1].split()[0])
    return 0.0
