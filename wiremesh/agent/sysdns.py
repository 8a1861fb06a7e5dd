"""Wiring the agent's resolver into the system resolver, and undoing it exactly.

- systemd-resolved (when it runs): `resolvectl dns IF ADDR` and `resolvectl domain IF ~DOMAIN
  ~ZONE...` send only the mesh domain and split-DNS zones to our resolver, on the WireGuard
  interface's link; `resolvectl revert IF` undoes it. Nothing else of the system changes.
- otherwise a resolv.conf file (`/etc/resolv.conf`, or any path: the lab gives each namespace
  `/etc/netns/NS/resolv.conf`, which `ip netns exec` mounts over /etc/resolv.conf) is
  replaced by one naming our resolver; the resolver forwards other names to the nameservers
  the original listed. The original (file, symlink or nothing, with its bytes and mode) is
  saved next to the agent's state before the file is touched, and put back on stop, or on the
  next start after a crash. If someone else rewrote the file meanwhile (no marker of ours in
  it), theirs is newer than our backup and is left alone.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from wiremesh.agent.state import read_json, write_private_json

log = logging.getLogger("wiremesh.agent.sysdns")
DEFAULT_RESOLV_CONF = Path("/etc/resolv.conf")
MARKER = "# wiremesh agent:"
_RESOLVED_SOCKET = Path("/run/systemd/resolve/io.systemd.Resolve")


class SysDnsError(RuntimeError):
    pass


class SystemDns(Protocol):
    def install(self, address: str, domains: Sequence[str]) -> tuple[str, ...]:
        """Point the system at our resolver for `domains` (the mesh domain first); returns
        the nameservers the resolver should forward other names to."""
        ...

    def restore(self) -> None: ...


def parse_nameservers(text: str) -> list[str]:
    return [parts[1] for line in text.splitlines()
            if len(parts := line.split()) >= 2 and parts[0] == "nameserver"]


def render_resolv_conf(original: str, address: str, search: str, backup: Path) -> str:
    """Our resolver first and only; the original's search domains after the mesh domain and
    its options kept."""
    searches: list[str] = [search]
    options: list[str] = []
    for line in original.splitlines():
        parts = line.split()
        if parts and parts[0] in ("search", "domain"):
            searches += [d for d in parts[1:] if d not in searches]
        elif parts and parts[0] == "options":
            options.append(line.strip())
    return "\n".join([
        f"{MARKER} names under {search} come from the mesh; the original file is restored "
        f"when the agent stops (saved in {backup})",
        f"nameserver {address}",
        f"search {' '.join(searches)}",
        *options,
    ]) + "\n"


@dataclass
class ResolvConfFile:
    path: Path
    backup: Path  # JSON: what `path` was before we replaced it

    def install(self, address: str, domains: Sequence[str]) -> tuple[str, ...]:
        if self.backup.exists():
            self.restore()  # left by a run that crashed
        saved = _snapshot(self.path)
        original = str(saved.get("content") or "")
        upstream = tuple(ns for ns in parse_nameservers(original) if ns != address)
        write_private_json(self.backup, saved)
        _replace_file(self.path, render_resolv_conf(original, address, domains[0],
                                                    self.backup).encode(), 0o644)
        log.info("resolv.conf %s points at %s (was %s; forwarding to %s)", self.path, address,
                 saved["kind"], ", ".join(upstream) or "nothing")
        return upstream

    def restore(self) -> None:
        try:
            saved = read_json(self.backup)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            raise SysDnsError(f"cannot read the saved resolv.conf {self.backup}: {e}") from None
        if not _ours(self.path):
            log.warning("%s was rewritten by someone else while the agent ran; leaving theirs",
                        self.path)
        elif saved["kind"] == "absent":
            self.path.unlink(missing_ok=True)
        elif saved["kind"] == "symlink":
            tmp = self.path.with_name(self.path.name + ".wiremesh")
            tmp.unlink(missing_ok=True)
            os.symlink(saved["target"], tmp)
            os.replace(tmp, self.path)
        else:
            _replace_file(self.path, saved["content"].encode("utf-8", "surrogateescape"),
                          saved["mode"])
        self.backup.unlink()
        log.info("resolv.conf %s restored", self.path)


def _ours(path: Path) -> bool:
    try:
        return not path.is_symlink() and MARKER in path.read_text(errors="replace")
    except FileNotFoundError:
        return False


def _snapshot(path: Path) -> dict[str, object]:
    if path.is_symlink():
        return {"kind": "symlink", "target": os.readlink(path),
                "content": _read(path)}  # the content only for its nameservers
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {"kind": "absent", "content": None}
    return {"kind": "file", "content": raw.decode("utf-8", "surrogateescape"),
            "mode": path.stat().st_mode & 0o7777}


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _replace_file(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to `path` atomically (temp file + rename in the same folder)."""
    tmp = path.with_name(path.name + ".wiremesh")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # the umask may have narrowed it
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass
class Resolved:
    ifname: str

    def install(self, address: str, domains: Sequence[str]) -> tuple[str, ...]:
        self._ctl("dns", self.ifname, address)
        self._ctl("domain", self.ifname, *(f"~{d}" for d in domains))
        log.info("systemd-resolved sends %s on %s to %s", ", ".join(domains), self.ifname,
                 address)
        return ()  # resolved asks us only for our domains

    def restore(self) -> None:
        self._ctl("revert", self.ifname)

    def _ctl(self, *args: str) -> None:
        try:
            res = subprocess.run(["resolvectl", *args], capture_output=True, text=True,
                                 timeout=10)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise SysDnsError(f"resolvectl {args[0]}: {e}") from None
        if res.returncode != 0:
            raise SysDnsError(f"resolvectl {' '.join(args)}: {res.stderr.strip()}")


def resolved_running() -> bool:
    return shutil.which("resolvectl") is not None and _RESOLVED_SOCKET.exists()


def system_dns(ifname: str, resolv_conf: Path | None, state_dir: Path) -> SystemDns:
    """systemd-resolved when it runs and no file was asked for, else the resolv.conf file."""
    if resolv_conf is None and resolved_running():
        return Resolved(ifname)
    return ResolvConfFile(resolv_conf or DEFAULT_RESOLV_CONF, state_dir / "resolv.conf.saved")
