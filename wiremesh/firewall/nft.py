"""Apply a rendered ruleset with `nft -f -` (one atomic transaction) and remove it.

- `apply(netmap, ifname, netns=None, mtu=..., timeouts=...)`: render and load; the old
  `wiremesh` tables are replaced in the same transaction (keeping the flows a peer opened), so
  no packet ever sees a half-applied ruleset. A kernel that refuses the device hooks (no
  egress hook before 5.16) gets the ACL on the input and output hooks instead.
- `load(script, netns=None, check=False)`: load (or only check, `nft -c`) a script.
- `remove(netns=None, table=TABLE)`: delete table `<table>` of the inet and netdev families
  (no error if they are absent).

Everything runs in the current network namespace, or in `netns` (via `ip netns exec`) when
given, e.g. by lab scenarios driving hosts from outside.
"""

from __future__ import annotations

import logging
import shutil
import subprocess

from wiremesh.core.wire import DEFAULT_MTU, Netmap
from wiremesh.firewall.render import OVERLAY, TABLE, FlowTimeouts, render

log = logging.getLogger("wiremesh.firewall.nft")
FAMILIES = ("inet", "netdev")


class NftError(RuntimeError):
    pass


def load(script: str, netns: str | None = None, check: bool = False,
         timeout: float = 30.0) -> None:
    nft = shutil.which("nft")
    if not nft:
        raise NftError("nft not found; install the 'nftables' package")
    cmd = [nft, *(["-c"] if check else []), "-f", "-"]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    res = subprocess.run(cmd, input=script, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise NftError(f"nft {'check' if check else 'load'} failed: {res.stderr.strip()}")


def apply(netmap: Netmap, ifname: str, netns: str | None = None,
          overlay: str = OVERLAY, mtu: int = DEFAULT_MTU,
          timeouts: FlowTimeouts = FlowTimeouts()) -> None:
    try:
        load(render(netmap, ifname, overlay, mtu, timeouts), netns=netns)
    except NftError as e:
        # Tried every time rather than remembered: the refusal may have been the interface
        # missing for a moment, and a policy change is rare enough to pay one more nft run.
        load(render(netmap, ifname, overlay, mtu, timeouts, device_hooks=False), netns=netns)
        log.warning("ACL on the input and output hooks: nftables refused the device hooks "
                    "of %s (%s)", ifname, e)


def remove(netns: str | None = None, table: str = TABLE) -> None:
    load("".join(f"table {f} {table}\ndelete table {f} {table}\n" for f in FAMILIES),
         netns=netns)
