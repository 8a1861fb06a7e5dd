// A line diff of two texts (longest common subsequence), as <ins>/<del>/<span> lines.

import { h } from "./dom.js";

const MAX_CELLS = 4_000_000; // beyond this, show only that the file changed

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
  const out = [];
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    if (i < a.length && j < b.length && a[i] === b[j]) {
      out.push(h("span", {}, `  ${a[i]}\n`));
      i++;
      j++;
    } else if (j < b.length && (i === a.length || lcs[i][j + 1] >= lcs[i + 1][j])) {
      out.push(h("ins", {}, `+ ${b[j]}\n`));
      j++;
    } else {
      out.push(h("del", {}, `- ${a[i]}\n`));
      i++;
    }
  }
  return out;
}
