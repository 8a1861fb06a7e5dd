"""What the person running the agent chose (not what enrolment gave): names through the
system resolver, and the exit node. Saved in `prefs.json` beside the state (0600) by
`wiremesh up` and `wiremesh set`; a running agent reads it again on SIGHUP, so a choice
changes without taking the mesh down.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import pydantic
from pydantic import Field, TypeAdapter, ValidationError

from wiremesh.agent.state import read_json, write_private_json
from wiremesh.core.wire import Name, describe

AUTO = "auto"  # the exit node: the best live one the netmap offers, failing over


class PrefsError(RuntimeError):
    pass


@pydantic.dataclasses.dataclass(frozen=True)
class Prefs:
    # Resolve `<peer>.<mesh domain>` through the system resolver.
    dns: bool = True
    # The resolv.conf to manage instead of asking systemd-resolved (None: resolved when it
    # runs, else /etc/resolv.conf).
    resolv_conf: Annotated[str | None, Field(max_length=4096)] = None
    # None: no exit node; "auto"; or the name of an exit node peer.
    exit_node: Name | None = None
    # With an exit node, keep the local networks (on-link routes) outside the tunnel.
    exit_allow_lan: bool = False


_PREFS = TypeAdapter(Prefs)


def path(state_dir: Path) -> Path:
    return state_dir / "prefs.json"


def load(state_dir: Path) -> Prefs:
    p = path(state_dir)
    try:
        return _PREFS.validate_python(read_json(p))
    except FileNotFoundError:
        return Prefs()
    except ValidationError as e:
        raise PrefsError(f"{p}: {describe(e)}") from None
    except OSError as e:
        raise PrefsError(f"{p} cannot be read: {e.strerror or e}") from None
    except ValueError as e:
        raise PrefsError(f"{p} is unreadable: {e}") from None


def save(state_dir: Path, prefs: Prefs) -> None:
    p = path(state_dir)
    try:
        write_private_json(p, asdict(prefs))
    except OSError as e:
        raise PrefsError(f"cannot save {p}: {e.strerror or e}") from None
