"""A lab that stays up to explore: `wiremesh lab up` builds it and leaves every process
running, `wiremesh lab shell HOST` opens a shell in a host, `wiremesh lab down` removes it.

What `up` built is written to RECORD (the run id, each host's namespace, the server's URL,
admin token and CA file), so `shell` and `down` work from any later command; one such lab
at a time.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from wiremesh.lab.layout import Layout
from wiremesh.lab.mesh import MeshLab, wait_until
from wiremesh.lab.nat_scenario import LAYOUT as NAT_LAYOUT
from wiremesh.lab.netns import Lab, LabError, clean_leftovers
from wiremesh.lab.topology import build_mesh

RECORD = Path("/run/wiremesh-lab.json")
TOPOLOGIES = ("public", "nat")


@dataclass
class LabRecord:
    run_id: str
    log_dir: str
    hosts: dict[str, str]  # host name -> namespace
    server_url: str
    admin_token: str
    ca_file: str

    def env(self) -> dict[str, str]:
        """What the admin CLI reads its server, token and CA from."""
        return {"WIREMESH_SERVER": self.server_url, "WIREMESH_TOKEN": self.admin_token,
                "WIREMESH_CA_FILE": self.ca_file}


def load_record() -> LabRecord:
    try:
        return LabRecord(**json.loads(RECORD.read_text()))
    except FileNotFoundError:
        raise LabError("no lab is up (start one with `wiremesh lab up`)") from None
    except (OSError, ValueError, TypeError) as e:
        raise LabError(f"{RECORD} is unreadable ({e}); remove it, then "
                       "`wiremesh lab clean --prefix wm<id>`") from None


def layout_for(topology: str, peers: int) -> Layout:
    if topology == "public":
        return Layout.public(f"a{i}" for i in range(1, peers + 1))
    if topology == "nat":
        return NAT_LAYOUT
    raise LabError(f"--topology {topology!r}: choose {' or '.join(TOPOLOGIES)}")


def up(topology: str, peers: int, console: Console) -> LabRecord:
    if RECORD.exists():
        raise LabError(f"a lab is already up ({load_record().run_id}): `wiremesh lab down` first")
    layout = layout_for(topology, peers)
    lab = Lab()
    try:
        mesh = build_mesh(lab, layout)
        mesh.start("explore")
        mesh.wait_agents_configured(mesh.agents.values(), len(mesh.agents) - 1, timeout=120)
        record = LabRecord(lab.id, str(lab.log_dir),
                           {name: h.ns for name, h in lab.hosts.items()}, mesh.url,
                           mesh.admin_token, str(mesh.tls.ca_file))
        _wait_served(mesh)
        RECORD.write_text(json.dumps(asdict(record), indent=1) + "\n")
        RECORD.chmod(0o600)
    except BaseException:
        lab.close()
        raise
    return record


def _wait_served(mesh: MeshLab) -> None:
    wait_until(lambda: len(mesh.admin("peers", "list")) == len(mesh.agents), 60,
               "every agent to enrol")


def describe(record: LabRecord, console: Console) -> None:
    t = Table(title=f"lab {record.run_id} is up (logs in {record.log_dir})")
    t.add_column("host")
    t.add_column("open a shell in it")
    for name in record.hosts:
        t.add_row(name, f"wiremesh lab shell {name}")
    console.print(t)
    console.print(f"admin API: {record.server_url}  token: {record.admin_token}  "
                  f"CA: {record.ca_file}", highlight=False)
    console.print("in any lab shell the admin CLI is set up, e.g. `wiremesh peers list`; "
                  "remove the lab with `wiremesh lab down`", highlight=False)


def shell_argv(host: str, command: list[str]) -> list[str]:
    record = load_record()
    ns = record.hosts.get(host)
    if ns is None:
        raise LabError(f"no host {host!r} in lab {record.run_id}; hosts: "
                       f"{', '.join(record.hosts)}")
    return ["ip", "netns", "exec", ns, *(command or [os.environ.get("SHELL", "/bin/bash")])]


def shell(host: str, command: list[str]) -> None:
    """Replace this process with a shell (or `command`) in `host`'s namespace."""
    argv = shell_argv(host, command)
    record = load_record()
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, **record.env(), "WIREMESH_LAB_HOST": host,
           "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}"}
    os.execvpe(argv[0], argv, env)


def down() -> list[str]:
    record = load_record()
    removed = clean_leftovers(record.run_id)
    shutil.rmtree(record.log_dir, ignore_errors=True)
    RECORD.unlink(missing_ok=True)
    return removed
