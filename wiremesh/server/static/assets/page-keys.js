import { api } from "./api.js";
import { badge, errorBox, field, guarded, h, list, table, when } from "./dom.js";

export async function keysPage(ctx) {
  const keys = await api.get("/setup-keys");
  return h("section", {},
    table("Setup keys", [
      ["Name", (k) => h("strong", {}, k.name)],
      ["Prefix", (k) => h("code", {}, k.prefix)],
      ["State", (k) => (k.valid ? badge("valid", "good") : badge(k.revoked ? "revoked" : "used up or expired", "muted"))],
      ["Uses", (k) => `${k.used_count}${k.usage_limit ? ` of ${k.usage_limit}` : ""}${k.reusable ? " (reusable)" : ""}`],
      ["Expires", (k) => (k.expires_at ? when(k.expires_at) : "never")],
      ["Auto groups", (k) => list(k.auto_groups)],
      ...(ctx.canWrite ? [["", (k) => (k.revoked ? "" : revokeButton(ctx, k))]] : []),
    ], keys),
    ctx.canWrite ? createForm(ctx) : null);
}

function revokeButton(ctx, key) {
  return h("button", {
    type: "button",
    class: "danger",
    "aria-label": `Revoke setup key ${key.name}`,
    onclick: guarded(async () => {
      await api.del(`/setup-keys/${key.id}`);
      await ctx.reload();
    }),
  }, "Revoke");
}

function createForm(ctx) {
  const name = h("input", { name: "name", required: true, autocomplete: "off" });
  const reusable = h("input", { name: "reusable", type: "checkbox" });
  const groups = h("input", { name: "auto_groups", autocomplete: "off" });
  const out = h("div", { "aria-live": "polite" });
  return h("form", {
    class: "card",
    onsubmit: async (ev) => {
      ev.preventDefault();
      try {
        const key = await api.post("/setup-keys", {
          name: name.value.trim(),
          reusable: reusable.checked,
          auto_groups: groups.value.split(/[\s,]+/).filter(Boolean),
        });
        out.replaceChildren(h("p", {}, "The key, shown this once: ", h("code", { class: "secret" }, key.key)));
      } catch (err) {
        out.replaceChildren(errorBox(err));
      }
    },
  },
  h("h2", {}, "New setup key"),
  field("Name", name),
  h("div", { class: "field inline" }, reusable, h("label", { for: (reusable.id = "f-reusable") }, "Reusable")),
  field("Auto groups", groups, "groups its peers join, separated by spaces or commas"),
  h("button", { type: "submit", class: "primary" }, "Create key"),
  out);
}
