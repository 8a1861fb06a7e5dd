"""How the server learns that someone lost access without anyone telling it: users the
provider stopped vouching for (their refresh token is refused: deleted, disabled, or their
grant revoked at the provider) and user peers whose login expired. Either is a netmap change:
those peers leave every other peer's netmap at the next push."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from wiremesh.server.hub import NetmapHub
from wiremesh.server.oidc import LoginRefused, OidcClient, OidcError
from wiremesh.store.common import now
from wiremesh.store.users import Users

log = logging.getLogger(__name__)
# Login expiries are noticed within this long (they need no provider round trip).
EXPIRY_TICK_S = 2.0


class UserChecker:
    def __init__(self, users: Users, hub: NetmapHub, oidc: OidcClient | None) -> None:
        self.users, self.hub, self.oidc = users, hub, oidc
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def check_users(self, interval: timedelta) -> int:
        """Re-check at the provider every user not checked for `interval`; returns how many
        lost access. A provider that cannot be reached disables no one."""
        assert self.oidc is not None
        lost = 0
        for user in await self.users.due_for_check(interval):
            if not await self.users.claim_check(user):
                continue
            try:
                groups, refresh = await self.oidc.refresh(user.sub, user.refresh_token or "")
            except LoginRefused as e:
                await self.users.disable(user.id, str(e))
                log.info("user %s lost access: %s", user.sub, e)
                lost += 1
                continue
            except OidcError as e:
                log.warning("cannot re-check user %s at the provider: %s", user.sub, e)
                continue
            await self.users.checked(user.id, refresh, groups)
        return lost

    async def run(self) -> None:
        last_expiry = now()
        interval = self.oidc.config.check_interval if self.oidc else None
        tick = min(EXPIRY_TICK_S, interval.total_seconds()) if interval else EXPIRY_TICK_S
        while not self._stop.is_set():
            try:
                at = now()
                changed = await self.users.expire_peer_logins(last_expiry, at)
                last_expiry = at
                if interval is not None:
                    changed += await self.check_users(interval)
                if changed:
                    self.hub.poke()
            except Exception:  # the loop must outlive a database or provider hiccup
                log.exception("user checks failed; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), tick)
