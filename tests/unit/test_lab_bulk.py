"""The lab's bulk transfer over real loopback TCP: what the receiver counts is what was sent."""

from __future__ import annotations

import threading

from wiremesh.lab.bulk import listen, mbit_per_s, receive, send


def test_receiver_counts_every_byte_the_sender_sent() -> None:
    with listen(0, "127.0.0.1") as server:
        port = server.getsockname()[1]
        result: dict[str, float] = {}
        t = threading.Thread(target=lambda: result.update(receive(server, 10.0)))
        t.start()
        sent = send("127.0.0.1", port, 0.2)
        t.join(10)
    assert sent > 0 and result["bytes"] == sent
    assert result["seconds"] > 0
    rate = mbit_per_s(result)
    assert rate is not None and rate > 0


def test_no_data_means_no_rate() -> None:
    assert mbit_per_s({"bytes": 0, "seconds": 0.0}) is None
