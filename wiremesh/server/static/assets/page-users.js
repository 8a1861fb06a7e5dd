// People and their roles (from the identity provider), and the admin tokens used by scripts.

import { api } from "./api.js";
import { badge, h, list, table, when } from "./dom.js";

export async function usersPage() {
  const [users, tokens] = await Promise.all([api.get("/users"), api.get("/admin-tokens")]);
  return h("section", {},
    table("Users", [
      ["Name", (u) => h("strong", {}, u.name || u.email || u.subject)],
      ["Email", (u) => u.email || "—"],
      ["Role", (u) => badge(u.role, u.role === "admin" ? "warn" : "muted")],
      ["Groups", (u) => list(u.groups || [])],
      ["Last login", (u) => when(u.last_login)],
    ], users, "Nobody has logged in yet."),
    table("Admin tokens (for scripts and the CLI)", [
      ["Name", (t) => h("strong", {}, t.name)],
      ["Role", (t) => badge(t.role, t.role === "admin" ? "warn" : "muted")],
      ["Created", (t) => when(t.created_at)],
      ["State", (t) => (t.revoked_at ? badge("revoked", "muted") : badge("active", "good"))],
    ], tokens));
}
