// A line diff of two texts (longest common subsequence), as <ins>/<del>/<span> lines.

import { h } from "./dom.js";

const MAX_CELLS = 4_000_000; // beyond this, show only that the file changed
const CONTEXT = 3;

export function lineDiff(before, after) {
  const a = before.split("\n");
  const b = after.split("\n");
  if (a.length * b.length > MAX_CELLS) return [h("span", {}, "(file too large to diff here)\n")];
  // lcs[i][j]: length of the longest common subsequence of a[i:] and b[j:]
  const lcs = Array.from({ length: a.length + 1 }, () => new Uint32Array(b.length + 1));
  for (let i = a.length - 1; i >= 0; i--) {
    for (let j = b.length - 1; j >= 0; j--) {
      lcs[i][j] = a[i] === b[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    }
  }
  const ops = []; // [kind, text]: " " same, "+" added, "-" removed
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    if (i < a.length && j < b.length && a[i] === b[j]) {
      ops.push([" ", a[i]]);
      i++;
      j++;
    } else if (i < a.length && (j === b.length || lcs[i + 1][j] >= lcs[i][j + 1])) {
      ops.push(["-", a[i]]);
      i++;
    } else {
      ops.push(["+", b[j]]);
      j++;
    }
  }
  return render(ops);
}

// Changed lines with CONTEXT unchanged lines around them; longer unchanged runs fold to "…".
function render(ops) {
  const near = ops.map(() => false);
  ops.forEach(([kind], k) => {
    if (kind === " ") return;
    for (let d = Math.max(0, k - CONTEXT); d <= Math.min(ops.length - 1, k + CONTEXT); d++) near[d] = true;
  });
  const out = [];
  let folded = false;
  ops.forEach(([kind, text], k) => {
    if (!near[k]) {
      if (!folded) out.push(h("span", { class: "fold" }, "  …\n"));
      folded = true;
      return;
    }
    folded = false;
    const tag = kind === "+" ? "ins" : kind === "-" ? "del" : "span";
    out.push(h(tag, {}, `${kind} ${text}\n`));
  });
  return out;
}
