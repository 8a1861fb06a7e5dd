"""iperf3 between lab hosts: TCP throughput over the overlay or a plain WireGuard pair."""

from __future__ import annotations

import json
import subprocess

from wiremesh.lab.mesh import wait_until
from wiremesh.lab.netns import Host, LabError

PORT = 5201


def serve(host: Host, bind: str, port: int = PORT) -> subprocess.Popen:
    """An iperf3 server on `bind`:`port` inside `host` (stopped with the lab)."""
    proc = host.popen(["iperf3", "--server", "--bind", bind, "--port", str(port)],
                      log=host.lab.log_dir / f"iperf3-{host.name}.log")
    wait_until(lambda: _listening(host, port, proc), 10, f"iperf3 on {host.name}")
    return proc


def _listening(host: Host, port: int, proc: subprocess.Popen) -> bool:
    if proc.poll() is not None:
        raise LabError(f"iperf3 server on {host.name} exited with {proc.returncode}")
    res = host.run(["ss", "-Hltn", f"sport = :{port}"], check=False)
    return bool(res.stdout.strip())


def tcp_mbit(client: Host, server_ip: str, seconds: float, port: int = PORT,
             omit_s: int = 1) -> float:
    """Receiver-side TCP goodput from `client` to an iperf3 server at `server_ip`, in Mbit/s;
    the first `omit_s` seconds (slow start) are left out."""
    res = client.run(["iperf3", "--client", server_ip, "--port", str(port), "--json",
                      "--time", str(seconds), "--omit", str(omit_s)],
                     check=False, timeout=seconds + omit_s + 30)
    try:
        out = json.loads(res.stdout)
    except json.JSONDecodeError:
        raise LabError(f"iperf3 {client.name} -> {server_ip} failed: "
                       f"{res.stderr.strip() or res.stdout.strip()}") from None
    if "error" in out:
        raise LabError(f"iperf3 {client.name} -> {server_ip}: {out['error']}")
    return float(out["end"]["sum_received"]["bits_per_second"]) / 1e6
