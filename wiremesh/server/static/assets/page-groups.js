import { api } from "./api.js";
import { errorBox, field, guarded, h, list, table } from "./dom.js";

export async function groupsPage(ctx) {
  const groups = await api.get("/groups");
  return h("section", {},
    table("Groups", [
      ["Name", (g) => h("strong", {}, g.name)],
      ["Members", (g) => list(g.members)],
      ["Kind", (g) => (g.builtin ? "built in" : "defined")],
      ...(ctx.canWrite ? [["", (g) => (g.builtin ? "" : removeButton(ctx, g))]] : []),
    ], groups),
    ctx.canWrite ? createForm(ctx) : null);
}

function removeButton(ctx, group) {
  return h("button", {
    type: "button",
    class: "danger",
    "aria-label": `Delete group ${group.name}`,
    onclick: guarded(async () => {
      await api.del(`/groups/${encodeURIComponent(group.name)}`);
      await ctx.reload();
    }),
  }, "Delete");
}

function createForm(ctx) {
  const name = h("input", { name: "name", required: true, autocomplete: "off" });
  const members = h("input", { name: "members", autocomplete: "off" });
  const out = h("div", {});
  return h("form", {
    class: "card",
    onsubmit: async (ev) => {
      ev.preventDefault();
      const peers = members.value.split(/[\s,]+/).filter(Boolean);
      try {
        await api.post("/groups", { name: name.value.trim(), members: peers });
        await ctx.reload();
      } catch (err) {
        out.replaceChildren(errorBox(err));
      }
    },
  },
  h("h2", {}, "New group"),
  field("Name", name),
  field("Members", members, "peer names, separated by spaces or commas"),
  h("button", { type: "submit", class: "primary" }, "Create group"),
  out);
}
