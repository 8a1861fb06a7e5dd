"""The agent's saved state: credentials, overlay address and the last netmap (file 0600).

Written atomically (temp file + rename) so a crash mid-write never leaves a torn state file
that would stop the agent from rebuilding the mesh while the server is down.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from stat import S_IMODE, S_ISDIR, S_IWGRP, S_IWOTH
from typing import Annotated, Any

import pydantic
from pydantic import Field, TypeAdapter, ValidationError

from wiremesh.agent.connection import Trust
from wiremesh.core.wire import (
    NETMAP,
    Endpoint,
    Mtu,
    Name,
    Netmap,
    OverlayIP,
    WgKey,
    describe,
)
from wiremesh.wg.keys import write_private_file

DEFAULT_STATE_DIR = Path("/var/lib/wiremesh")
log = logging.getLogger("wiremesh.agent.state")


class StateError(RuntimeError):
    pass


class StateDirError(StateError):
    """The state dir itself is unusable (no directory, or others could write to it): unlike a
    missing or damaged state file, never a reason to enrol afresh or carry on without it."""


@pydantic.dataclasses.dataclass
class AgentConfig:
    """What enrolment gave this agent; validated on load like everything from the server."""

    server: str
    peer_id: int
    name: Name
    token: str
    overlay_ip: OverlayIP
    overlay_prefix_len: Annotated[int, Field(ge=1, le=32)]
    interface: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,15}$")]
    listen_port: Annotated[int, Field(ge=1, le=65535)]
    endpoints: list[Endpoint]
    # The key every netmap stream line must be signed with, pinned at enrolment (None only
    # in state saved before signing existed: such an agent accepts no update until re-enrolled).
    server_key: WgKey | None = None
    # The server's stream key (X25519), checked against `server_key` at enrolment: streams
    # then carry MACs under the key agreed with it instead of a signature per line. None
    # (enrolled with a server from before MACs): lines stay signed.
    server_stream_key: WgKey | None = None
    # How the server is verified, kept so `wiremesh agent` restarts check it the same way.
    ca_file: str | None = None
    insecure: bool = False
    # This peer's WireGuard MTU (`wiremesh up --mtu`), over the netmap's mesh-wide one.
    mtu: Mtu | None = None
    # Other replicas of the same server (one database), tried in turn when `server` fails.
    replicas: list[str] = Field(default_factory=list)

    @property
    def trust(self) -> Trust:
        return Trust(self.ca_file, self.insecure)

    @property
    def servers(self) -> list[str]:
        return [self.server, *(u for u in self.replicas if u != self.server)]


_CONFIG = TypeAdapter(AgentConfig)


@dataclass
class AgentState:
    config: AgentConfig
    netmap: Netmap | None = None


def files(state_dir: Path) -> tuple[Path, Path]:
    """What enrolment leaves in `state_dir`: the saved state and the private key."""
    return state_dir / "state.json", state_dir / "private.key"


def private_key_path(state_dir: Path) -> Path:
    return files(state_dir)[1]


def write_private_json(path: Path, data: dict[str, Any]) -> None:
    write_private_file(path, json.dumps(data, separators=(",", ":")).encode())


def read_json(path: Path) -> Any:
    """The JSON value in the file `path`: OSError when it cannot be read, ValueError when it
    is not JSON in UTF-8. Nesting too deep for the parser is a ValueError too: json raised
    RecursionError on `[[[...]]]`, which ended commands in a traceback."""
    data = path.read_bytes()
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("its JSON nests too deeply") from None


def check_dir(state_dir: Path) -> None:
    """Refuse a state dir that someone other than us (or root) could write to. Whoever can
    replace files in it can swap the private key, or the saved server, pinned server key and
    CA, and so take this peer's place in the mesh or steer an agent that runs as root; or
    leave a locked pid file that makes `wiremesh down` signal a process of their choice.
    A missing dir passes: it is made 0700 when first written."""
    try:
        st = state_dir.stat()
    except FileNotFoundError:
        return
    except OSError as e:
        raise StateDirError(f"state dir {state_dir} cannot be read: {e.strerror or e}") from None
    if not S_ISDIR(st.st_mode):
        raise StateDirError(f"state dir {state_dir} is not a directory")
    if st.st_uid not in (os.geteuid(), 0):
        raise StateDirError(f"state dir {state_dir} belongs to another user (uid {st.st_uid}), "
                            "who could replace its private key or saved state; "
                            f"`chown` it to {os.geteuid()}")
    if st.st_mode & (S_IWGRP | S_IWOTH):
        raise StateDirError(f"state dir {state_dir} is writable by others (mode "
                            f"{S_IMODE(st.st_mode):04o}), who could replace its private key or "
                            f"saved state; `chmod go-w {state_dir}`")


def save(state_dir: Path, state: AgentState) -> None:
    data: dict[str, Any] = {"config": asdict(state.config)}
    if state.netmap is not None:
        data["netmap"] = NETMAP.dump_python(state.netmap, mode="json")
    write_private_json(files(state_dir)[0], data)


def load(state_dir: Path) -> AgentState:
    check_dir(state_dir)
    path = files(state_dir)[0]
    try:
        data = read_json(path)
        if not isinstance(data, dict) or "config" not in data:
            raise ValueError("it holds no agent configuration ('config')")
        cfg = _CONFIG.validate_python(data["config"])
    except FileNotFoundError:
        raise StateError(f"no saved state in {state_dir}; enrol first with `wiremesh up`") from None
    except OSError as e:
        raise StateError(f"saved state {path} cannot be read: {e.strerror or e}") from None
    except ValidationError as e:
        raise StateError(f"saved state {path} is unreadable: {describe(e)}") from None
    except (ValueError, TypeError) as e:
        raise StateError(f"saved state {path} is unreadable: {e}") from None
    nm = None
    if data.get("netmap") is not None:
        try:
            nm = NETMAP.validate_python(data["netmap"])
        except ValidationError as e:
            # Never enforce what does not validate; the server sends a full map instead.
            log.error("saved netmap in %s is invalid, starting without it: %s", path,
                      describe(e))
    return AgentState(cfg, nm)
