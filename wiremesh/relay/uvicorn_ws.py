"""uvicorn's WebSocket protocol (websockets-sansio, its default) with an unanswered handshake
mended. Give it to uvicorn as `ws="wiremesh.relay.uvicorn_ws:WebSocketProtocol"`.

An upgrade request the websockets library cannot parse (a header line over its 8 KiB limit,
more than 128 headers, a request line too long, garbage) never becomes a handshake: the
library writes its refusal (431, 414, or just the end of the stream) to its output buffer,
and uvicorn (0.54) neither sends that nor closes, so the connection hangs unanswered for as
long as the client keeps it open, on any path and before any authentication. This sends the
refusal and closes at once, as the same request without `Upgrade` is answered.
"""

from __future__ import annotations

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol


class WebSocketProtocol(WebSocketsSansIOProtocol):
    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        unparsable = self.conn.handshake_exc is not None and not self.handshake_initiated
        if unparsable and not self.transport.is_closing():
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.transport.close()
