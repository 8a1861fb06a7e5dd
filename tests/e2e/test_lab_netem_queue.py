"""The userspace netem on real namespaces: pings between hosts whose links are impaired come
back tens of milliseconds later and some are lost; the kernel refusing verdicts does not stop
the impairment; once the block is left, the rules are gone and the path
is clean again."""

from __future__ import annotations

import re
import shutil

import pytest

from wiremesh.lab.mesh import wait_until
from wiremesh.lab.netem_queue import QUEUE_STATE, Impairment, impaired_links
from wiremesh.lab.netns import Host, Lab, missing_requirements

pytestmark = pytest.mark.e2e

if missing := missing_requirements() + [t for t in ("iptables", "ip6tables")
                                         if not shutil.which(t)]:
    pytest.skip(f"netem queue needs: {', '.join(missing)}", allow_module_level=True)


def ping(src: Host, dst: Host, count: int) -> tuple[int, list[float]]:
    """Replies received and their round trips (ms)."""
    res = src.run(["ping", "-n", "-c", str(count), "-i", "0.02", "-W", "1", dst.ip],
                  check=False, timeout=count + 10)
    received = re.search(r"(\d+) received", res.stdout)
    assert received, res.stdout
    return int(received.group(1)), [float(t) for t in re.findall(r"time=([\d.]+)", res.stdout)]


def held(h: Host) -> int:
    """Packets waiting for a verdict in `h`'s queues (the third column)."""
    lines = h.run(["cat", QUEUE_STATE]).stdout.splitlines()
    return sum(int(line.split()[2]) for line in lines if line.strip())


def test_queue_delays_and_drops_survives_refused_verdicts_then_leaves_a_clean_path() -> None:
    with Lab() as lab:
        sw = lab.add_switch("u", "192.0.2.0/24")
        a, b = lab.add_host("a"), lab.add_host("b")
        lab.connect(a, sw)
        lab.connect(b, sw)
        # 10 % each way: 60 pings all coming back would be a one-in-300,000 event.
        with impaired_links(lab, sw, [a, b], Impairment(50, 50, 10)) as imp:
            received, rtts = ping(a, b, 60)
            # The kernel lets go of every packet held in a namespace when a hook goes away
            # there (an agent replacing its nftables table) and refuses their verdicts; the
            # queue must go on (once it stopped, cutting a router off in the failover lab).
            a.run(["nft", "add", "table", "inet", "wmhook"])
            a.run(["nft", "add", "chain", "inet", "wmhook", "out",
                   "{ type filter hook output priority 0; }"])
            # Long enough to be still running when the table goes, however slow the machine
            # (a 2 s flood had ended under a loaded CI run: nothing held, no refusal).
            flood = a.popen(["ping", "-n", "-i", "0.005", "-w", "5", b.ip])
            wait_until(lambda: held(a) > 0, 10, "packets held in a's queue")
            a.run(["nft", "delete", "table", "inet", "wmhook"])
            flood.wait(10)
            after, _ = ping(a, b, 20)
            assert imp.alive()
        assert received < 60
        rtts.sort()
        # Each way 0-100 ms: a median round trip near 100 ms, spread over tens of ms.
        assert 60 <= rtts[len(rtts) // 2] <= 160, rtts
        assert rtts[-1] - rtts[0] >= 40, rtts
        assert after >= 5 and imp.counts["verdict_errors"] >= 1
        assert imp.counts["packets"] >= 60 and imp.counts["dropped"] >= 1
        for h in (a, b):
            assert "NFQUEUE" not in h.run(["iptables-save", "-t", "mangle"]).stdout
            assert h.run(["cat", QUEUE_STATE]).stdout.strip() == ""
        assert not imp.alive()
        received, rtts = ping(a, b, 20)
        assert received == 20 and max(rtts) < 20, rtts
