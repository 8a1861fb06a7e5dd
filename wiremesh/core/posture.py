"""Device posture (pure): what a policy may require of its source peers, as their agents
report it (agent version, OS family), and the compiler's view of it.

A peer that fails a policy's posture is out of that policy's source groups, and of nothing
else: the compiler indexes each such policy with its sources rewritten into one synthetic
group (`compiled`) holding the source peers that pass (`passing`), so a peer whose report
changes is an ordinary group-membership change for it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Literal, get_args

from packaging.version import InvalidVersion, Version

from wiremesh.core.models import PeerInfo, Policy

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


def compiled(policy: Policy) -> Policy:
    """`policy` as the compiler indexes it: a posture-checked policy's sources are its
    synthetic group (`source_group`), which holds the source peers that pass."""
    if policy.posture is None:
        return policy
    return replace(policy, sources=(source_group(policy.name),))


def passing(policy: Policy, sources: Iterable[PeerInfo]) -> frozenset[int]:
    """The ids of the peers among `sources` (the policy's source peers) that pass its
    posture: the members of its synthetic group."""
    posture = policy.posture
    if posture is None:
        raise ValueError(f"policy {policy.name!r} checks no posture")
    return frozenset(p.id for p in sources if posture.failure(p) is None)
