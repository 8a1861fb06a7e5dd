"""Wake-ups when this network namespace's links or addresses change (netlink broadcasts, via
pyroute2), so the agent looks at its endpoints again at once instead of polling the kernel
every second: an idle laptop stays asleep, a roaming one is noticed as the change happens."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.rtnl import RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR, RTMGRP_LINK

log = logging.getLogger("wiremesh.netlink.watch")
GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR


class AddressWatch:
    """`await watch.wait(timeout)`: True when a link or address changed since the last wait
    returned (or the watch could not start: then every wait is a change after `timeout`, as
    plain polling), False when `timeout` passed quietly."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.failed = False

    async def __aenter__(self) -> AddressWatch:
        self._task = asyncio.create_task(self._listen())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _listen(self) -> None:
        try:
            async with AsyncIPRoute() as ipr:
                await ipr.bind(groups=GROUPS)
                while True:
                    async for _msg in ipr.get():
                        self._changed.set()
        except OSError as e:
            log.warning("no netlink notifications (%s): looking at addresses by polling", e)
            self.failed = True

    async def wait(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            return self.failed
        self._changed.clear()
        return True
