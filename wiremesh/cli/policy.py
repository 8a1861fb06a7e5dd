"""`wiremesh policy` (apply/diff/export/matrix/explain), `wiremesh routes` and `wiremesh audit`."""

from __future__ import annotations

from pathlib import Path

import typer

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
        console.print(line, highlight=False)


@app.command("apply")
def apply(file: Path = FileArg, server: str | None = ServerOpt, token: str | None = TokenOpt,
          ca_file: Path | None = CaFileOpt, insecure: bool = InsecureOpt,
          as_json: bool = JsonOpt) -> None:
    """Validate FILE, run its tests, and replace the policy (all or nothing)."""
    out = Api(server, token, ca_file, insecure).call("POST", "/policy/apply", json=_read(file))
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
    """Show what applying FILE would change and which peers it affects."""
    out = Api(server, token, ca_file, insecure).call("POST", "/policy/diff", json=_read(file))
    if as_json:
        print_json(out)
        return
    _print_plan(out)
    for f in out["test_failures"]:
        console.print(f"[red]test would fail:[/] {f}", highlight=False)


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
    out = Api(server, token, ca_file, insecure).call("GET", "/policy/matrix")
    if as_json:
        print_json(out)
        return
    cell = {(p["src"], p["dst"]): ", ".join(
        a["proto"] + (":" + ",".join(a["ports"]) if a["ports"] else "") for a in p["allow"])
        for p in out["pairs"]}
    print_table("reachability matrix (default deny)", ["from \\ to", *out["peers"]],
                [[a, *["-" if a == b else cell.get((a, b), "[dim]deny[/]")
                       for b in out["peers"]]] for a in out["peers"]])


@app.command("explain")
def explain(
    src: str = typer.Argument(..., help="Source peer (name or id)"),
    dst: str = typer.Argument(..., help="Destination peer (name or id), or an IPv4 address "
                              "outside the mesh (routes, exit nodes)"),
    proto: str = typer.Option("all", "--proto", help="all, tcp, udp or icmp"),
    port: int | None = typer.Option(None, "--port", min=1, max=65535),
    server: str | None = ServerOpt, token: str | None = TokenOpt,
    ca_file: Path | None = CaFileOpt, insecure: bool = InsecureOpt, as_json: bool = JsonOpt,
) -> None:
    """Why can (or can't) SRC reach DST? Names the policies that allow it, or each reason."""
    if proto not in ("all", "tcp", "udp", "icmp"):
        fail(f"--proto {proto!r}: choose all, tcp, udp or icmp")
    params: dict[str, str | int] = {"src": src, "dst": dst, "proto": proto}
    if port is not None:
        params["port"] = port
    out = Api(server, token, ca_file, insecure).call("GET", "/policy/explain", params=params)
    if as_json:
        print_json(out)
        return
    console.print(("[green]ALLOW[/] " if out["allowed"] else "[red]DENY[/] ") + out["summary"],
                  highlight=False)
    for v in out["verdicts"]:
        console.print(f"  {v['policy']}: {v['verdict']} - {v['reason']}", highlight=False)


@routes_app.command("list")
def routes_list(server: str | None = ServerOpt, token: str | None = TokenOpt,
                ca_file: Path | None = CaFileOpt, insecure: bool = InsecureOpt,
                as_json: bool = JsonOpt) -> None:
    """List routes."""
    routes = Api(server, token, ca_file, insecure).call("GET", "/routes", expect=list)
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
    entries = Api(server, token, ca_file, insecure).call(
            "GET", "/audit", expect=list, params={"limit": limit})
    if as_json:
        print_json(entries)
        return
    print_table("audit log", ["when", "who", "what", "detail"],
                [[e["at"], e["actor"], e["action"], e["detail"]] for e in entries])
