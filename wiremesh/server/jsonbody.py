"""Request bodies decoded as JSON objects whose keys are unique.

Python's decoder keeps the last of two equal keys (`{"name": "a", "name": "b"}` asks for "b"),
while a proxy, an audit log or a client library in front may have read the first: the two
would disagree on what was asked. RFC 8259 leaves such objects undefined; they are refused
here with the decoder's other errors (422, naming the key), as policy files refuse them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def loads(body: bytes | str) -> Any:
    """`json.loads`, raising JSONDecodeError for an object with a key twice."""
    try:
        return json.loads(body, object_pairs_hook=_unique)
    except _DuplicateKey as e:
        doc = body if isinstance(body, str) else body.decode("utf-8", "replace")
        # Where the second one is, as written (a key spelled with escapes is not found: 0).
        at = max(doc.rfind(json.dumps(e.key, ensure_ascii=False)), 0)
        raise json.JSONDecodeError(f"duplicate key {e.key!r}", doc, at) from None


class _Request(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads(await self.body())
        return self._json


class JsonRoute(APIRoute):
    """A route whose JSON body is decoded by `loads`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handle_strictly(request: Request) -> Response:
            return await handle(_Request(request.scope, request.receive))
        return handle_strictly
