"""Shared CLI plumbing: admin API access, errors as one line (then the server's faults, one a
line) with exit code 2, --json output."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote

import httpx
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from wiremesh.agent.connection import (
    INSECURE_HELP,
    INSECURE_WARNING,
    Trust,
    TrustError,
    unreachable,
)

# Text is printed as given: no emoji codes (a fingerprint 'SHA256:abc:...' lost ':abc:') and no
# markup, since most of what is printed comes from users or the server, where '[web]' is a
# group list, not a style (it vanished). Style goes through print_text's (text, style) parts.
console = Console(emoji=False, markup=False)
err_console = Console(stderr=True, emoji=False, markup=False)

ServerOpt = typer.Option(
    None, "--server", envvar="WIREMESH_SERVER", help="Server URL, e.g. https://mesh.example.org:8443"
)
TokenOpt = typer.Option(
    None, "--token", envvar="WIREMESH_TOKEN",
    help="Admin token (printed at the server's first start)",
)
CaFileOpt = typer.Option(
    None, "--ca-file", envvar="WIREMESH_CA_FILE", dir_okay=False,
    help="PEM file of the CA that signed the server's certificate (default: the system's CAs)",
)
InsecureOpt = typer.Option(False, "--insecure", help=INSECURE_HELP)
JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON instead of a table")


def print_text(*parts: str | tuple[str, str], err: bool = False) -> None:
    """Print `parts`, each plain text or a (text, style) pair, to stdout (stderr if `err`).
    soft_wrap: each line whole whatever the terminal width, so scripts and logs get it."""
    (err_console if err else console).print(Text.assemble(*parts), soft_wrap=True)


def fail(message: str, code: int = 2, faults: Sequence[str] = ()) -> NoReturn:
    """Print `message` as one error line, then each of `faults` on a line of its own, and
    exit with `code`."""
    print_text(("error:", "bold red"), " ", message, err=True)
    for fault in faults:
        print_text("  ", fault, err=True)
    raise typer.Exit(code)


# Every file a command reads whole is small: keys, secrets, policy files (1 MiB at most on
# the server too). /dev/zero or a disk image given by mistake was read until memory ran out.
READ_LIMIT = 1 << 20


def read_text(path: Path, what: str) -> str:
    """The text of the file `path` (given as `what`, e.g. an option), or exit 2 saying why
    not: missing, unreadable, a directory, larger than READ_LIMIT, or not UTF-8 text."""
    try:
        with path.open("rb") as f:
            data = f.read(READ_LIMIT + 1)
    except OSError as e:
        fail(f"{what}: cannot read {path}: {e.strerror or e}")
    if len(data) > READ_LIMIT:
        fail(f"{what}: {path} is larger than {READ_LIMIT} bytes (1 MiB), the limit")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        fail(f"{what}: {path} is not UTF-8 text (byte {e.start + 1} is {e.object[e.start]:#04x})")


def split_listen(listen: str, option: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 hosts in brackets) from an option value, or exit 2 naming it."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        fail(f"{option} {listen!r}: expected HOST:PORT, e.g. 0.0.0.0:8080")
    return host.strip("[]") or "0.0.0.0", int(port)


def print_table(title: str, columns: list[str], rows: list[list[object]]) -> None:
    t = Table(title=title)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*[_cell(v) for v in r])
    console.print(t)


def _cell(value: object) -> str | Text:
    """A table cell: styled Text as it is, None empty, anything else as plain text."""
    if isinstance(value, Text):
        return value
    return "" if value is None else str(value)


def _finite(obj: Any) -> Any:
    """`obj` with NaN and infinities as null: JSON has no such numbers, and scripts reading
    --json output with a strict parser (jq, JSON.parse) refuse them."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(_finite(obj), indent=None, default=str, allow_nan=False)
                     + "\n")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    # One line per HTTP request is noise (and would split a CLI error over two lines).
    logging.getLogger("httpx").setLevel(logging.DEBUG if verbose else logging.WARNING)


def server_trust(server: str, ca_file: Path | None, insecure: bool) -> Trust:
    """How to verify `server`, from the command's options; exits 2 when they refuse it."""
    trust = Trust(str(ca_file.resolve()) if ca_file else None, insecure)
    try:
        trust.check(server)
    except TrustError as e:
        fail(str(e))
    if insecure:
        print_text(("warning:", "bold yellow"), " ", INSECURE_WARNING.format(url=server),
                   err=True)
    return trust


def segment(value: str, what: str) -> str:
    """`value` (a name or id the user gave) as one segment of an API path. Quoted: a '/',
    '?' or '#' in it reached another resource (`tokens revoke ../groups/x` deleted group x,
    as httpx resolves dot segments); an empty or dot name is refused for the same reason."""
    if value in ("", ".", ".."):
        fail(f"{what}: {value!r} names nothing")
    return quote(value, safe="")


class Api:
    """Admin calls against a server; every failure becomes one clear line and exit code 2.
    With `as_json` (a command's --json) an error answer's problem body is also printed to
    stdout as it came, faults (`errors`) and all, for scripts to read."""

    def __init__(self, server: str | None, token: str | None, ca_file: Path | None = None,
                 insecure: bool = False, as_json: bool = False) -> None:
        self.as_json = as_json
        server = server or os.environ.get("WIREMESH_SERVER")
        if not server:
            fail("no server given: use --server URL or set WIREMESH_SERVER")
        if not token:
            fail("no admin token given: use --token or set WIREMESH_TOKEN")
        trust = server_trust(server, ca_file, insecure)
        self.http = httpx.Client(base_url=server, timeout=30.0, verify=trust.verify(),
                                 headers={"Authorization": f"Bearer {token}"})

    def call(self, method: str, path: str, expect: type = dict, **kw: Any) -> Any:
        """The answer: a JSON object (`expect` dict), a list of them (list) or text (str);
        anything else (a proxy's error page, some other server) ends the command in one
        line, as does a field the commands read that the answer lacks."""
        url = str(self.http.base_url).rstrip("/")
        try:
            r = self.http.request(method, f"/api/v1{path}", **kw)
        except httpx.HTTPError as e:
            fail(unreachable(url, e))
        if r.status_code >= 400:
            self._refused(r)
        where = f"the answer of {url} to {method} /api/v1{path}"
        if 300 <= r.status_code < 400:  # its empty body is no success: nothing was done
            fail(f"{where} is a redirect to {r.headers.get('location', 'nowhere')} "
                 f"(HTTP {r.status_code}): is --server the wiremesh server's URL?")
        if not r.content or expect is str:
            return r.text or None
        try:
            body = json.loads(r.content, object_hook=lambda d: _Answer(where, d))
        except ValueError:
            body = None
        if not (isinstance(body, _Answer) if expect is dict else isinstance(body, list) and all(
                isinstance(x, _Answer) for x in body)):
            what = "a JSON object" if expect is dict else "a JSON list of objects"
            fail(f"{where} is not {what} (HTTP {r.status_code}, "
                 f"{r.headers.get('content-type', 'no content type')}): is it a wiremesh "
                 "server?")
        return body

    def _refused(self, r: httpx.Response) -> NoReturn:
        problem = _problem(r)
        if self.as_json and problem is not None:
            print_json(problem)
        detail = _problem_detail(r, problem)
        fail(f"{detail} (HTTP {r.status_code})", faults=_faults(problem, detail))


class _Answer(dict[str, Any]):
    """A JSON object the server answered; reading a field it lacks ends the command."""

    def __init__(self, where: str, fields: dict[str, Any]) -> None:
        super().__init__(fields)
        self.where = where

    def __missing__(self, key: str) -> NoReturn:
        fail(f"{self.where} has no field {key!r}: is it a wiremesh server of this version?")


def _problem(r: httpx.Response) -> dict[str, Any] | None:
    """An error answer's body, if it is a JSON object (a problem body, RFC 9457)."""
    try:
        body = r.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _problem_detail(r: httpx.Response, problem: dict[str, Any] | None) -> str:
    """What an error answer says, on one line: its problem body's detail, else its text."""
    for key in ("detail", "title"):
        if problem is not None and isinstance(problem.get(key), str) and problem[key]:
            return str(problem[key])
    return " ".join(r.text.split())[:200] or r.reason_phrase


def _faults(problem: dict[str, Any] | None, detail: str) -> list[str]:
    """The problem body's `errors`, one line each ("line 3: field: message"); none when the
    detail already says every one (the server joins a few faults into it, and names only
    the first of many: "2 policy test(s) failed" said nothing of which)."""
    errors = problem.get("errors") if problem is not None else None
    if not isinstance(errors, list):
        return []
    faults = [e for e in errors if isinstance(e, dict)]
    if all(str(e.get("message", "")) in detail for e in faults):
        return []
    return [_fault_line(e) for e in faults]


def _fault_line(fault: dict[str, Any]) -> str:
    message = " ".join(str(fault.get("message", "")).split())
    where = f"line {fault['line']}: " if fault.get("line") is not None else ""
    # A policy test's message names its line already: not "line 54: tests: line 54: ...".
    message = message.removeprefix(where)
    field = f"{fault['field']}: " if fault.get("field") else ""
    return f"{where}{field}{message}"
