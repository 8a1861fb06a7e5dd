// The reachability matrix as a heatmap: one cell per ordered pair, shaded by how much the
// source may open on the destination; a cell is a button that asks the server to explain it.

import { api } from "./api.js";
import { errorBox, h } from "./dom.js";

function describe(allow) {
  if (!allow.length) return "no access";
  return allow.map((a) => (a.ports.length ? `${a.proto} ${a.ports.join(",")}` : a.proto)).join("; ");
}

function level(allow) {
  if (!allow.length) return 0;
  if (allow.some((a) => a.proto === "all")) return 3;
  return allow.some((a) => !a.ports.length) ? 2 : 1;
}

export async function matrixPage() {
  const m = await api.get("/policy/matrix");
  const byPair = new Map(m.pairs.map((p) => [`${p.src}\u0000${p.dst}`, p.allow]));
  const explanation = h("section", { class: "explain card", "aria-live": "polite", id: "explain" },
    h("p", { class: "muted" }, "Choose a cell to see which policies allow that pair, or why none does."));

  async function explain(src, dst) {
    explanation.setAttribute("aria-busy", "true");
    try {
      const ex = await api.get(`/policy/explain?src=${encodeURIComponent(src)}&dst=${encodeURIComponent(dst)}`);
      explanation.replaceChildren(
        h("h2", {}, `${src} → ${dst}`),
        h("p", { class: ex.allowed ? "good" : "bad" }, ex.summary),
        h("ul", {}, ex.verdicts.map((v) =>
          h("li", {}, h("strong", {}, v.policy), `: ${v.verdict}`, v.reason ? ` (${v.reason})` : ""))));
    } catch (err) {
      explanation.replaceChildren(errorBox(err));
    } finally {
      explanation.setAttribute("aria-busy", "false");
    }
  }

  const cells = m.peers.length * (m.peers.length - 1);
  const grid = h("table", { class: "heatmap" },
    h("caption", {}, `Who may open connections to whom (${cells} ordered pairs; rows are sources)`),
    h("thead", {}, h("tr", {}, h("td", {}), m.peers.map((p) => h("th", { scope: "col" }, p)))),
    h("tbody", {}, m.peers.map((src) => h("tr", {},
      h("th", { scope: "row" }, src),
      m.peers.map((dst) => {
        if (src === dst) return h("td", { class: "self" }, h("span", { class: "sr-only" }, "itself"));
        const allow = byPair.get(`${src}\u0000${dst}`) || [];
        const text = describe(allow);
        return h("td", { class: `heat-${level(allow)}` },
          h("button", {
            type: "button",
            class: "cell",
            "aria-label": `${src} to ${dst}: ${text}. Explain`,
            title: text,
            "data-src": src,
            "data-dst": dst,
            onclick: () => explain(src, dst),
          }, allow.length ? "✓" : "·"));
      })))));
  return h("div", {},
    h("div", { class: "legend", "aria-hidden": "true" },
      h("span", { class: "heat-0" }, "none"), h("span", { class: "heat-1" }, "some ports"),
      h("span", { class: "heat-2" }, "a whole protocol"), h("span", { class: "heat-3" }, "everything")),
    h("div", { class: "split" }, h("div", { class: "scroll" }, grid), explanation));
}
