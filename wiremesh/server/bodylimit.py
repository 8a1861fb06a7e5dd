"""Refuse request bodies over a size limit (413) before they are read into memory and
JSON-decoded on the event loop; the largest legitimate body is a 1 MiB policy file."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from wiremesh.server.errors import problem

MAX_BODY = 2 << 20  # a 1 MiB policy file, JSON-escaped, with room to spare


def _too_large() -> str:
    return f"the request body is larger than {MAX_BODY} bytes (the limit)"


class BodyLimit:
    def __init__(self, app: ASGIApp, limit: int = MAX_BODY) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await problem(413, "Request body too large", _too_large())(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            # Chunked bodies carry no length: count as they arrive.
            nonlocal seen
            msg = await receive()
            seen += len(msg.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, _too_large())
            return msg

        await self.app(scope, counted, send)
