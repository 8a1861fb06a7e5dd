// People and their roles (from the identity provider's groups), and the admin tokens that
// scripts and the CLI use.

import { api } from "./api.js";
import { badge, guarded, h, list, say, table, when } from "./dom.js";

export async function usersPage(ctx) {
  const [users, tokens] = await Promise.all([api.get("/users"), api.get("/admin-tokens")]);
  return h("section", {},
    table("Users", [
      ["Name", (u) => h("strong", {}, u.name || u.sub)],
      ["Email", (u) => u.email || "—"],
      ["Role", (u) => badge(u.role, u.role === "admin" ? "warn" : "muted")],
      ["Provider groups", (u) => list(u.groups)],
      ["Peers", (u) => list(u.peers)],
      ["Last login", (u) => when(u.last_login)],
      ["State", (u) => (u.disabled_at ? badge(`disabled: ${u.disabled_reason}`, "bad") : badge("active", "good"))],
      ...(ctx.canWrite ? [["", (u) => removeButton(ctx, u)]] : []),
    ], users, "Nobody has logged in yet."),
    table("Admin tokens (for scripts and the CLI)", [
      ["Name", (t) => h("strong", {}, t.name)],
      ["Role", (t) => badge(t.role, t.role === "admin" ? "warn" : "muted")],
      ["Created", (t) => when(t.created_at)],
      ["State", (t) => (t.revoked_at ? badge("revoked", "muted") : badge("active", "good"))],
    ], tokens));
}

function removeButton(ctx, user) {
  const who = user.name || user.email || user.sub;
  return h("button", {
    type: "button",
    class: "danger",
    "aria-label": `Remove user ${who}`,
    onclick: guarded(async () => {
      if (!confirm(`Remove ${who}? Their sessions end and their peers leave the mesh.`)) return;
      await api.del(`/users/${user.id}`);
      say(`Removed ${who}.`);
      await ctx.reload();
    }),
  }, "Remove");
}
