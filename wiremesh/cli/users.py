"""`wiremesh users`: people who logged in through the OpenID provider."""

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
    print_json,
    print_table,
)

app = typer.Typer(help="Users (from the OpenID provider): list, delete.", no_args_is_help=True)


@app.command("list")
def users_list(server: str | None = ServerOpt, token: str | None = TokenOpt,
               ca_file: Path | None = CaFileOpt, insecure: bool = InsecureOpt,
               as_json: bool = JsonOpt) -> None:
    """List users, their role, groups and peers."""
    users = Api(server, token, ca_file, insecure, as_json).call("GET", "/users", expect=list)
    if as_json:
        print_json(users)
        return
    print_table("users", ["id", "user", "email", "role", "groups", "peers", "last login",
                          "access"],
                [[u["id"], u["name"] or u["sub"], u["email"], u["role"], ",".join(u["groups"]),
                  ",".join(u["peers"]), (u["last_login"] or "")[:19],
                  f"lost: {u['disabled_reason']}" if u["disabled_at"] else "yes"]
                 for u in users])


@app.command("delete")
def users_delete(user_id: int = typer.Argument(..., min=1, help="User id (users list)"),
                 server: str | None = ServerOpt, token: str | None = TokenOpt,
                 ca_file: Path | None = CaFileOpt, insecure: bool = InsecureOpt) -> None:
    """Delete a user: their sessions end and all their peers leave the mesh."""
    u = Api(server, token, ca_file, insecure).call("DELETE", f"/users/{user_id}")
    console.print(f"deleted user {u['name'] or u['sub']} and peers: {', '.join(u['peers']) or '-'}")
