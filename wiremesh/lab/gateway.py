"""Lab scaffolding shared by the gateway's end-to-end tests and its benchmark.

A gateway host running the real `wiremesh gateway run` in its namespace, wireguard-go clients
in namespaces of their own, and a packet sender for crafted initiations - all inside a
`wiremesh.lab.netns.Lab`, so teardown removes every namespace and process.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from wiremesh.lab.netns import Host, Lab, LabError
from wiremesh.wg.backend import WgPeerConfig
from wiremesh.wg.keys import generate_private_key, public_key_of, write_private_key
from wiremesh.wg.uapi import WireguardGoBackend

GATEWAY_OVERLAY = "100.64.0.1"
GATEWAY_PORT = 51820
METRICS_PORT = 9586
_FIRST_OVERLAY = int(ipaddress.ip_address("100.64.0.2"))


def overlay_ip(index: int) -> str:
    """The overlay address of known peer number `index` (0-based), inside 100.64.0.0/10."""
    if not 0 <= index < (1 << 22) - 3:
        raise LabError(f"peer index {index} does not fit 100.64.0.0/10")
    return str(ipaddress.ip_address(_FIRST_OVERLAY + index))


@dataclass
class WgClient:
    host: Host
    wg: WireguardGoBackend
    private_key: str
    overlay: str
    gateway_peer: WgPeerConfig

    @property
    def public_key(self) -> str:
        return public_key_of(self.private_key)

    def ping_ms(self, timeout_s: float = 10.0) -> float | None:
        """One echo to the gateway; its round trip includes any handshake it triggered."""
        res = subprocess.run(self.ping_cmd(timeout_s), capture_output=True, text=True,
                             timeout=timeout_s + 5)
        return parse_ping_ms(res.stdout)

    def ping_cmd(self, timeout_s: float = 10.0) -> list[str]:
        return self.host.cmd(["ping", "-n", "-c", "1", "-W", str(timeout_s), GATEWAY_OVERLAY])

    def forget_session(self) -> None:
        """Drop the client's session with the gateway, as if it came back much later."""
        self.wg.set_peers([self.gateway_peer], [self.gateway_peer.public_key])


def parse_ping_ms(output: str) -> float | None:
    m = re.search(r"time=([\d.]+) ms", output)
    return float(m.group(1)) if m else None


def start_client(host: Host, ifname: str, private_key: str, overlay: str,
                 gateway_public: str, gateway_ip: str) -> WgClient:
    wg = WireguardGoBackend(ifname, netns=host.ns)
    wg.set_device(private_key, 0)
    peer = WgPeerConfig(gateway_public, (f"{GATEWAY_OVERLAY}/32",),
                        f"{gateway_ip}:{GATEWAY_PORT}")
    wg.set_peers([peer], [])
    host.run(["ip", "addr", "add", f"{overlay}/10", "dev", ifname])
    host.run(["ip", "link", "set", ifname, "up"])
    return WgClient(host, wg, private_key, overlay, peer)


_SCRAPER = """
import json, sys, urllib.request
for _ in sys.stdin:
    body = urllib.request.urlopen(sys.argv[1], timeout=10).read().decode()
    sys.stdout.write(json.dumps(body) + "\\n")
    sys.stdout.flush()
"""


@dataclass
class GatewayProc:
    host: Host
    proc: subprocess.Popen
    public_key: str
    ifname: str
    log: Path
    _scraper: subprocess.Popen | None = None

    def metrics(self) -> dict[str, float]:
        """Scrape /metrics from inside the gateway's namespace: name{labels} -> value.

        A long-lived helper in the namespace keeps a scrape at a few milliseconds, fine enough
        to time install rates by polling.
        """
        if self._scraper is None:
            url = f"http://127.0.0.1:{METRICS_PORT}/metrics"
            self._scraper = subprocess.Popen(
                self.host.cmd([sys.executable, "-c", _SCRAPER, url]),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self._scraper.stdin and self._scraper.stdout
        self._scraper.stdin.write("\n")
        self._scraper.stdin.flush()
        line = self._scraper.stdout.readline()
        if not line:
            raise LabError("metrics scraper exited (is the gateway serving /metrics?)")
        out: dict[str, float] = {}
        for fam in text_string_to_metric_families(json.loads(line)):
            for s in fam.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return out

    def pids(self) -> dict[str, int]:
        """The gateway's processes: the Python daemon and its wireguard-go."""
        out = {"gateway": self.proc.pid}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # exited while we looked
            if int(fields[1]) == self.proc.pid:
                out["wireguard-go"] = int(stat.parent.name)
        return out

    def wait_metric(self, name: str, minimum: float, timeout_s: float) -> dict[str, float]:
        deadline = time.monotonic() + timeout_s
        while True:
            m = self.metrics()
            if m.get(name, 0.0) >= minimum:
                return m
            if time.monotonic() > deadline:
                raise LabError(f"{name} stayed at {m.get(name)} (< {minimum}) for {timeout_s} s")
            time.sleep(0.1)

    def stop(self) -> None:
        if self._scraper is not None:
            self._scraper.kill()
            self._scraper.wait()
            self._scraper = None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_gateway(lab: Lab, host: Host, db: Path, *extra: str,
                  timeout_s: float = 60.0, key_file: Path | None = None,
                  name: str = "gw") -> GatewayProc:
    """`wiremesh gateway run` in `host`'s namespace; returns once it prints its ready line.
    A new key pair unless `key_file` holds one; `name` tells several gateways of one lab
    apart (interface and log)."""
    if key_file is None:
        key_file = lab.log_dir / f"{name}.key"
        write_private_key(key_file, generate_private_key())
    private = key_file.read_text().strip()
    ifname = lab.name(name)
    log = lab.log_dir / ("gateway.log" if name == "gw" else f"gateway-{name}.log")
    argv = [str(Path(sys.executable).with_name("wiremesh")), "gateway", "run", "--json",
            "--private-key-file", str(key_file), "--db", str(db),
            "--address", f"{GATEWAY_OVERLAY}/10", "--ifname", ifname,
            "--listen-port", str(GATEWAY_PORT),
            "--metrics-listen", f"127.0.0.1:{METRICS_PORT}", *extra]
    proc = host.popen(argv, log=log)
    gw = GatewayProc(host, proc, public_key_of(private), ifname, log)
    deadline = time.monotonic() + timeout_s
    while '"event": "ready"' not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            gw.stop()
            raise LabError(f"gateway did not start: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.05)
    return gw


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def write_import_file(path: Path, keys: list[str], first_index: int = 0) -> None:
    """Known peers `keys` get overlay addresses overlay_ip(first_index + i)."""
    with path.open("w") as f:
        for i, key in enumerate(keys):
            f.write(f"{key} {overlay_ip(first_index + i)}/32\n")


def blast(packets_file: str, dest: str, port: int, pps: float, duration: float,
          sources: str = "") -> None:
    """Send 148-byte packets from `packets_file` round-robin to dest:port at `pps` for
    `duration` s (0 = each packet once), from the comma-separated `sources` addresses.
    Runs inside a lab namespace: `python -c 'from wiremesh.lab.gateway import blast; ...'`.
    """
    data = Path(packets_file).read_bytes()
    packets = [data[i:i + 148] for i in range(0, len(data), 148)]
    socks = []
    for src in (sources.split(",") if sources else [""]):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((src, 0))
        socks.append(s)
    total = len(packets) if duration == 0 else int(pps * duration)
    started_unix = time.time()
    start = time.monotonic()
    for n in range(total):
        if pps > 0:
            lag = start + n / pps - time.monotonic()
            if lag > 0:
                time.sleep(lag)
        socks[n % len(socks)].sendto(packets[n % len(packets)], (dest, port))
    sys.stdout.write(json.dumps({"sent": total, "started_unix": started_unix,
                                 "seconds": time.monotonic() - start}) + "\n")


def blast_cmd(host: Host, packets_file: Path, dest: str, pps: float, duration: float,
              sources: list[str] | None = None) -> list[str]:
    code = ("import sys; from wiremesh.lab.gateway import blast; "
            "blast(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), "
            "float(sys.argv[5]), sys.argv[6])")
    return host.cmd([sys.executable, "-c", code, str(packets_file), dest, str(GATEWAY_PORT),
                     str(pps), str(duration), ",".join(sources or [])])
