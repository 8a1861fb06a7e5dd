"""Apply a rendered ruleset with `nft -f -` (one atomic transaction) and remove it.

- `apply(netmap, ifname, netns=None, mtu=..., timeouts=...)`: render and load; the old
  `wiremesh` tables are replaced in the same transaction (keeping the flows a peer opened), so
  no packet ever sees a half-applied ruleset. A kernel that refuses the device hooks (no
  egress hook before 5.16) gets the ACL on the input and output hooks instead.
- `load(script, netns=None, check=False)`: load (or only check, `nft -c`) a script.
- `list_chains(netns=None)`: every chain, as nft's JSON describes it.
- `remove(netns=None, table=TABLE)`: delete table `<table>` of the inet and netdev families
  (no error if they are absent).

Everything runs in the current network namespace, or in `netns` (via `ip netns exec`) when
given, e.g. by lab scenarios driving hosts from outside.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from typing import Any

from wiremesh.core.wire import DEFAULT_MTU, Netmap
from wiremesh.firewall.render import OVERLAY, TABLE, FlowTimeouts, drop_table, render

log = logging.getLogger("wiremesh.firewall.nft")
_REFUSED: set[tuple[str | None, str]] = set()  # (netns, interface) that refused device hooks


class NftError(RuntimeError):
    pass


def _nft(args: list[str], what: str, netns: str | None, script: str | None = None,
         timeout: float = 30.0) -> str:
    nft = shutil.which("nft")
    if not nft:
        raise NftError("nft not found; install the 'nftables' package")
    cmd = [nft, *args]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    res = subprocess.run(cmd, input=script, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise NftError(f"nft {what} failed: {res.stderr.strip()}")
    return res.stdout


def load(script: str, netns: str | None = None, check: bool = False,
         timeout: float = 30.0) -> None:
    _nft([*(["-c"] if check else []), "-f", "-"], "check" if check else "load", netns, script,
         timeout)


def list_chains(netns: str | None = None) -> list[dict[str, Any]]:
    """Each chain's family, table, name, and for base chains hook, prio and policy."""
    out = _nft(["-j", "list", "chains"], "list", netns)
    try:
        items = json.loads(out)["nftables"]
    except (ValueError, KeyError, TypeError) as e:
        raise NftError(f"nft list chains: unexpected output ({e})") from e
    return [i["chain"] for i in items if isinstance(i, dict) and isinstance(i.get("chain"), dict)]


def apply(netmap: Netmap, ifname: str, netns: str | None = None,
          overlay: str = OVERLAY, mtu: int = DEFAULT_MTU,
          timeouts: FlowTimeouts = FlowTimeouts()) -> None:
    try:
        load(render(netmap, ifname, overlay, mtu, timeouts), netns=netns)
    except NftError as e:
        # Tried every time rather than remembered: the refusal may have been the interface
        # missing for a moment, and a policy change is rare enough to pay one more nft run.
        load(render(netmap, ifname, overlay, mtu, timeouts, device_hooks=False), netns=netns)
        # Once per interface, not at every netmap of a kernel that has no egress hook.
        level = logging.DEBUG if (netns, ifname) in _REFUSED else logging.WARNING
        _REFUSED.add((netns, ifname))
        log.log(level, "ACL on the input and output hooks: nftables refused the device hooks "
                "of %s (%s)", ifname, e)


def remove(netns: str | None = None, table: str = TABLE) -> None:
    load("\n".join(drop_table(table)) + "\n", netns=netns)
