// Policies as code: the live file, an editor whose every change is diffed (what would change,
// for which peers) and tested by the server, and apply (all or nothing) once the tests pass.

import { api } from "./api.js";
import { errorBox, field, h, say } from "./dom.js";
import { lineDiff } from "./linediff.js";

const DIFF_DELAY_MS = 300;

export async function policiesPage(ctx) {
  const current = await api.get("/policy/export");
  const text = h("textarea", {
    name: "policy", rows: 24, spellcheck: "false", class: "code",
    readonly: !ctx.canWrite, "aria-describedby": "policy-help",
  });
  text.value = current;
  const plan = h("div", { class: "plan", id: "policy-plan", "aria-live": "polite" });
  const textDiff = h("pre", { class: "diff", id: "policy-text-diff" });
  const apply = h("button", { type: "submit", class: "primary", disabled: true }, "Apply");
  let timer = null;
  let checked = null; // the text the plan on screen was computed for

  async function check() {
    const asked = text.value;
    textDiff.replaceChildren(...lineDiff(current, asked));
    if (asked === current) {
      plan.replaceChildren(h("p", { class: "muted" }, "No edits."));
      apply.disabled = true;
      return;
    }
    plan.setAttribute("aria-busy", "true");
    try {
      const result = await api.post("/policy/diff", { text: asked, source: "console" });
      if (text.value !== asked) return; // a newer edit is being checked
      checked = asked;
      plan.replaceChildren(...planView(result));
      apply.disabled = result.empty || result.test_failures.length > 0;
    } catch (err) {
      if (text.value !== asked) return;
      plan.replaceChildren(errorBox(err));
      apply.disabled = true;
    } finally {
      plan.setAttribute("aria-busy", "false");
    }
  }

  text.addEventListener("input", () => {
    apply.disabled = true;
    clearTimeout(timer);
    timer = setTimeout(check, DIFF_DELAY_MS);
  });

  const form = h("form", {
    class: "policy-editor",
    onsubmit: async (ev) => {
      ev.preventDefault();
      if (checked !== text.value) return;
      apply.disabled = true;
      try {
        const done = await api.post("/policy/apply", { text: text.value, source: "console" });
        say(`Applied: revision ${done.revision}, ${done.tests_passed} tests passed, ` +
          `${done.peers_affected.length} peers' netmaps changed.`);
        await ctx.reload();
      } catch (err) {
        plan.replaceChildren(errorBox(err));
      }
    },
  },
  field("Policy file (YAML)", text),
  h("p", { id: "policy-help", class: "muted" }, ctx.canWrite
    ? "Edit the file; the changes it makes and the result of its tests show on the right. " +
      "Apply replaces the policies as a whole, and only when every test passes."
    : "Your role may read the policy, not change it."),
  ctx.canWrite ? apply : null);

  return h("div", { class: "split" },
    form,
    h("section", { "aria-labelledby": "plan-title" },
      h("h2", { id: "plan-title" }, "What would change"), plan,
      h("h2", {}, "Text diff"), textDiff));
}

function planView(result) {
  const out = [];
  if (result.empty) out.push(h("p", {}, "The edit changes no access."));
  else {
    out.push(h("ul", { class: "changes" }, result.changes.map((c) => h("li", {}, c))));
    out.push(h("p", {}, `Peers whose netmaps change: ${result.peers_affected.join(", ") || "none"}.`));
  }
  const failures = result.test_failures;
  out.push(failures.length
    ? h("div", { class: "error", role: "alert" }, h("p", {}, `${failures.length} test(s) fail:`),
      h("ul", {}, failures.map((f) => h("li", {}, f))))
    : h("p", { class: "good" }, "All the file's tests pass."));
  return out;
}
