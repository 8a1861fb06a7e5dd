"""Device posture (pure): what a policy may require of its source peers, as their agents
report it (agent version, OS family), and the compiler's view of it.

A peer that fails a policy's posture is out of that policy's source groups, and of nothing
else: `with_posture(state)` rewrites each such policy's sources into one synthetic group
holding the source peers that pass, so the compiler needs no notion of posture, and a peer
whose report changes is an ordinary group-membership change for it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, get_args

from packaging.version import InvalidVersion, Version

from wiremesh.core.models import MeshState, PeerInfo

OsFamily = Literal["linux", "macos", "windows", "freebsd", "other"]
OS_FAMILIES: tuple[str, ...] = get_args(OsFamily)
# Policy and group names are Names (no ':'), so these never collide with a real group.
GROUP_PREFIX = "posture:"


@dataclass(frozen=True)
class Posture:
    min_agent_version: str | None = None
    os_families: tuple[str, ...] = ()  # empty: any

    def __post_init__(self) -> None:
        if self.min_agent_version is not None:
            try:
                Version(self.min_agent_version)
            except InvalidVersion:
                raise ValueError(f"bad min_agent_version {self.min_agent_version!r}: expected "
                                 "a version like 0.2.0") from None
        bad = [f for f in self.os_families if f not in OS_FAMILIES]
        if bad:
            raise ValueError(f"unknown OS family {bad[0]!r}: choose from "
                             f"{', '.join(OS_FAMILIES)}")

    def failure(self, peer: PeerInfo) -> str | None:
        """Why `peer` fails this posture, or None when it passes."""
        if self.min_agent_version is not None:
            try:
                ok = Version(peer.agent_version) >= Version(self.min_agent_version)
            except InvalidVersion:
                return (f"{peer.name} reports no agent version (needs >= "
                        f"{self.min_agent_version})")
            if not ok:
                return (f"{peer.name} runs agent {peer.agent_version}, older than "
                        f"{self.min_agent_version}")
        if self.os_families and peer.os_family not in self.os_families:
            return (f"{peer.name} runs on {peer.os_family or 'an unreported OS'}, not "
                    f"{' or '.join(self.os_families)}")
        return None


def source_group(policy_name: str) -> str:
    return GROUP_PREFIX + policy_name


def with_posture(state: MeshState) -> MeshState:
    """`state` with each posture-checked policy's sources narrowed to the peers that pass
    (the same object when no policy checks posture)."""
    if all(p.posture is None for p in state.policies):
        return state
    from wiremesh.core.policy import ALL_GROUP  # policy.py imports this module

    groups = dict(state.groups)
    policies = []
    for p in state.policies:
        if p.posture is None:
            policies.append(p)
            continue
        members: set[int] = set()
        for g in p.sources:
            members |= state.peers.keys() if g == ALL_GROUP else state.groups.get(g, set())
        groups[source_group(p.name)] = frozenset(
            pid for pid in members
            if pid in state.peers and p.posture.failure(state.peers[pid]) is None)
        policies.append(replace(p, sources=(source_group(p.name),)))
    return replace(state, groups=groups, policies=tuple(policies))
