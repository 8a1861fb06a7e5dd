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

from wiremesh.cli import admin, agent, gateway, lab, policy, relay, server, users  # noqa: E402

app.command("server")(server.server)
app.command("relay")(relay.relay)
app.command("up")(agent.up)
app.command("agent")(agent.agent)
app.command("down")(agent.down)
app.command("set")(agent.set_prefs)
app.add_typer(admin.keys_app, name="keys")
app.add_typer(admin.peers_app, name="peers")
app.add_typer(admin.groups_app, name="groups")
app.add_typer(admin.tokens_app, name="tokens")
app.add_typer(users.app, name="users")
app.add_typer(policy.app, name="policy")
app.add_typer(policy.routes_app, name="routes")
app.command("audit")(policy.audit)
app.add_typer(gateway.app, name="gateway")
app.add_typer(lab.app, name="lab")
