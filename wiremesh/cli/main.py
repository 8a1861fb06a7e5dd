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

from wiremesh.cli import admin, agent, server  # noqa: E402  (commands attach to `app`)

app.command("server")(server.server)
app.command("up")(agent.up)
app.command("agent")(agent.agent)
app.add_typer(admin.keys_app, name="keys")
app.add_typer(admin.peers_app, name="peers")
app.add_typer(admin.groups_app, name="groups")

from wiremesh.cli import lab  # noqa: E402

app.add_typer(lab.app, name="lab")

from wiremesh.cli import gateway  # noqa: E402

app.add_typer(gateway.app, name="gateway")
