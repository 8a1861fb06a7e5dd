"""A real OpenID provider for the lab and the tests: node-oidc-provider (npm, in lab/idp/)
with a directory of test users the lab can change while it runs.

`running_provider(...)` writes its config, starts it (in a lab host's namespace or on this
machine's loopback), waits until it serves, and always stops it. `sign_in(...)` plays the
person at the browser without a browser: it follows the provider's HTML forms (login,
device code, confirmation) with httpx.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from wiremesh.lab.mesh import stop
from wiremesh.lab.netns import Host, LabError
from wiremesh.lab.pki import ServerCert, make_server_cert

IDP_DIR = Path(__file__).parent / "idp"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


def missing_provider_requirements() -> list[str]:
    """What this machine lacks to run the lab's provider (empty = ready)."""
    missing = []
    if not shutil.which("node"):
        missing.append("node (Node.js)")
    if not (IDP_DIR / "node_modules" / "oidc-provider").is_dir():
        missing.append(f"its npm packages (npm ci --prefix {IDP_DIR})")
    return missing


@dataclass(frozen=True)
class LabUser:
    name: str
    password: str
    groups: tuple[str, ...] = ()
    email: str = ""

    def entry(self) -> dict[str, Any]:
        return {"password": self.password, "groups": list(self.groups),
                "email": self.email or f"{self.name}@lab.example", "name": self.name.title()}


@dataclass
class Provider:
    """A running provider: its issuer URL, the CA its certificate verifies with, and one
    confidential client (the wiremesh server) whose secret is in `client_secret_file`."""

    issuer: str
    ca_file: Path
    client_id: str
    client_secret: str
    client_secret_file: Path
    users_file: Path
    users: dict[str, LabUser] = field(default_factory=dict)

    def _save(self) -> None:
        tmp = self.users_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({n: u.entry() for n, u in self.users.items()}))
        os.replace(tmp, self.users_file)  # the provider never reads half a file

    def add_user(self, user: LabUser) -> None:
        self.users[user.name] = user
        self._save()

    def remove_user(self, name: str) -> None:
        """Delete the user from the directory: the provider forgets them at once."""
        self.users.pop(name)
        self._save()


@contextlib.contextmanager
def running_provider(workdir: Path, users: Sequence[LabUser], redirect_uris: Sequence[str],
                     host: Host | None = None, listen_ip: str = "127.0.0.1", port: int = 0,
                     tls: ServerCert | None = None, ttl: dict[str, int] | None = None,
                     client_id: str = "wiremesh", timeout: float = 30) -> Iterator[Provider]:
    """Start the provider on `listen_ip`:`port` (0: a free port) inside `host`'s namespace
    (None: this one), serving HTTPS with `tls` (default: a new CA and certificate for
    `listen_ip`); `ttl` overrides token lifetimes in seconds (e.g. {"RefreshToken": 60})."""
    missing = missing_provider_requirements()
    if missing:
        raise LabError(f"the lab's OpenID provider needs {', '.join(missing)}")
    workdir.mkdir(parents=True, exist_ok=True)
    tls = tls or make_server_cert(workdir / "idp-tls", [listen_ip])
    secret = secrets.token_urlsafe(32)
    secret_file = workdir / "idp-client-secret"
    fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    provider = Provider("", tls.ca_file, client_id, secret, secret_file,
                        workdir / "idp-users.json", {u.name: u for u in users})
    provider._save()
    config = {
        "host": listen_ip, "port": port, "tls_cert": str(tls.cert_file),
        "tls_key": str(tls.key_file), "users_file": str(provider.users_file),
        "cookie_key": secrets.token_urlsafe(32), "ttl": ttl or {},
        "clients": [{
            "client_id": client_id, "client_secret": secret,
            "redirect_uris": list(redirect_uris),
            "grant_types": ["authorization_code", "refresh_token", DEVICE_GRANT],
            "response_types": ["code"], "token_endpoint_auth_method": "client_secret_basic",
        }],
    }
    config_file = workdir / "idp-config.json"
    config_file.write_text(json.dumps(config))
    log = workdir / "idp.log"
    argv = ["node", str(IDP_DIR / "server.js"), str(config_file)]
    proc = host.popen(argv, log=log) if host is not None else _popen(argv, log)
    try:
        provider.issuer = _wait_issuer(proc, log, timeout)
        yield provider
    finally:
        stop(proc, 5)


def _popen(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def _wait_issuer(proc: subprocess.Popen[bytes], log: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith('{"issuer"'):
                return str(json.loads(line)["issuer"])
        if proc.poll() is not None:
            raise LabError(f"the OpenID provider exited: {log.read_text()[-600:]}")
        time.sleep(0.05)
    raise LabError(f"timed out after {timeout:.0f}s waiting for the OpenID provider to start")


class _Forms(HTMLParser):
    """The forms of a page: action, method and the inputs' names and values."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[tuple[str, str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append((a.get("action", ""), a.get("method", "get").lower(), {}))
        elif tag == "input" and self.forms and a.get("name"):
            self.forms[-1][2][a["name"]] = a.get("value", "")


def sign_in(client: httpx.Client, url: str, user: str, password: str,
            max_steps: int = 12) -> httpx.Response:
    """Open `url` and fill in whatever the provider asks on the way (user code, device
    confirmation, user name and password) until a page without a form answers, or the
    provider sends the browser elsewhere (back to the relying party); returns that
    response. `client` follows redirects."""
    resp = client.get(url)
    provider = None  # where the forms are
    for _ in range(max_steps):
        here = urlsplit(str(resp.url)).netloc
        if provider is not None and here != provider:
            return resp
        parser = _Forms()
        parser.feed(resp.text)
        if not parser.forms:
            return resp
        provider = here
        action, method, fields = parser.forms[0]
        if "login" in fields:
            if resp.status_code == 401:
                raise LabError(f"the provider refused {user!r}: wrong password or no such user")
            fields.update(login=user, password=password)
        target = urljoin(str(resp.url), action or str(resp.url))
        resp = (client.post(target, data=fields) if method == "post"
                else client.get(target, params=fields))
    raise LabError(f"signing in at {url} took more than {max_steps} pages")


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m wiremesh.lab.provider URL USER PASSWORD CA_FILE`: sign in at URL (run in
    a lab host's namespace, where the provider is reachable); prints the last page's title."""
    import ssl
    import sys

    url, user, password, ca_file = argv or sys.argv[1:]
    verify = ssl.create_default_context(cafile=ca_file)
    with httpx.Client(verify=verify, follow_redirects=True, timeout=20) as client:
        try:
            resp = sign_in(client, url, user, password)
        except (LabError, httpx.HTTPError) as e:
            sys.exit(f"sign-in failed: {e}")
    title = resp.text.partition("<title>")[2].partition("</title>")[0]
    print(f"{resp.status_code} {title}")


if __name__ == "__main__":
    main()
