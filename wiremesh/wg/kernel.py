"""Kernel WireGuard driven over generic netlink (pyroute2), for machines with the module.

The netlink API takes one peer per message, so unlike UAPI a batch is several messages; the
agent's diff keeps batches small and each message is itself atomic per peer.
"""

from __future__ import annotations

from typing import Any

from pyroute2 import IPRoute, WireGuard
from pyroute2.netlink.exceptions import NetlinkError

from wiremesh.core.wire import endpoint_host_port
from wiremesh.wg.backend import WgDeviceStatus, WgError, WgPeerConfig, WgPeerStatus


def kernel_available() -> bool:
    """True when this namespace can create a kernel WireGuard link."""
    probe = "wmprobe0"
    with IPRoute() as ipr:
        try:
            ipr.link("add", ifname=probe, kind="wireguard")
        except NetlinkError:
            return False
        ipr.link("del", ifname=probe)
    return True


def _peer_msg(p: WgPeerConfig) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "public_key": p.public_key,
        "persistent_keepalive": p.persistent_keepalive,
        "replace_allowed_ips": True,
        "allowed_ips": list(p.allowed_ips),
    }
    if p.endpoint:
        msg["endpoint_addr"], msg["endpoint_port"] = endpoint_host_port(p.endpoint)
    return msg


class KernelBackend:
    def __init__(self, ifname: str) -> None:
        self.ifname = ifname
        with IPRoute() as ipr:
            if not ipr.link_lookup(ifname=ifname):
                try:
                    ipr.link("add", ifname=ifname, kind="wireguard")
                except NetlinkError as e:
                    raise WgError(f"cannot create kernel WireGuard link {ifname}: {e}") from None
        self.wg = WireGuard()

    def set_device(self, private_key: str, listen_port: int, fwmark: int = 0) -> None:
        self.wg.set(self.ifname, private_key=private_key, listen_port=listen_port,
                    fwmark=fwmark)

    def set_peers(
        self, upsert: list[WgPeerConfig], remove: list[str], replace_all: bool = False
    ) -> None:
        if replace_all:
            keep = {p.public_key for p in upsert}
            remove = [k for k in self.status().peers if k not in keep]
        for key in remove:
            self.wg.set(self.ifname, peer={"public_key": key, "remove": True})
        for p in upsert:
            self.wg.set(self.ifname, peer=_peer_msg(p))

    def status(self) -> WgDeviceStatus:
        dev = WgDeviceStatus(public_key=None, listen_port=0, peers={})
        for msg in self.wg.info(self.ifname):
            dev.listen_port = msg.get_attr("WGDEVICE_A_LISTEN_PORT") or dev.listen_port
            for peer in msg.get_attr("WGDEVICE_A_PEERS") or []:
                key = peer.get_attr("WGPEER_A_PUBLIC_KEY")["value"].decode()
                ep = peer.get_attr("WGPEER_A_ENDPOINT")
                hs = peer.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME") or {}
                dev.peers[key] = WgPeerStatus(
                    public_key=key,
                    endpoint=f"{ep['addr']}:{ep['port']}" if ep else None,
                    allowed_ips=[
                        f"{a.get_attr('WGALLOWEDIP_A_IPADDR')}/"
                        f"{a.get_attr('WGALLOWEDIP_A_CIDR_MASK')}"
                        for a in peer.get_attr("WGPEER_A_ALLOWEDIPS") or []
                    ],
                    last_handshake=float(hs.get("tv_sec", 0)) + hs.get("tv_nsec", 0) / 1e9,
                    rx_bytes=peer.get_attr("WGPEER_A_RX_BYTES") or 0,
                    tx_bytes=peer.get_attr("WGPEER_A_TX_BYTES") or 0,
                    persistent_keepalive=peer.get_attr(
                        "WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") or 0,
                )
        return dev

    def close(self) -> None:
        self.wg.close()
        with IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=self.ifname)
            if idx:
                ipr.link("del", index=idx[0])
