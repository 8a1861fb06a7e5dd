"""A lab mesh whose server logs users in through the lab's OpenID provider, and agents that
enrol as users (`wiremesh up --login`) with a person signing in on the way."""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator, Sequence

from wiremesh.lab.mesh import LabAgent, MeshLab, wait_until
from wiremesh.lab.netns import LabError
from wiremesh.lab.provider import LabUser, Provider, running_provider

IDP_PORT = 9443  # on the server host's address, next to the server
ADMINS, AUDITORS = "wm-admins", "wm-auditors"  # provider groups mapped to roles
_DEVICE_URL = re.compile(r"open (https://\S+)")


@contextlib.contextmanager
def with_provider(mesh: MeshLab, users: Sequence[LabUser], check_interval_s: int = 2,
                  peer_login_ttl_s: int = 0) -> Iterator[Provider]:
    """Run the provider on the server host and configure the (not yet started) server to
    log users in through it: groups `wm-admins`/`wm-auditors` map to admin/auditor, users are
    re-checked at the provider every `check_interval_s`."""
    with running_provider(mesh.lab.log_dir / "idp", users, [f"{mesh.url}/auth/callback"],
                          host=mesh.server, listen_ip=mesh.server.ip, port=IDP_PORT,
                          tls=mesh.tls) as idp:
        mesh.server_args = [
            "--oidc-issuer", idp.issuer, "--oidc-client-id", idp.client_id,
            "--oidc-client-secret-file", str(idp.client_secret_file),
            "--oidc-ca-file", str(mesh.tls.ca_file),
            "--oidc-scopes", "openid email profile groups offline_access",
            "--oidc-admin-group", ADMINS, "--oidc-auditor-group", AUDITORS,
            "--oidc-check-interval", str(check_interval_s),
            "--peer-login-ttl", str(peer_login_ttl_s)]
        yield idp


def start_login_agent(mesh: MeshLab, agent: LabAgent, timeout: float = 60) -> str:
    """Start `wiremesh up --login` on `agent`; the login URL it prints for its user (the
    provider's page, with the code in it)."""
    mesh.start_agent(agent, login=True)
    found: list[str] = []

    def url_shown() -> bool:
        mesh.agent_alive(agent)
        found[:] = _DEVICE_URL.findall(mesh.log(agent.name).read_text(errors="replace"))
        return bool(found)

    wait_until(url_shown, timeout, f"{agent.name} to show its login URL")
    return found[-1]


def login_agent(mesh: MeshLab, idp: Provider, agent: LabAgent, user: str,
                timeout: float = 60) -> None:
    """Start `wiremesh up --login` on `agent` and have `user` sign in at the URL it prints
    (from the server host: the person's browser sits where the provider is reachable)."""
    url = start_login_agent(mesh, agent, timeout)
    res = mesh.server.run([sys.executable, "-m", "wiremesh.lab.provider", url, user,
                           idp.users[user].password, str(mesh.tls.ca_file)],
                          check=False, timeout=timeout)
    if res.returncode != 0:
        raise LabError(f"{user} could not sign in for {agent.name}: "
                       f"{(res.stderr or res.stdout).strip()}")
