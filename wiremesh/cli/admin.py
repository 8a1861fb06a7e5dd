"""Admin commands over the HTTP API: setup keys, peers and groups."""

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
    print_text,
    segment,
)

keys_app = typer.Typer(help="Setup keys: create, list, revoke.", no_args_is_help=True)
peers_app = typer.Typer(help="Peers: list, show, rename, delete.", no_args_is_help=True)
tokens_app = typer.Typer(help="Admin tokens: create, list, revoke.", no_args_is_help=True)
groups_app = typer.Typer(help="Groups: create, list, add/remove members, delete.",
                         no_args_is_help=True)


@keys_app.command("create")
def keys_create(
    name: str = typer.Argument(..., help="A name for the key"),
    reusable: bool = typer.Option(False, "--reusable", help="Usable by several peers"),
    usage_limit: int = typer.Option(0, "--usage-limit", min=0,
                                    help="Max enrolments (reusable keys; 0 = unlimited)"),
    expires_in: int | None = typer.Option(None, "--expires-in", min=1,
                                          help="Seconds until the key expires"),
    group: list[str] = typer.Option([], "--group", help="Auto-group for enrolled peers"),
    peer_name: str | None = typer.Option(
        None, "--peer-name", help="The name its peer gets, reserved until then (one-off keys)"),
    role: str = typer.Option("agent", "--role",
                             help="agent, or gateway (for `wiremesh gateway enrol`)"),
    server: str | None = ServerOpt, token: str | None = TokenOpt,
    ca_file: Path | None = CaFileOpt, insecure: bool = InsecureOpt, as_json: bool = JsonOpt,
) -> None:
    """Create a setup key; its secret is shown only now."""
    k = Api(server, token, ca_file, insecure, as_json).call("POST", "/setup-keys", json={
        "name": name, "reusable": reusable, "usage_limit": usage_limit,
        "expires_in_s": expires_in, "auto_groups": group, "peer_name": peer_name,
        "role": role})
    if as_json:
        print_json(k)
    else:
        print_text("setup key ", (k["name"], "bold"), f" (id {k['id']}): {k['key']}\n"
                   f"server fingerprint: {k['server_fingerprint']}  (wiremesh up "
                   f"--server-fingerprint {k['server_fingerprint']})")


@keys_app.command("list")
def keys_list(server: str | None = ServerOpt, token: str | None = TokenOpt,
              ca_file: Path | None = CaFileOpt, insecure: bool = InsecureOpt,
              as_json: bool = JsonOpt) -> None:
    """List setup keys (secrets are never shown again, only their prefix)."""
    keys = Api(server, token, ca_file, insecure, as_json).call("GET", "/setup-keys", expect=list)
    if as_json:
        print_json(keys)
        return
    print_table("setup keys", ["id", "name", "prefix", "reusable", "used", "limit", "expires",
                          "valid", "groups"],
           [[k["id"], k["name"], k["prefix"], k["reusable"], k["used_count"],
             k["usage_limit"] or "-", k["expires_at"] or "never", k["valid"],
             ",".join(k["auto_groups"])] for k in keys])


@keys_app.command("revoke")
def keys_revoke(key_id: int = typer.Argument(..., help="Setup key id"),
                server: str | None = ServerOpt, token: str | None = TokenOpt,
                ca_file: Path | None = CaFileOpt, insecure: bool = InsecureOpt) -> None:
    """Revoke a setup key; enrolled peers stay."""
    Api(server, token, ca_file, insecure).call("DELETE", f"/setup-keys/{key_id}")
    console.print(f"revoked setup key {key_id}")


@tokens_app.command("create")
def tokens_create(
    name: str = typer.Argument(..., help="A name for the token (the audit log shows it)"),
    role: str = typer.Option("admin", "--role", help="admin, or auditor (read only)"),
    server: str | None = ServerOpt, token: str | None = TokenOpt,
    ca_file: Path | None = CaFileOpt, insecure: bool = InsecureOpt, as_json: bool = JsonOpt,
) -> None:
    """Create an admin token; its secret is shown only now."""
    t = Api(server, token, ca_file, insecure, as_json).call("POST", "/admin-tokens",
                                                   json={"name": name, "role": role})
    if as_json:
        print_json(t)
    else:
        print_text("admin token ", (t["name"], "bold"), f" ({t['role']}): {t['token']}")


@tokens_app.command("list")
def tokens_list(server: str | None = ServerOpt, token: str | None = TokenOpt,
                ca_file: Path | None = CaFileOpt, insecure: bool = InsecureOpt,
                as_json: bool = JsonOpt) -> None:
    """List admin tokens (never their secrets)."""
    tokens = Api(server, token, ca_file, insecure, as_json).call("GET", "/admin-tokens",
                                                                 expect=list)
    if as_json:
        print_json(tokens)
        return
    print_table("admin tokens", ["name", "role", "created", "revoked"],
                [[t["name"], t["role"], t["created_at"], t["revoked_at"] or "-"]
                 for t in tokens])


@tokens_app.command("revoke")
def tokens_revoke(name: str = typer.Argument(..., help="Admin token name"),
                  server: str | None = ServerOpt, token: str | None = TokenOpt,
                  ca_file: Path | None = CaFileOpt, insecure: bool = InsecureOpt) -> None:
    """Revoke an admin token: every replica refuses it from now on."""
    Api(server, token, ca_file, insecure).call("DELETE", f"/admin-tokens/{segment(name, 'NAME')}")
    console.print(f"revoked admin token {name}")


@peers_app.command("list")
def peers_list(server: str | None = ServerOpt, token: str | None = TokenOpt,
               ca_file: Path | None = CaFileOpt, insecure: bool = InsecureOpt,
               as_json: bool = JsonOpt) -> None:
    """List peers."""
    peers = Api(server, token, ca_file, insecure, as_json).call("GET", "/peers", expect=list)
    if as_json:
        print_json(peers)
        return
    print_table("peers", ["id", "name", "overlay ip", "endpoints", "groups", "connected",
                          "paths (peer: direct endpoint | relayed, last handshake)"],
                [[p["id"], p["name"], p["overlay_ip"], ",".join(p["endpoints"]),
                  ",".join(p["groups"]), p["connected"], _paths(p.get("paths", []))]
                 for p in peers])


def _paths(paths: list[dict]) -> str:
    return "\n".join(
        f"{x['peer']}: {x['endpoint'] or x['path'] if x['path'] == 'direct' else x['path']}"
        f"{', ' + x['last_handshake'][11:19] if x.get('last_handshake') else ''}"
        for x in paths)


@peers_app.command("show")
def peers_show(peer: str = typer.Argument(..., help="Peer name or id"),
               server: str | None = ServerOpt, token: str | None = TokenOpt,
               ca_file: Path | None = CaFileOpt, insecure: bool = InsecureOpt) -> None:
    """Show one peer as JSON."""
    print_json(Api(server, token, ca_file, insecure).call("GET", f"/peers/{segment(peer, 'PEER')}"))


@peers_app.command("rename")
def peers_rename(peer: str = typer.Argument(..., help="Peer name or id"),
                 new_name: str = typer.Argument(..., help="New name"),
                 server: str | None = ServerOpt, token: str | None = TokenOpt,
                 ca_file: Path | None = CaFileOpt, insecure: bool = InsecureOpt) -> None:
    """Rename a peer."""
    p = Api(server, token, ca_file, insecure).call("PATCH", f"/peers/{segment(peer, 'PEER')}",
                                                   json={"name": new_name})
    console.print(f"peer {p['id']} is now {p['name']}")


@peers_app.command("delete")
def peers_delete(peer: str = typer.Argument(..., help="Peer name or id"),
                 server: str | None = ServerOpt, token: str | None = TokenOpt,
                 ca_file: Path | None = CaFileOpt, insecure: bool = InsecureOpt) -> None:
    """Delete a peer: it disappears from every other peer's netmap."""
    Api(server, token, ca_file, insecure).call("DELETE", f"/peers/{segment(peer, 'PEER')}")
    console.print(f"deleted peer {peer}")


@groups_app.command("list")
def groups_list(server: str | None = ServerOpt, token: str | None = TokenOpt,
                ca_file: Path | None = CaFileOpt, insecure: bool = InsecureOpt,
                as_json: bool = JsonOpt) -> None:
    """List groups and their members."""
    groups = Api(server, token, ca_file, insecure, as_json).call("GET", "/groups", expect=list)
    if as_json:
        print_json(groups)
        return
    print_table("groups", ["name", "members"],
           [[g["name"] + (" (built in)" if g["builtin"] else ""), ", ".join(g["members"])]
            for g in groups])


@groups_app.command("create")
def groups_create(name: str = typer.Argument(...),
                  member: list[str] = typer.Option([], "--member", help="Peer name; repeatable"),
                  server: str | None = ServerOpt, token: str | None = TokenOpt,
                  ca_file: Path | None = CaFileOpt, insecure: bool = InsecureOpt) -> None:
    """Create a group."""
    Api(server, token, ca_file, insecure).call("POST", "/groups",
                                               json={"name": name, "members": member})
    console.print(f"created group {name}")


@groups_app.command("add")
def groups_add(group: str = typer.Argument(...), peer: str = typer.Argument(...),
               server: str | None = ServerOpt, token: str | None = TokenOpt,
               ca_file: Path | None = CaFileOpt, insecure: bool = InsecureOpt) -> None:
    """Add a peer to a group."""
    got = Api(server, token, ca_file, insecure).call(
        "POST", f"/groups/{segment(group, 'GROUP')}/members", json={"peer": peer})
    console.print(f"added {peer} to {group}" if got.get("changed", True)
                  else f"{peer} is in {group} already: nothing to add")


@groups_app.command("remove")
def groups_remove(group: str = typer.Argument(...), peer: str = typer.Argument(...),
                  server: str | None = ServerOpt, token: str | None = TokenOpt,
                  ca_file: Path | None = CaFileOpt, insecure: bool = InsecureOpt) -> None:
    """Remove a peer from a group."""
    got = Api(server, token, ca_file, insecure).call(
        "DELETE", f"/groups/{segment(group, 'GROUP')}/members/{segment(peer, 'PEER')}")
    console.print(f"removed {peer} from {group}" if got.get("changed", True)
                  else f"{peer} is not in {group}: nothing to remove")


@groups_app.command("delete")
def groups_delete(name: str = typer.Argument(...), server: str | None = ServerOpt,
                  token: str | None = TokenOpt,
                  ca_file: Path | None = CaFileOpt, insecure: bool = InsecureOpt) -> None:
    """Delete a group (refused while a policy or route uses it)."""
    Api(server, token, ca_file, insecure).call("DELETE", f"/groups/{segment(name, 'NAME')}")
    console.print(f"deleted group {name}")
