"""`wiremesh lab`: throw-away networks in namespaces with a real server and real agents."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from wiremesh.cli.common import JsonOpt, console, fail, print_json
from wiremesh.lab.netns import (
    LabError,
    clean_leftovers,
    missing_requirements,
    unwind_on_sigterm,
)

app = typer.Typer(help="Lab: build a mesh in network namespaces and run scenarios (root).",
                  no_args_is_help=True)


def _run(scenario: Callable[[Console], dict[str, Any]], as_json: bool,
         ok: Callable[[dict[str, Any]], bool]) -> None:
    """Run a scenario with teardown guaranteed; print its figures (JSON last with --json);
    exit 1 when `ok` says the figures miss the scenario's own bar."""
    missing = missing_requirements()
    if missing:
        fail(f"the lab needs {', '.join(missing)} (run as root after `make install`)")
    unwind_on_sigterm()  # every namespace and process is torn down
    out = Console(stderr=True) if as_json else console
    try:
        result = scenario(out)
    except LabError as e:
        fail(str(e), code=1)
    except KeyboardInterrupt:
        fail("interrupted; the lab was torn down", code=130)
    if as_json:
        print_json(result)
    else:
        console.print_json(data=result)
    if not ok(result):
        raise typer.Exit(1)


@app.command("demo")
def demo(
    agents: int = typer.Option(5, "--agents", min=2, max=40,
                               help="Number of agent hosts (mesh scenario)"),
    scenario: str = typer.Option("mesh", "--scenario",
                                 help="mesh: all-pairs pings, server death; policy: the "
                                      "reachability matrix checked with real traffic"),
    as_json: bool = JsonOpt,
) -> None:
    """Mesh N agents, ping every ordered pair; stop the server, restart an agent, ping again.

    With --scenario policy: six peers in three groups get examples/lab-policy.yaml; every
    (proto, port) probe between every ordered pair must match `wiremesh policy matrix`, before
    and after a live change; exits 1 on any violation.

    With --json the last line is one JSON object with the figures.
    """
    if scenario == "mesh":
        from wiremesh.lab.demo import run_demo

        _run(lambda out: run_demo(agents, out), as_json,
             lambda r: r["pairs_ok"] == r["pairs_total"] == r["pairs_ok_server_down"])
    elif scenario == "policy":
        from wiremesh.lab.policy_scenario import run_policy_scenario

        _run(run_policy_scenario, as_json,
             lambda r: not r["violations"] and r["propagation_ms"] is not None)
    else:
        fail(f"--scenario {scenario!r}: choose mesh or policy")


@app.command("failover")
def failover(
    trials: int = typer.Option(21, "--trials", min=1, max=1000,
                               help="Router failures to inflict (the second half with the "
                                    "server stopped)"),
    as_json: bool = JsonOpt,
) -> None:
    """Break the active router of an internal network (kill, link down, nftables blackhole)
    again and again while clients send UDP echoes every 10 ms; report the interruptions.

    Exits 1 if a trial's traffic never came back or the outsider ever reached the network.
    With --json the last line is one JSON object with the figures.
    """
    from wiremesh.lab.failover_scenario import run_failover

    _run(lambda out: run_failover(trials, out)[0], as_json,
         lambda r: not r["trials_without_recovery"] and not r["unauthorized_reached"])


@app.command("nat")
def nat(as_json: bool = JsonOpt) -> None:
    """Seven agents on a simulated internet: public, behind port-preserving NATs, behind a
    random-port (symmetric) NAT, two on one LAN, one whose network lets no UDP out. Every
    ordered pair pings over the overlay (direct or relayed, and how fast it first connects);
    then one peer moves to another NAT with its agent running and must reconnect.

    Exits 1 unless every pair connects, every pair that can run direct does, connect p99 <
    2 s and the roaming peer is back within 3 s. With --json the last line is one JSON object
    with the figures.
    """
    from wiremesh.lab.nat_scenario import run_nat_scenario, summary_ok

    _run(lambda out: run_nat_scenario(out)[0], as_json, summary_ok)


@app.command("dataplane")
def dataplane(
    rounds: int = typer.Option(4, "--rounds", min=1, max=50,
                               help="Alternating raw/mesh iperf3 rounds"),
    seconds: float = typer.Option(4.0, "--seconds", min=1.0, max=60.0,
                                  help="Length of each iperf3 run"),
    lossy_minutes: float = typer.Option(5.0, "--lossy-minutes", min=0.0, max=120.0,
                                        help="How long the network is only lossy (0: skip "
                                             "the lossy-network section)"),
    lossy_trials: int = typer.Option(9, "--lossy-trials", min=1, max=300,
                                     help="Real router failures on the lossy network"),
    as_json: bool = JsonOpt,
) -> None:
    """The everyday data plane in one run: iperf3 TCP through the mesh against a plain
    wireguard-go pair on the same network (alternating rounds, same run), idle agents' CPU,
    an HTTP download through a router over 1280-byte paths, then routing over a lossy network
    (no spurious failovers, real failures still fail over fast).

    Exits 1 when a figure misses issue 14's bar (mesh/raw ratio < 0.95, ...). With --json the
    last line is one JSON object with the figures (null for a section that did not run).

    How long: a few minutes (two lab set-ups, 20 s of idle measurement, --rounds x 3 iperf3
    runs of --seconds + 2 s each (a 1 s pause before each), the exit-node failover) plus
    --lossy-minutes and its trials' own lab (--lossy-minutes 0 skips it).
    """
    from wiremesh.lab.dataplane_scenario import run_dataplane, summary_ok

    if not shutil.which("iperf3"):
        fail("the dataplane benchmark needs iperf3 (apt-get install iperf3)")
    _run(lambda out: run_dataplane(out, rounds, seconds, lossy_minutes, lossy_trials), as_json,
         summary_ok)


@app.command("up")
def lab_up(
    peers: int = typer.Option(4, "--peers", min=2, max=40,
                              help="Agents on the internet (topology public)"),
    topology: str = typer.Option("public", "--topology",
                                 help="public: --peers agents with public addresses; nat: the "
                                      "NAT lab's seven agents behind every kind of NAT"),
) -> None:
    """Build a mesh (server + agents) and leave it running to explore; prints how to open a
    shell in each host and the admin token. `wiremesh lab down` removes it."""
    from wiremesh.lab import explore

    if topology not in explore.TOPOLOGIES:
        fail(f"--topology {topology!r}: choose {' or '.join(explore.TOPOLOGIES)}")
    missing = missing_requirements()
    if missing:
        fail(f"the lab needs {', '.join(missing)} (run as root after `make install`)")
    unwind_on_sigterm()
    try:
        record = explore.up(topology, peers, Console(stderr=True))
    except LabError as e:
        fail(str(e), code=1)
    except KeyboardInterrupt:
        fail("interrupted; the lab was torn down", code=130)
    explore.describe(record, console)


@app.command("shell", context_settings={"allow_extra_args": True,
                                        "ignore_unknown_options": True})
def lab_shell(ctx: typer.Context,
              host: str = typer.Argument(..., help="Host name, as `wiremesh lab up` lists")
              ) -> None:
    """Open a shell (or run the command after HOST) inside a host of the lab `wiremesh lab
    up` built; the admin CLI there talks to the lab's server."""
    from wiremesh.lab import explore

    try:
        explore.shell(host, list(ctx.args))
    except LabError as e:
        fail(str(e))


@app.command("down")
def lab_down() -> None:
    """Remove the lab `wiremesh lab up` built: every process, namespace and log."""
    from wiremesh.lab import explore

    try:
        removed = explore.down()
    except LabError as e:
        fail(str(e))
    console.print(f"lab removed ({len(removed)} namespaces and sockets)")


@app.command("console")
def console_(
    shots: Path | None = typer.Option(
        None, "--shots", file_okay=False,
        help="Directory for the screenshots (default: ./wiremesh-console-RUNID)"),
    as_json: bool = JsonOpt,
) -> None:
    """The web console in a real browser (Debian's chromium, driven by Playwright): server
    + OpenID provider + agents, one enrolled with `wiremesh up --login` (its device login
    done in the browser); login, every page, a policy edit with diff and apply, the matrix
    with an explain, the change in the audit log, logout; an auditor's and a user's view.

    Saves a screenshot of each page and exits 1 unless logins work, at least 7 pages were
    checked, the policy was applied from the browser and its console showed no error.
    With --json the last line is one JSON object with the figures.
    """
    from wiremesh.lab.console_scenario import run_console_scenario, summary_ok

    _run(lambda out: run_console_scenario(out, shots), as_json, summary_ok)


@app.command("clean")
def clean(prefix: str = typer.Option("wm", "--prefix", help="Name prefix of lab runs")) -> None:
    """Remove namespaces, processes and sockets left by crashed lab runs."""
    if not prefix.startswith("wm"):
        fail("--prefix must start with 'wm' (lab names always do)")
    removed = clean_leftovers(prefix)
    for r in removed:
        console.print(f"removed {r}")
    console.print(f"{len(removed)} leftovers removed")
    sys.exit(0)
