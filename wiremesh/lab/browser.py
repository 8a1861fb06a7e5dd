"""Debian's headless Chromium driven by Playwright: a real browser for the console's
end-to-end checks. Playwright comes from PyPI, the browser from apt (`chromium`); nothing is
ever downloaded, and each run gets a fresh profile that is deleted afterwards."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from wiremesh.lab.netns import LabError

if TYPE_CHECKING:
    from playwright.sync_api import ConsoleMessage, Page

CHROMIUM = Path("/usr/bin/chromium")
# Quiet and self-contained: no sandbox (root in a namespace), no GPU, no background traffic
# to Google services, no first-run UI.
FLAGS = ("--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")


def spki_pin(cert_file: Path) -> str:
    """base64(sha256(SubjectPublicKeyInfo)) of a PEM certificate: what Chromium's
    --ignore-certificate-errors-spki-list takes, so the browser trusts exactly that key."""
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@dataclass
class BrowserRun:
    """One browser page, the errors its console reported, and the screenshots taken."""

    page: Page
    shots_dir: Path
    console_errors: list[str] = field(default_factory=list)
    screenshots: list[Path] = field(default_factory=list)

    def _on_console(self, msg: ConsoleMessage) -> None:
        if msg.type == "error":
            where = msg.location.get("url", "")
            self.console_errors.append(f"{msg.text} ({where})" if where else msg.text)

    def shot(self, name: str) -> Path:
        # Numbered in the order taken, after what earlier browsers left in the directory.
        safe = re.sub(r"[^a-z0-9-]", "-", name)
        path = self.shots_dir / f"{len(list(self.shots_dir.glob('*.png'))) + 1:02d}-{safe}.png"
        self.page.screenshot(path=str(path), full_page=True)
        self.screenshots.append(path)
        return path


@contextlib.contextmanager
def chromium(shots_dir: Path, trusted_certs: Sequence[Path] = (),
             headers: dict[str, str] | None = None) -> Iterator[BrowserRun]:
    """A page in a fresh headless Chromium. `trusted_certs`: the lab's server certificates,
    trusted by their key (the lab CA is not in the system store)."""
    if not CHROMIUM.exists():
        raise LabError(f"{CHROMIUM} is missing: apt-get install chromium")
    from playwright.sync_api import Error, sync_playwright

    shots_dir.mkdir(parents=True, exist_ok=True)
    pins = [spki_pin(c) for c in trusted_certs]
    args = [*FLAGS, *([f"--ignore-certificate-errors-spki-list={','.join(pins)}"] if pins else [])]
    with sync_playwright() as pw, tempfile.TemporaryDirectory(prefix="wm-chromium-") as profile:
        try:
            context = pw.chromium.launch_persistent_context(
                profile, executable_path=str(CHROMIUM), headless=True, args=args,
                viewport={"width": 1360, "height": 860}, extra_http_headers=headers)
        except Error as e:
            raise LabError(f"cannot start {CHROMIUM}: {str(e).splitlines()[0]}") from e
        try:
            page = context.pages[0] if context.pages else context.new_page()
            run = BrowserRun(page, shots_dir)
            page.on("console", run._on_console)
            page.on("pageerror", lambda exc: run.console_errors.append(f"uncaught: {exc}"))
            yield run
        finally:
            context.close()
