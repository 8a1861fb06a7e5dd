"""Apply a rendered ruleset with `nft -f -` (one atomic transaction) and remove it.

- `apply(netmap, ifname, netns=None, mtu=..., timeouts=...)`: render and load; the old `inet
  wiremesh` table is replaced in the same transaction (keeping the flows a peer opened), so no
  packet ever sees a half-applied ruleset.
- `load(script, netns=None, check=False)`: load (or only check, `nft -c`) a script.
- `remove(netns=None, table=TABLE)`: delete table `inet <table>` (no error if it is absent).

Everything runs in the current network namespace, or in `netns` (via `ip netns exec`) when
given, e.g. by lab scenarios driving hosts from outside.
"""

from __future__ import annotations

import shutil
import subprocess

from wiremesh.core.wire import DEFAULT_MTU, Netmap
from wiremesh.firewall.render import OVERLAY, TABLE, FlowTimeouts, render


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
    load(render(netmap, ifname, overlay, mtu, timeouts), netns=netns)


def remove(netns: str | None = None, table: str = TABLE) -> None:
    load(f"table inet {table}\ndelete table inet {table}\n", netns=netns)
