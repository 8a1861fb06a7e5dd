"""The `wiremesh` command: one Typer app, one module per command group."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="wiremesh",
    help="wiremesh: a WireGuard mesh overlay (control server, agents, policy, router failover, "
    "JIT gateway) and a lab to try it in network namespaces.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
