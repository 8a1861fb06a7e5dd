"""How the agent and the admin CLI reach the server: which certificates they trust, which
URLs they refuse, and the one-line reason a failed connection gets.

Everything on the control channel is a secret or an order (admin and peer tokens, setup keys,
netmaps that become WireGuard peers and firewall rules), so plain HTTP is refused unless it
never leaves the machine or the operator says `--insecure` knowingly.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

INSECURE_HELP = (
    "Allow plain http:// to a server that is not on this machine and skip certificate "
    "checks on https://. Anyone on the path can then read admin tokens, peer tokens and "
    "setup keys, and forge the netmaps (peers and firewall rules) agents apply."
)
INSECURE_WARNING = (
    "--insecure: the connection to {url} is not authenticated; anyone on the path can read "
    "tokens and setup keys and forge netmaps"
)


class TrustError(ValueError):
    """A server URL or CA file that we refuse to use; the message says why."""


@dataclass(frozen=True)
class Trust:
    """How to verify the server: system CAs (default), a CA file, or not at all."""

    ca_file: str | None = None
    insecure: bool = False

    def check(self, url: str) -> None:
        """Raise TrustError when `url` cannot be used under this trust choice."""
        try:
            parts = urlsplit(url)
            port = parts.port  # ValueError for a port out of range or not a number
        except ValueError as e:  # and for an unclosed IPv6 bracket
            raise TrustError(f"server URL {url!r}: {e}; expected https://HOST[:PORT]"
                             ) from None
        if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
            raise TrustError(f"server URL {url!r}: expected https://HOST[:PORT]")
        if parts.scheme == "http" and not self.insecure and not _is_loopback(parts.hostname):
            raise TrustError(
                f"refusing plain http:// to {parts.hostname}: tokens and setup keys would "
                "cross the network readable and netmaps could be forged; use https:// "
                "(see --ca-file), or --insecure if you accept that")
        self.verify()

    def verify(self) -> ssl.SSLContext | bool:
        """The `verify` argument for httpx."""
        if self.insecure:
            return False
        if self.ca_file is None:
            return True
        try:
            return ssl.create_default_context(cafile=self.ca_file)
        except OSError as e:  # ssl.SSLError is an OSError too
            raise TrustError(f"--ca-file {self.ca_file}: {reason(e)}") from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_OPENSSL_NOISE = re.compile(r"^\[[A-Z0-9_]+: [A-Z0-9_]+\] | \(_ssl\.c:\d+\)$")
_TIMEOUTS: dict[type[httpx.TimeoutException], str] = {
    httpx.ConnectTimeout: "connection timed out",
    httpx.ReadTimeout: "no answer in time (read timed out)",
    httpx.WriteTimeout: "write timed out",
    httpx.PoolTimeout: "no free connection in time",
}


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def raise_if_cancelled() -> None:
    """Re-raise a cancellation that a library turned into another error: httpx closing a TLS
    stream in the middle of a read raises an SSL error in place of the CancelledError, and a
    loop that then retries never hears its SIGTERM (the agent was killed after the stop
    timeout, its exit-node rules left behind). Call it first in a retry loop's handler."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def reason(exc: BaseException) -> str:
    """Why a request failed, in a few words: the certificate problem or the OS error under
    httpx's wrappers (whose own text is often empty or 'All connection attempts failed')."""
    chain = _chain(exc)
    for e in chain:
        if isinstance(e, ssl.SSLCertVerificationError):
            return f"certificate verify failed: {e.verify_message}"
    for e in chain:
        if isinstance(e, ssl.SSLError):
            return f"TLS error: {_OPENSSL_NOISE.sub('', str(e.strerror or e))}"
    for e in chain:
        if isinstance(e, OSError) and e.errno is not None and e.errno > 0:
            return os.strerror(e.errno).lower()
        if isinstance(e, OSError) and e.strerror:  # e.g. name resolution (negative errno)
            return str(e.strerror).lower()
    for e in chain:
        for kind, text in _TIMEOUTS.items():
            if isinstance(e, kind):
                return text
    for e in chain:
        if str(e).strip():
            return str(e).strip()
    return exc.__class__.__name__


def unreachable(url: str, exc: BaseException) -> str:
    return f"cannot reach the server at {url}: {reason(exc)}"
