"""`wiremesh policy` (apply/diff/export/matrix/explain), `wiremesh routes` and `wiremesh audit`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.text import Text

from wiremesh.cli.common import (
    Api,
    CaFileOpt,
    InsecureOpt,
    JsonOpt,
    ServerOpt,
    TokenOpt,
    console,
    fail,
    print_json,
    print_table,
    print_text,
    read_text,
    segment,
)

app = typer.Typer(help="Policy as code: apply, diff, export, matrix, explain.",
                  no_args_is_help=True)
routes_app = typer.Typer(help="Routes to internal networks behind router peers.",
                         no_args_is_help=True)

FileArg = typer.Argument(..., help="Policy file (YAML or JSON)")


def _read(path: Path) -> dict[str, str]:
    return {"text": read_text(path, "FILE"), "source": path.name}


def _print_plan(out: dict) -> None:
    if out["empty"]:
        console.print("no changes")
    for line in out["changes"]:
        print_text(line)


@app.command("apply")
def apply(file: Path = FileArg, server: str | None = ServerOpt, token: str | None = TokenOpt,
          ca_file: Path | None = CaFileOpt, insecure: bool = InsecureOpt,
          as_json: bool = JsonOpt) -> None:
    """Validate FILE, run its tests, and replace the policy (all or nothing)."""
    out = Api(server, token, ca_file, insecure, as_json).call("POST", "/policy/apply",
                                                             json=_read(file))
    if as_json:
        print_json(out)
        return
    _print_plan(out)
    console.print(f"applied {file.name}: revision {out['revision']}, "
                  f"{out['tests_passed']} test(s) passed, "
                  f"{len(out['peers_affected'])} peer(s) affected")


@app.command("diff")
def diff(file: Path = FileArg, server: str | None = ServerOpt, token: str | None = TokenOpt,
         ca_file: Path | None = CaFileOpt, insecure: bool = InsecureOpt,
         as_json: bool = JsonOpt) -> None:
    """Show what applying FILE would change, which peers it affects, and which of its tests
    would fail.

    Exit status: 0 if the file's tests pass, 1 if any would fail (apply would refuse the
    file), 2 if it could not be checked (FILE unreadable or invalid, the server unreachable
    or refusing).
    """
    out = Api(server, token, ca_file, insecure, as_json).call("POST", "/policy/diff",
                                                             json=_read(file))
    if as_json:
        print_json(out)
    else:
        _print_plan(out)
        for f in out["test_failures"]:
            print_text(("test would fail:", "red"), " ", f)
    # A failing test is a finding, not a failure to check: CI gates on it.
    if out["test_failures"]:
        raise typer.Exit(1)


@app.command("export")
def export_(server: str | None = ServerOpt, token: str | None = TokenOpt,
            ca_file: Path | None = CaFileOpt, insecure: bool = InsecureOpt) -> None:
    """Print the current groups, policies and routes as a policy file (YAML)."""
    typer.echo(Api(server, token, ca_file, insecure).call(
            "GET", "/policy/export", expect=str), nl=False)


@app.command("matrix")
def matrix(server: str | None = ServerOpt, token: str | None = TokenOpt,
           ca_file: Path | None = CaFileOpt, insecure: bool = InsecureOpt,
           as_json: bool = JsonOpt) -> None:
    """Who may open what to whom (rows: source, columns: destination)."""
    out = Api(server, token, ca_file, insecure, as_json).call("GET", "/policy/matrix")
    if as_json:
        print_json(out)
        return
    cell = {(p["src"], p["dst"]): ", ".join(
        a["proto"] + (":" + ",".join(a["ports"]) if a["ports"] else "") for a in p["allow"])
        for p in out["pairs"]}
    deny = Text("deny", style="dim")
    print_table("reachability matrix (default deny)", ["from \\ to", *out["peers"]],
                [[a, *["-" if a == b else cell.get((a, b), deny)
                       for b in out["peers"]]] for a in out["peers"]])


@app.command("explain")
def explain(
    src: str = typer.Argument(..., help="Source peer (name or id)"),
    dst: str = typer.Argument(..., help="Destination peer (name or id), or an IPv4 address "
                              "outside the mesh (routes, exit nodes)"),
    proto: str = typer.Option(
        "all", "--proto",
        help="all (the default) asks whether SRC may open anything at all to DST: some "
             "protocol on some port (with --port: tcp or udp to that port), so ALLOW does not "
             "mean every protocol is; tcp, udp or icmp ask about that protocol only"),
    port: int | None = typer.Option(
        None, "--port", min=1, max=65535,
        help="Destination port (tcp, udp, all); without it: some port, not every port"),
    server: str | None = ServerOpt, token: str | None = TokenOpt,
    ca_file: Path | None = CaFileOpt, insecure: bool = InsecureOpt, as_json: bool = JsonOpt,
) -> None:
    """Why can (or can't) SRC reach DST? Names the policies that allow it, or each reason."""
    if proto not in ("all", "tcp", "udp", "icmp"):
        fail(f"--proto {proto!r}: choose all, tcp, udp or icmp")
    api = Api(server, token, ca_file, insecure, as_json)
    params: dict[str, str | int] = {"src": _peer_name(api, src), "dst": _peer_name(api, dst),
                                    "proto": proto}
    if port is not None:
        params["port"] = port
    out = api.call("GET", "/policy/explain", params=params)
    if as_json:
        print_json(out)
        return
    print_text(("ALLOW", "green") if out["allowed"] else ("DENY", "red"),
               f" {out['src']} -> {out['dst']} {_asked(proto, port)}: {_outcome(out)}")
    for v in out["verdicts"]:
        print_text(f"  {v['policy']}: {v['verdict']} - {v['reason']}")


def _peer_name(api: Api, ref: str) -> str:
    """The name of the peer `ref` names if it is an id, else `ref` as given: the server's
    explain finds peers by name (or takes an address), where other commands take a name or
    an id. Looked up as they do: by id first, then by name."""
    if not (ref.isascii() and ref.isdigit()):
        return ref
    return str(api.call("GET", f"/peers/{segment(ref, 'PEER')}")["name"])


def _asked(proto: str, port: int | None) -> str:
    """What explain was asked, in words: "alice -> db1 all: allowed" read as "every
    protocol", when an icmp-only policy was all that allowed it."""
    if proto == "all":
        return (f"tcp or udp port {port}" if port is not None
                else "(anything: some protocol or port)")
    if port is not None:
        return f"{proto}/{port}"
    return proto if proto == "icmp" else f"{proto} (some port)"


def _outcome(out: dict) -> str:
    if out["allowed"]:
        return f"allowed by {', '.join(out['allowed_by'])}"
    if not out["verdicts"]:
        return "denied: there are no policies (default deny)"
    return "denied: no policy allows it (default deny)"


@routes_app.command("list")
def routes_list(server: str | None = ServerOpt, token: str | None = TokenOpt,
                ca_file: Path | None = CaFileOpt, insecure: bool = InsecureOpt,
                as_json: bool = JsonOpt) -> None:
    """List routes."""
    routes = Api(server, token, ca_file, insecure, as_json).call("GET", "/routes", expect=list)
    if as_json:
        print_json(routes)
        return
    print_table("routes", ["name", "prefix", "router group", "metric", "per-router",
                           "masquerade", "enabled"],
                [[r["name"], r["prefix"], r["router_group"], r["metric"],
                  ",".join(f"{k}={v}" for k, v in r["router_metrics"].items()),
                  r["masquerade"], r["enabled"]] for r in routes])


@routes_app.command("set")
def routes_set(
    name: str = typer.Argument(...),
    prefix: str = typer.Option(..., "--prefix", help="Network, e.g. 198.18.1.0/24"),
    router_group: str = typer.Option(..., "--routers", help="Group whose members route it"),
    metric: int = typer.Option(100, "--metric", min=0, help="Default metric (lower wins)"),
    router_metric: list[str] = typer.Option([], "--router-metric",
                                            help="PEER=METRIC override; repeatable"),
    masquerade: bool = typer.Option(True, "--masquerade/--no-masquerade"),
    enabled: bool = typer.Option(True, "--enabled/--disabled"),
    server: str | None = ServerOpt, token: str | None = TokenOpt,
    ca_file: Path | None = CaFileOpt, insecure: bool = InsecureOpt,
) -> None:
    """Create or replace a route. Who may use it is decided by policy (`routes:` in a policy)."""
    overrides: dict[str, int] = {}
    for item in router_metric:
        peer, _, m = item.partition("=")
        if not peer or not m.isdigit():
            fail(f"--router-metric {item!r}: expected PEER=METRIC")
        overrides[peer] = int(m)
    Api(server, token, ca_file, insecure).call("PUT", f"/routes/{segment(name, 'NAME')}", json={
        "prefix": prefix, "router_group": router_group, "metric": metric,
        "router_metrics": overrides, "masquerade": masquerade, "enabled": enabled})
    console.print(f"route {name} -> {prefix} via group {router_group}")


@routes_app.command("delete")
def routes_delete(name: str = typer.Argument(...), server: str | None = ServerOpt,
                  token: str | None = TokenOpt,
                  ca_file: Path | None = CaFileOpt, insecure: bool = InsecureOpt) -> None:
    """Delete a route."""
    Api(server, token, ca_file, insecure).call("DELETE", f"/routes/{segment(name, 'NAME')}")
    console.print(f"deleted route {name}")


def audit(limit: int = typer.Option(50, "--limit", min=1), server: str | None = ServerOpt,
          token: str | None = TokenOpt,
          ca_file: Path | None = CaFileOpt, insecure: bool = InsecureOpt,
          as_json: bool = JsonOpt) -> None:
    """Show the audit log: who changed what, when (newest first)."""
    entries = Api(server, token, ca_file, insecure, as_json).call(
            "GET", "/audit", expect=list, params={"limit": limit})
    if as_json:
        print_json(entries)
        return
    print_table("audit log", ["when", "who", "what", "detail"],
                [[e["at"], e["actor"], e["action"], e["detail"]] for e in entries])
