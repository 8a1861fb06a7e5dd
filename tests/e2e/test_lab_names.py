"""Names for peers end to end: real agents answer `<peer>.mesh.internal` through each host's
own system resolver (glibc's `getent`, reading the resolv.conf the agent wrote), only for the
peers policy lets them see, and put the resolver configuration back exactly when they stop."""

from __future__ import annotations

import pytest

from wiremesh.lab.layout import Layout
from wiremesh.lab.mesh import wait_until
from wiremesh.lab.netns import Host, Lab
from wiremesh.lab.topology import build_mesh

pytestmark = pytest.mark.e2e

POLICY = """\
groups:
  alphas: [alpha]
  betas: [beta]
policies:
  - name: alpha-to-beta
    sources: [alphas]
    destinations: [betas]
    proto: icmp
"""
ORIGINAL = b"# the host's own\nnameserver 192.0.2.53\noptions timeout:1 attempts:1\n"


def lookup(host: Host, name: str) -> str | None:
    """`name`'s address as the host's system resolver gives it, None if it has none."""
    res = host.run(["getent", "hosts", name], check=False, timeout=15)
    return res.stdout.split()[0] if res.returncode == 0 and res.stdout else None


def test_names_follow_policy_and_resolv_conf_is_restored_on_stop() -> None:
    with Lab() as lab:
        mesh = build_mesh(lab, Layout.public(["alpha", "beta", "gamma"]))
        alpha, beta, gamma = (mesh.agents[n] for n in ("alpha", "beta", "gamma"))
        # beta's host has a resolv.conf of its own; alpha's and gamma's have none.
        beta.host.resolv_conf.write_bytes(ORIGINAL)
        mesh.start("names")
        wait_until(lambda: len(mesh.admin("peers", "list")) == 3, 60, "every agent to enrol")
        policy = lab.log_dir / "policy.yaml"
        policy.write_text(POLICY)
        mesh.admin("policy", "apply", str(policy))
        # gamma is in no policy: nobody may see it, and it sees nobody. The mesh started on
        # the default all-to-all policy, so these names go once the new netmaps arrive.
        wait_until(lambda: lookup(alpha.host, "gamma.mesh.internal") is None, 30,
                   "gamma's name to disappear for alpha")
        wait_until(lambda: lookup(gamma.host, "alpha.mesh.internal") is None, 30,
                   "alpha's name to disappear for gamma")
        mesh.wait_agents_configured([alpha, beta], 1)

        wait_until(lambda: lookup(alpha.host, "beta.mesh.internal") == beta.overlay_ip, 30,
                   "alpha to resolve beta")
        assert lookup(beta.host, "alpha.mesh.internal") == alpha.overlay_ip
        assert lookup(alpha.host, "alpha.mesh.internal") == alpha.overlay_ip
        assert alpha.host.ping("beta.mesh.internal")  # a name any program can use
        assert lookup(gamma.host, "gamma.mesh.internal") == gamma.overlay_ip
        assert b"nameserver " + beta.overlay_ip.encode() in beta.host.resolv_conf.read_bytes()

        # A policy change reaches the names: without the policy alpha loses beta's name.
        policy.write_text(POLICY.split("policies:")[0] + "policies: []\n")
        mesh.admin("policy", "apply", str(policy))
        wait_until(lambda: lookup(alpha.host, "beta.mesh.internal") is None, 30,
                   "beta's name to disappear for alpha")

        for a in (alpha, beta, gamma):
            mesh.stop_agent(a)
        assert beta.host.resolv_conf.read_bytes() == ORIGINAL
        assert not alpha.host.resolv_conf.exists()
        assert not gamma.host.resolv_conf.exists()
