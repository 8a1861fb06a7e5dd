"""The console's line diff (static/assets/linediff.js) run by node with a minimal DOM: the
lines it marks added and removed, and the unchanged runs it folds."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from wiremesh.server.console import STATIC

pytestmark = pytest.mark.skipif(not shutil.which("node"), reason="needs node")

# Just enough DOM for dom.js's h(): elements record their tag and their text.
RUNNER = """
globalThis.Node = class {};
globalThis.document = {
  createElement: (tag) => ({ tag, text: "", append(...c) { this.text += c.join(""); },
                             setAttribute() {}, addEventListener() {} }),
  createTextNode: (t) => t,
};
const { lineDiff } = await import(process.argv[1]);
const [a, b] = JSON.parse(process.argv[2]);
console.log(JSON.stringify(lineDiff(a, b).map((e) => [e.tag, e.text])));
"""


def diff(before: str, after: str) -> list[tuple[str, str]]:
    out = subprocess.run(
        ["node", "--input-type=module", "-e", RUNNER, "--",
         str(STATIC / "assets" / "linediff.js"), json.dumps([before, after])],
        capture_output=True, text=True, check=True, timeout=30).stdout
    return [(tag, text) for tag, text in json.loads(out)]


def test_a_changed_line_is_removed_then_added_with_context_and_folds() -> None:
    before = "\n".join(f"line{i}" for i in range(20))
    got = diff(before, before.replace("line10", "LINE10") + "\nlast")
    assert ("del", "- line10\n") in got and ("ins", "+ LINE10\n") in got
    assert got.index(("del", "- line10\n")) < got.index(("ins", "+ LINE10\n"))
    assert got[-1] == ("ins", "+ last\n")
    shown = [text for _, text in got]
    assert "  line7\n" in shown and "  line6\n" not in shown  # three lines of context
    assert shown.count("  …\n") == 2  # before line7, and between line13 and line17


def test_equal_texts_have_no_change() -> None:
    assert all(tag == "span" for tag, _ in diff("a\nb", "a\nb"))
