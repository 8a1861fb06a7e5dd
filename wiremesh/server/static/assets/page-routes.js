// Routes and, for each, its routers as the server sees them right now (online, last seen).

import { api } from "./api.js";
import { badge, h, table, when } from "./dom.js";

export async function routesPage() {
  const [routes, groups, peers] = await Promise.all([
    api.get("/routes"), api.get("/groups"), api.get("/peers")]);
  const members = new Map(groups.map((g) => [g.name, g.members]));
  const byName = new Map(peers.map((p) => [p.name, p]));

  function routers(route) {
    const names = members.get(route.router_group) || [];
    if (!names.length) return h("span", { class: "bad" }, "no router in the group");
    return h("ul", { class: "routers" }, names.map((n) => {
      const p = byName.get(n);
      const metric = route.router_metrics[n] ?? route.metric;
      return h("li", {}, h("strong", {}, n), ` metric ${metric} `,
        p && p.connected ? badge("online", "good") : badge("offline", "bad"),
        " last seen ", when(p && p.last_seen));
    }));
  }

  return h("section", {},
    table("Routes", [
      ["Name", (r) => h("strong", {}, r.name)],
      ["Prefix", (r) => h("code", {}, r.prefix)],
      ["Router group", (r) => r.router_group],
      ["Routers", routers],
      ["Masquerade", (r) => (r.masquerade ? "yes" : "no")],
      ["Enabled", (r) => (r.enabled ? badge("enabled", "good") : badge("disabled", "muted"))],
    ], routes, "No routes. Routes are defined in the policy file (routes:) or with PUT /api/v1/routes/NAME."));
}
