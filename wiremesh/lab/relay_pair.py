"""Two peers whose networks drop all UDP, talking WireGuard through the relay.

Each peer host runs a real wireguard-go and, next to it, this module as a process
(`python -m wiremesh.lab.relay_pair --server URL ...`) that enrols with a setup key and runs the
agent's `RelayLink`; told a peer's public key on stdin, it answers that peer's loopback
endpoint, which the lab writes into wireguard-go over UAPI. Nothing but TCP to the server
leaves the hosts, so every packet between them crosses the server's embedded relay. The e2e
test and `bench/relay.py` both build on `relay_pair`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from wiremesh.lab.layout import Layout
from wiremesh.lab.mesh import AGENT_METRICS_PORT, MeshLab
from wiremesh.lab.netns import Host, Lab, LabError
from wiremesh.lab.topology import build_mesh
from wiremesh.wg.backend import WgPeerConfig
from wiremesh.wg.keys import generate_private_key, public_key_of
from wiremesh.wg.uapi import WireguardGoBackend

WG_PORT = 51820


@dataclass
class RelayPeer:
    host: Host
    wg: WireguardGoBackend
    proc: subprocess.Popen[str]
    public_key: str
    overlay_ip: str

    def endpoint_for(self, peer_key: str) -> str:
        """Ask the peer's RelayLink for `peer_key`'s loopback endpoint."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(peer_key + "\n")
        self.proc.stdin.flush()
        endpoint: str = _line(self.proc, self.host)["endpoint"]
        return endpoint

    def relay_through(self, other: RelayPeer) -> None:
        """Point wireguard-go's peer `other` at the relay link."""
        self.wg.set_peers([WgPeerConfig(other.public_key, (f"{other.overlay_ip}/32",),
                                        self.endpoint_for(other.public_key))], [])


def _line(proc: subprocess.Popen[str], host: Host) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise LabError(f"relay peer on {host.name} exited ({proc.wait()}); see its log")
    msg: dict[str, Any] = json.loads(line)
    return msg


def start_peer(mesh: MeshLab, host: Host, ifname: str, setup_key: str) -> RelayPeer:
    host.block_udp()
    private = generate_private_key()
    wg = WireguardGoBackend(ifname, netns=host.ns)
    wg.set_device(private, WG_PORT)
    key_file = mesh.lab.log_dir / f"{host.name}.key"
    key_file.write_text(private + "\n")
    key_file.chmod(0o600)
    log = open(mesh.log(f"relay-{host.name}"), "ab")  # noqa: SIM115 - owned by the child
    try:
        proc = subprocess.Popen(
            host.cmd([sys.executable, "-m", "wiremesh.lab.relay_pair", "--server", mesh.url,
                      "--setup-key", setup_key, "--name", host.name,
                      "--private-key-file", str(key_file),
                      "--ca-file", str(mesh.tls.ca_file)]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
            start_new_session=True)
    finally:
        log.close()
    host.procs.append(proc)
    got = _line(proc, host)
    overlay = got["overlay_ip"]
    host.run(["ip", "addr", "add", f"{overlay}/{got['overlay_prefix_len']}", "dev", ifname])
    host.run(["ip", "link", "set", ifname, "up"])
    return RelayPeer(host, wg, proc, public_key_of(private), overlay)


@contextlib.contextmanager
def relay_pair(lab: Lab) -> Iterator[tuple[MeshLab, RelayPeer, RelayPeer]]:
    """A server (embedded relay) and two UDP-blocked peers relayed to each other."""
    mesh = build_mesh(lab, Layout.public([]))
    a_host, b_host = mesh.topo.public_host("a"), mesh.topo.public_host("b")
    mesh.start_server()
    key = mesh.admin("keys", "create", "relay-lab", "--reusable", "--usage-limit", "2")["key"]
    peers = []
    try:
        for i, h in enumerate((a_host, b_host), 1):
            peers.append(start_peer(mesh, h, lab.name(f"w{i}"), key))
        a, b = peers
        a.relay_through(b)
        b.relay_through(a)
        yield mesh, a, b
    finally:
        for p in peers:
            p.wg.close()


# --- the process inside each peer's namespace ----------------------------------------------


async def _serve(args: argparse.Namespace, out: IO[str]) -> None:
    from prometheus_client import start_http_server

    from wiremesh.agent import metrics
    from wiremesh.agent.client import enroll
    from wiremesh.agent.connection import Trust
    from wiremesh.agent.relay_link import RelayLink, relay_urls

    private = Path(args.private_key_file).read_text().strip()
    trust = Trust(args.ca_file)
    got = await enroll(args.server, {"setup_key": args.setup_key, "hostname": args.name,
                                     "public_key": public_key_of(private),
                                     "listen_port": WG_PORT, "endpoints": []}, trust)
    link = RelayLink(relay_urls(args.server, ["/api/v1/relay"]), got["token"], WG_PORT,
                     verify=trust.verify())
    metrics.RELAY.link = link
    start_http_server(AGENT_METRICS_PORT, addr="127.0.0.1")
    print(json.dumps(got), file=out, flush=True)
    runner = asyncio.create_task(link.run())
    while line := (await asyncio.to_thread(sys.stdin.readline)).strip():
        print(json.dumps({"endpoint": link.endpoint(line)}), file=out, flush=True)
    await link.close()
    await runner


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m wiremesh.lab.relay_pair")
    p.add_argument("--server", required=True)
    p.add_argument("--setup-key", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--private-key-file", required=True)
    p.add_argument("--ca-file", required=True)
    asyncio.run(_serve(p.parse_args(), sys.stdout))


if __name__ == "__main__":
    main()
