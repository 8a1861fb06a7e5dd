"""Userspace WireGuard (wireguard-go) driven over its UAPI unix socket.

The text protocol lets thousands of peer changes go in one `set=1` write, which is what the
agent's diff apply and the JIT gateway's batched installs rely on.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from wiremesh.wg.backend import WgDeviceStatus, WgError, WgPeerConfig, WgPeerStatus
from wiremesh.wg.keys import hex_to_key, key_to_hex

SOCKET_DIR = Path(os.environ.get("WIREMESH_WG_SOCKET_DIR", "/var/run/wireguard"))


def render_set(
    upsert: list[WgPeerConfig],
    remove: list[str],
    *,
    private_key: str | None = None,
    listen_port: int | None = None,
    fwmark: int | None = None,
    replace_all: bool = False,
) -> str:
    """The body of one UAPI `set=1` request (pure; tested without a device). Keys go through
    the canonical key check (key_to_hex) and peers are WgPeerConfig, checked when made, so
    no raw text reaches the socket."""
    lines = ["set=1"]
    if private_key is not None:
        lines.append(f"private_key={key_to_hex(private_key)}")
    if listen_port is not None:
        if isinstance(listen_port, bool) or not isinstance(listen_port, int) \
                or not 0 <= listen_port <= 65535:
            raise WgError(f"refusing listen port {listen_port!r}: not 0..65535")
        lines.append(f"listen_port={listen_port}")
    if fwmark is not None:
        if isinstance(fwmark, bool) or not isinstance(fwmark, int) \
                or not 0 <= fwmark <= 0xFFFFFFFF:
            raise WgError(f"refusing fwmark {fwmark!r}: not 0..2^32-1")
        lines.append(f"fwmark={fwmark}")
    if replace_all:
        lines.append("replace_peers=true")
    for key in remove:
        lines += [f"public_key={key_to_hex(key)}", "remove=true"]
    for p in upsert:
        if not isinstance(p, WgPeerConfig):
            raise WgError(f"refusing peer {p!r}: not a WgPeerConfig")
        lines.append(f"public_key={key_to_hex(p.public_key)}")
        if p.endpoint:
            lines.append(f"endpoint={p.endpoint}")
        lines.append(f"persistent_keepalive_interval={p.persistent_keepalive}")
        lines.append("replace_allowed_ips=true")
        lines += [f"allowed_ip={ip}" for ip in p.allowed_ips]
    return "\n".join(lines) + "\n\n"


def parse_get(text: str) -> WgDeviceStatus:
    """Parse a UAPI `get=1` answer (pure)."""
    dev = WgDeviceStatus(public_key=None, listen_port=0, peers={})
    cur: WgPeerStatus | None = None
    hs_sec = 0
    for line in text.splitlines():
        if not line or "=" not in line:
            continue
        k, v = line.split("=", 1)
        if k == "errno":
            if v != "0":
                raise WgError(f"UAPI get failed: errno={v}")
        elif k == "listen_port" and cur is None:
            dev.listen_port = int(v)
        elif k == "public_key":
            cur = WgPeerStatus(public_key=hex_to_key(v))
            dev.peers[cur.public_key] = cur
        elif cur is None:
            continue
        elif k == "endpoint":
            cur.endpoint = v
        elif k == "allowed_ip":
            cur.allowed_ips.append(v)
        elif k == "last_handshake_time_sec":
            hs_sec = int(v)
        elif k == "last_handshake_time_nsec":
            cur.last_handshake = hs_sec + int(v) / 1e9 if hs_sec else 0.0
        elif k == "rx_bytes":
            cur.rx_bytes = int(v)
        elif k == "tx_bytes":
            cur.tx_bytes = int(v)
        elif k == "persistent_keepalive_interval":
            cur.persistent_keepalive = int(v)
    return dev


class UapiClient:
    """Talks to an existing UAPI socket."""

    def __init__(self, ifname: str, socket_dir: Path = SOCKET_DIR) -> None:
        self.ifname = ifname
        self.path = socket_dir / f"{ifname}.sock"

    def _request(self, body: str, timeout: float = 10.0) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            try:
                s.connect(str(self.path))
            except OSError as e:
                raise WgError(f"cannot reach WireGuard UAPI socket {self.path}: {e}") from None
            s.sendall(body.encode())
            buf = bytearray()
            # The answer ends with an empty line; the socket stays open for the next request.
            while not buf.endswith(b"\n\n"):
                b = s.recv(1 << 20)
                if not b:
                    break
                buf += b
        return buf.decode()

    def accepts(self) -> bool:
        """Whether a UAPI server listens on the socket (a connection that sends nothing)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(str(self.path))
            except OSError:
                return False
        return True

    def set(self, body: str) -> None:
        answer = self._request(body)
        for line in answer.splitlines():
            if line.startswith("errno=") and line != "errno=0":
                raise WgError(f"UAPI set on {self.ifname} failed: {line}")

    def get(self) -> WgDeviceStatus:
        return parse_get(self._request("get=1\n\n"))


def _wireguard_go_binary() -> str:
    path = shutil.which("wireguard-go")
    if not path:
        raise WgError("wireguard-go not found; install the Debian package 'wireguard-go'")
    return path


class WireguardGoBackend:
    """Runs a wireguard-go process for one interface in the current network namespace."""

    def __init__(self, ifname: str, socket_dir: Path = SOCKET_DIR, start_timeout: float = 10.0,
                 netns: str | None = None):
        """`netns`: start the process in that named network namespace instead of ours."""
        if len(ifname) > 15:
            raise WgError(f"interface name {ifname!r} is longer than 15 characters")
        self.ifname = ifname
        self.client = UapiClient(ifname, socket_dir)
        env = dict(os.environ, WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD="1")
        if self.client.path.exists():
            # A leftover from a crashed run would shadow the new process's socket.
            self.client.path.unlink()
        in_ns = ["ip", "netns", "exec", netns] if netns else []
        self.proc = subprocess.Popen(
            [*in_ns, _wireguard_go_binary(), "-f", ifname],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + start_timeout
        # The socket file appears at bind(), a moment before listen(): wait for an accept.
        while not self.client.accepts():
            if self.proc.poll() is not None:
                raise WgError(f"wireguard-go for {ifname} exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                self.close()
                raise WgError(f"wireguard-go for {ifname} did not open its UAPI socket")
            time.sleep(0.01)

    def set_device(self, private_key: str, listen_port: int, fwmark: int = 0) -> None:
        self.client.set(render_set([], [], private_key=private_key, listen_port=listen_port,
                                   fwmark=fwmark))

    def set_peers(
        self, upsert: list[WgPeerConfig], remove: list[str], replace_all: bool = False
    ) -> None:
        if upsert or remove or replace_all:
            self.client.set(render_set(upsert, remove, replace_all=replace_all))

    def status(self) -> WgDeviceStatus:
        return self.client.get()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.client.path.unlink(missing_ok=True)
