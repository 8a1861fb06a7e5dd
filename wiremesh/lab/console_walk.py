"""The browser's part of `wiremesh lab console`: a person at Debian's Chromium completes an
agent's device login at the provider, logs in to the console, walks its pages, edits and
applies a policy, explains a matrix cell, finds the change in the audit log and logs out; then
an auditor and a user log in to see what their roles allow.

It runs as its own process inside a lab host's network namespace (the lab's addresses exist
only there): `python -m wiremesh.lab.console_walk PLAN.json` prints the result as one JSON
line. Screenshots of every page go to the plan's `shots_dir`.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from wiremesh.lab.browser import BrowserRun, chromium

if TYPE_CHECKING:
    from playwright.sync_api import Page

TIMEOUT_MS = 20_000


@dataclass
class Login:
    user: str
    password: str


@dataclass
class WalkPlan:
    base_url: str  # the console, https://SERVER:PORT
    shots_dir: str
    trusted_certs: list[str]
    admin: Login
    auditor: Login | None = None
    user: Login | None = None
    user_peers: list[str] = field(default_factory=list)  # what the user must see, and only it
    device_url: str | None = None  # an agent's device login (its code in the URL), as `user`
    policy_append: str = ""  # YAML appended to the exported policy list
    tests_append: str = ""  # a `tests:` section appended after it
    new_policy: str = ""  # the name of the policy the edit adds
    explain: tuple[str, str] = ("", "")  # the matrix cell to explain (src, dst)
    routers: list[str] = field(default_factory=list)  # the routes page must show them online
    used_group: str = ""  # a group policies use: the admin's delete must show the refusal

    @classmethod
    def from_json(cls, text: str) -> WalkPlan:
        d = json.loads(text)
        for role in ("admin", "auditor", "user"):
            if d.get(role):
                d[role] = Login(**d[role])
        d["explain"] = tuple(d.get("explain", ("", "")))
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(asdict(self))


@dataclass
class WalkResult:
    pages_checked: list[str] = field(default_factory=list)
    login_ok: bool = False
    device_login_browser_ok: bool = False
    policy_applied_from_ui: bool = False
    matrix_cells: int = 0
    console_errors: list[str] = field(default_factory=list)
    screenshots: list[str] = field(default_factory=list)
    auditor_read_only: bool | None = None
    auditor_write_refused: bool | None = None
    user_sees_only_own_peers: bool | None = None
    refusal_shown: bool | None = None
    failure: str | None = None


class WalkFailed(Exception):
    pass


def expect(cond: bool, what: str) -> None:
    if not cond:
        raise WalkFailed(what)


# --- at the provider -------------------------------------------------------------------------


def provider_forms(page: Page, who: Login, leave_for: str | None) -> None:
    """Fill in the provider's pages (user code, confirmation, user name and password) until
    the browser is back at `leave_for` (a URL prefix) or the provider says the device is
    connected."""
    for _ in range(8):
        page.wait_for_load_state()
        if leave_for and page.url.startswith(leave_for):
            return
        if page.locator("#done").count():
            return
        if page.locator("#login").count():
            page.fill("#login", who.user)
            page.fill("#password", who.password)
            page.click("#submit")
        elif page.locator("#confirm").count():
            page.click("#confirm")
        elif page.locator("#continue").count():
            page.click("#continue")
        else:
            raise WalkFailed(f"the provider showed a page the walk does not know: {page.url}")
    raise WalkFailed("the provider's forms did not end")


# --- in the console --------------------------------------------------------------------------


def settled(page: Page) -> None:
    page.wait_for_selector("main[aria-busy=false]", timeout=TIMEOUT_MS)


def open_page(run: BrowserRun, res: WalkResult, base: str, name: str, shot: bool = True) -> Page:
    page = run.page
    page.click(f"#nav a[data-page={name}]")
    page.wait_for_selector(f"main[data-page={name}][aria-busy=false]", timeout=TIMEOUT_MS)
    expect(page.locator("main .error").count() == 0,
           f"the {name} page shows an error: {page.locator('main').inner_text()[:300]}")
    expect(page.url.startswith(base), f"{name}: left the console for {page.url}")
    if shot:
        res.screenshots.append(str(run.shot(name)))
    return page


def log_in(run: BrowserRun, base: str, who: Login) -> None:
    page = run.page
    page.goto(base + "/")
    page.wait_for_selector("#login", timeout=TIMEOUT_MS)
    page.click("#login")
    provider_forms(page, who, base)
    page.wait_for_selector("#who-role", state="visible", timeout=TIMEOUT_MS)
    settled(page)


def log_out(run: BrowserRun) -> None:
    run.page.click("#logout")
    run.page.wait_for_selector("#login", timeout=TIMEOUT_MS)


def admin_walk(run: BrowserRun, plan: WalkPlan, res: WalkResult) -> None:
    base, page = plan.base_url, run.page
    page.goto(base + "/")
    page.wait_for_selector("#login", timeout=TIMEOUT_MS)
    res.screenshots.append(str(run.shot("login")))
    res.pages_checked.append("login")
    log_in(run, base, plan.admin)
    expect(page.inner_text("#who-role") == "admin",
           f"logged in as {plan.admin.user} with role {page.inner_text('#who-role')!r}")
    res.login_ok = True

    open_page(run, res, base, "peers")
    names = page.locator("main tbody tr td:first-child").all_inner_texts()
    expect(all(p in names for p in plan.user_peers), f"peers page lists {names}")
    res.pages_checked.append("peers")
    for name in ("groups", "setup-keys", "users", "routes"):
        open_page(run, res, base, name)
        if name == "users":
            users = page.locator("main table").first.inner_text()
            expect(plan.admin.user.title() in users, f"the users page lacks the admin: {users}")
        if name == "routes":
            live = page.locator("ul.routers li").all_inner_texts()
            expect(all(any(r in li and "online" in li for li in live) for r in plan.routers),
                   f"the routes page does not show {plan.routers} online: {live}")
        res.pages_checked.append(name)

    edit_policy(run, plan, res)
    res.pages_checked.append("policies")
    explain_cell(run, plan, res)
    res.pages_checked.append("matrix")

    open_page(run, res, base, "audit")
    first = page.locator("main tbody tr").first.inner_text()
    expect("policy.apply" in first and "console" in first,
           f"the newest audit entry is not the console's policy change: {first!r}")
    res.pages_checked.append("audit")

    log_out(run)
    res.screenshots.append(str(run.shot("logged-out")))
    page.goto(base + "/#/peers")
    page.wait_for_selector("#login", timeout=TIMEOUT_MS)  # the session is gone server-side
    res.pages_checked.append("logout")


def edit_policy(run: BrowserRun, plan: WalkPlan, res: WalkResult) -> None:
    page = open_page(run, res, plan.base_url, "policies", shot=False)
    editor = page.get_by_label("Policy file (YAML)")
    text = editor.input_value()
    top_level = re.findall(r"^([a-z_]+):", text, re.MULTILINE)
    expect(top_level[-1:] == ["policies"], f"the exported file ends with {top_level[-1:]}")
    edited = text.rstrip("\n") + "\n" + plan.policy_append.rstrip("\n") + "\n" + plan.tests_append
    editor.fill(edited)
    page.wait_for_selector("#policy-plan[aria-busy=false] ul.changes", timeout=TIMEOUT_MS)
    changes = page.inner_text("#policy-plan")
    expect(plan.new_policy in changes, f"the diff does not name {plan.new_policy}: {changes}")
    expect("tests pass" in changes, f"the file's tests did not pass: {changes}")
    expect(page.locator("#policy-text-diff ins").count() > 0, "no text diff shown")
    res.screenshots.append(str(run.shot("policy-diff")))
    apply = page.get_by_role("button", name="Apply")
    expect(apply.is_enabled(), "Apply stays disabled")
    apply.click()
    page.wait_for_selector("#status.ok", timeout=TIMEOUT_MS)
    status = page.inner_text("#status")
    expect(status.startswith("Applied"), f"apply answered {status!r}")
    settled(page)
    expect(plan.new_policy in page.get_by_label("Policy file (YAML)").input_value(),
           "the reloaded policy lacks the applied change")
    res.screenshots.append(str(run.shot("policy-applied")))
    res.policy_applied_from_ui = True


def explain_cell(run: BrowserRun, plan: WalkPlan, res: WalkResult) -> None:
    page = open_page(run, res, plan.base_url, "matrix", shot=False)
    res.matrix_cells = page.locator("table.heatmap button.cell").count()
    src, dst = plan.explain
    page.click(f"button.cell[data-src='{src}'][data-dst='{dst}']")
    page.wait_for_selector("#explain[aria-busy=false] h2", timeout=TIMEOUT_MS)
    explained = page.inner_text("#explain")
    expect(plan.new_policy in explained, f"explain {src}->{dst} does not name "
           f"{plan.new_policy}: {explained}")
    res.screenshots.append(str(run.shot("matrix")))


def device_login(run: BrowserRun, plan: WalkPlan, res: WalkResult) -> None:
    assert plan.device_url and plan.user
    page = run.page
    page.goto(plan.device_url)
    res.screenshots.append(str(run.shot("device-login")))
    provider_forms(page, plan.user, None)
    expect(page.locator("#done").count() == 1, f"device login ended at {page.url}")
    res.screenshots.append(str(run.shot("device-connected")))
    res.device_login_browser_ok = True


WRITE_CONTROLS = "main button.danger, main button[type=submit]"
WRITE_ATTEMPT = """async () => {
  const s = await (await fetch("/console/session")).json();
  const answer = await fetch("/api/v1/groups", {method: "POST",
    headers: {"Content-Type": "application/json", [s.csrf_header]: s.csrf_token},
    body: JSON.stringify({name: "auditor-was-here"})});
  return answer.status;
}"""


def auditor_walk(run: BrowserRun, plan: WalkPlan, res: WalkResult) -> None:
    assert plan.auditor
    base, page = plan.base_url, run.page
    log_in(run, base, plan.auditor)
    expect(page.inner_text("#who-role") == "auditor", "the auditor did not get the role")
    seen = []
    for name in ("peers", "groups", "setup-keys", "policies"):
        open_page(run, res, base, name, shot=name == "policies")
        seen.append(page.locator(WRITE_CONTROLS).count())
    editor = page.get_by_label("Policy file (YAML)")
    res.auditor_read_only = not any(seen) and editor.get_attribute("readonly") is not None
    # What the page does not offer, the server must refuse too: the same session, with the
    # CSRF header the console's own pages send (this browser's console logs the refusal).
    res.auditor_write_refused = page.evaluate(WRITE_ATTEMPT) == 403
    log_out(run)


def refusal_walk(run: BrowserRun, plan: WalkPlan, res: WalkResult) -> None:
    """An admin deletes a group a policy and a route use: the server's refusal, naming them,
    must be on the page (it was only in the browser's console) and the group still listed."""
    base, page = plan.base_url, run.page
    log_in(run, base, plan.admin)
    open_page(run, res, base, "groups", shot=False)
    page.get_by_role("button", name=f"Delete group {plan.used_group}").click()
    page.wait_for_selector("#status.bad", timeout=TIMEOUT_MS)
    said = page.inner_text("#status")
    res.screenshots.append(str(run.shot("refusal")))
    names = page.locator("main tbody tr td:first-child").all_inner_texts()
    res.refusal_shown = "is used by" in said and plan.used_group in names
    log_out(run)


def user_walk(run: BrowserRun, plan: WalkPlan, res: WalkResult) -> None:
    assert plan.user
    base, page = plan.base_url, run.page
    log_in(run, base, plan.user)
    expect(page.inner_text("#who-role") == "user", "the user did not get the role 'user'")
    open_page(run, res, base, "peers", shot=False)
    res.screenshots.append(str(run.shot("user-peers")))
    names = sorted(page.locator("main tbody tr td:first-child").all_inner_texts())
    pages = page.locator("#nav li:not([hidden]) a").all_inner_texts()
    res.user_sees_only_own_peers = names == sorted(plan.user_peers) and pages == ["Peers"]
    log_out(run)


def walk(plan: WalkPlan, steps: str) -> WalkResult:
    """`steps`: "device" (complete the device login) or "console" (the admin's walk, then
    the role checks)."""
    res = WalkResult()
    certs = [Path(c) for c in plan.trusted_certs]
    try:
        with chromium(Path(plan.shots_dir), certs) as run:
            run.page.set_default_timeout(TIMEOUT_MS)
            try:
                if steps == "device":
                    device_login(run, plan, res)
                else:
                    admin_walk(run, plan, res)
            finally:
                res.console_errors = list(run.console_errors)
        # The role checks provoke refusals on purpose (which a browser logs): browsers of
        # their own, so they cannot hide or add errors in the walk above; one each, as the
        # provider remembers who logged in last.
        for role, role_walk, who in (("auditor", auditor_walk, plan.auditor),
                                     ("user", user_walk, plan.user),
                                     ("refusal", refusal_walk,
                                      plan.admin if plan.used_group else None)):
            if steps == "console" and who is not None:
                with chromium(Path(plan.shots_dir) / role, certs) as run:
                    run.page.set_default_timeout(TIMEOUT_MS)
                    role_walk(run, plan, res)
    except WalkFailed as e:
        res.failure = str(e)
    except Exception as e:  # a browser timeout or crash: report it, never a traceback
        res.failure = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return res


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[2] not in ("device", "console"):
        print("usage: python -m wiremesh.lab.console_walk PLAN.json device|console",
              file=sys.stderr)
        return 2
    plan = WalkPlan.from_json(Path(argv[1]).read_text())
    print(json.dumps(asdict(walk(plan, argv[2]))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
