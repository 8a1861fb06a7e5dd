"""nftables guard: handshake initiations reach wireguard-go only from installed peers' endpoints.

The tap is passive, so without this every stranger's initiation would also land in
wireguard-go, which spends a DH on each before finding the key unknown - and a flood pushes it
into its "under load" mode, where it answers even known peers with cookie replies and their
handshakes complete only after the 5 s retry. With the guard, wireguard-go never sees an
initiation the gateway has not admitted: the packet tap sits before netfilter, so the gateway
still reads every initiation; only the copy for wireguard-go is dropped. Handshake responses,
cookies and data packets are not filtered. A peer that roams sends its next rekey initiation
from a new endpoint: the gateway sees it, moves the set element, and the peer's retry passes.

The table lives in the gateway's own network namespace and is removed on exit.
"""

from __future__ import annotations

import subprocess
from collections import Counter

from wiremesh.core.wire import endpoint_host_port
from wiremesh.gateway.noise import INITIATION_SIZE, MESSAGE_INITIATION

TABLE = "wiremesh_gateway"


class GuardError(RuntimeError):
    pass


def render_table(port: int) -> str:
    """The whole table, replacing any leftover of a previous run in one transaction."""
    match = (f"udp dport {port} udp length {8 + INITIATION_SIZE} "
             f"@th,64,8 {MESSAGE_INITIATION}")
    return f"""table inet {TABLE} {{}}
delete table inet {TABLE}
table inet {TABLE} {{
  set peers4 {{ type ipv4_addr . inet_service; }}
  set peers6 {{ type ipv6_addr . inet_service; }}
  chain input {{
    type filter hook input priority -10; policy accept;
    {match} ip saddr . udp sport @peers4 accept
    {match} ip6 saddr . udp sport @peers6 accept
    {match} counter drop
  }}
}}
"""


def _element(endpoint: str) -> tuple[str, str]:
    """'198.51.100.7:4000' or '[fd00::7]:4000' -> (set name, nft element). Endpoints come
    from WireGuard peer configs, which hold them in canonical form (core.wire)."""
    host, port = endpoint_host_port(endpoint)
    if port is None:
        raise GuardError(f"endpoint {endpoint!r} has no port")
    return ("peers6" if ":" in host else "peers4"), f"{host} . {port}"


def render_update(add: list[str], remove: list[str]) -> str:
    lines = []
    for verb, endpoints in (("delete", remove), ("add", add)):
        for endpoint in endpoints:
            name, elem = _element(endpoint)
            lines.append(f"{verb} element inet {TABLE} {name} {{ {elem} }}")
    return "\n".join(lines) + "\n"


def _nft(script: str) -> None:
    res = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True,
                         timeout=30)
    if res.returncode != 0:
        raise GuardError(f"nft failed: {res.stderr.strip()[:500]}")


class HandshakeGuard:
    def __init__(self, port: int) -> None:
        _nft(render_table(port))
        # Several peers behind one NAT mapping would share an endpoint: count, not set.
        self._present: Counter[str] = Counter()

    def update(self, add: list[str], remove: list[str]) -> None:
        """One nft transaction; deletes only elements it added (nft fails on absent ones)."""
        gone = []
        for endpoint in remove:
            if self._present[endpoint] > 0:
                self._present[endpoint] -= 1
                if self._present[endpoint] == 0:
                    del self._present[endpoint]
                    gone.append(endpoint)
        new = []
        for endpoint in add:
            if self._present[endpoint] == 0:
                new.append(endpoint)
            self._present[endpoint] += 1
        revived = set(gone) & set(new)
        gone = [e for e in gone if e not in revived]
        new = [e for e in new if e not in revived]
        if gone or new:
            _nft(render_update(new, gone))

    def close(self) -> None:
        _nft(f"delete table inet {TABLE}\n")
