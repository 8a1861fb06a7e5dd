"""Users in a real lab: a machine enrols as its user through the lab's OpenID provider
(`wiremesh up --login`, a person signing in on the way), and when the provider removes that
user, the user's peer leaves the other peers' WireGuard configuration at the next netmap
push: the server learns it from the refused refresh token on its next check."""

from __future__ import annotations

import time

import pytest
from rich.console import Console

from wiremesh.lab.layout import Layout
from wiremesh.lab.mesh import wait_until
from wiremesh.lab.netns import Lab
from wiremesh.lab.provider import LabUser, missing_provider_requirements
from wiremesh.lab.sso import login_agent, with_provider
from wiremesh.lab.topology import build_mesh

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(
    bool(missing_provider_requirements()),
    reason=f"needs {', '.join(missing_provider_requirements())}")]

CHECK_S = 2


def test_a_user_removed_at_the_provider_loses_mesh_access() -> None:
    with Lab() as lab:
        mesh = build_mesh(lab, Layout.public(["app", "bob"]))
        try:
            with with_provider(mesh, [LabUser("bob", "bob-pw", ("engineering",))],
                               check_interval_s=CHECK_S) as idp:
                mesh.start_server()
                app, bob = mesh.agents["app"], mesh.agents["bob"]
                mesh.start_agent(app, mesh.create_setup_key("app"))
                login_agent(mesh, idp, bob, "bob")
                mesh.wait_agents_configured([app, bob], 1)
                assert "logged in as Bob" in mesh.log("bob").read_text()
                users = mesh.admin("users", "list")
                assert [(u["sub"], u["peers"], u["role"]) for u in users] == [
                    ("bob", ["bob"], "user")]
                assert bob.host.ping(app.overlay_ip, count=3)
                version = app.metrics()["wiremesh_agent_netmap_version"]

                idp.remove_user("bob")
                removed = time.monotonic()
                wait_until(lambda: bob.public_key not in app.wg_peers(), CHECK_S * 5,
                           "bob's peer to leave app's WireGuard configuration")
                took = time.monotonic() - removed
                # A netmap push (not a restart or a timeout) took bob out, within about one
                # re-check interval of the removal.
                assert app.metrics()["wiremesh_agent_netmap_version"] > version
                print(f"bob left app's WireGuard peers {took:.1f}s after the removal")
                assert not bob.host.ping(app.overlay_ip, count=2)
                bob_now = mesh.admin("users", "list")[0]
                assert bob_now["disabled_at"] and "refresh token" in bob_now["disabled_reason"]
        except BaseException:
            mesh.print_logs(Console(stderr=True))
            raise
