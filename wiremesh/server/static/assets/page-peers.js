import { api } from "./api.js";
import { badge, guarded, h, list, table, when } from "./dom.js";

function paths(peer) {
  if (!peer.paths || !peer.paths.length) return h("span", { class: "muted" }, "—");
  const direct = peer.paths.filter((p) => p.path === "direct").length;
  const relayed = peer.paths.filter((p) => p.path === "relayed").length;
  return h("span", { title: peer.paths.map((p) => `${p.peer}: ${p.path}`).join("\n") },
    `${direct} direct, ${relayed} relayed`);
}

// user id -> name, for the owner column (only admins and auditors may list users).
async function owners(ctx) {
  if (ctx.session.role === "user") return new Map([[ctx.session.user_id, ctx.session.name]]);
  const users = await api.get("/users");
  return new Map(users.map((u) => [u.id, u.name || u.email || u.sub]));
}

export async function peersPage(ctx) {
  const [peers, names] = await Promise.all([api.get("/peers"), owners(ctx)]);
  const online = peers.filter((p) => p.connected).length;
  const mayDelete = ctx.session.role !== "auditor";
  return h("section", {},
    h("p", {}, `${peers.length} ${peers.length === 1 ? "peer" : "peers"}, ${online} online.`),
    table("Peers", [
      ["Name", (p) => h("strong", {}, p.name)],
      ["Status", (p) => (p.connected ? badge("online", "good") : badge("offline", "muted"))],
      ["Last seen", (p) => when(p.last_seen)],
      ["Overlay IP", (p) => h("code", {}, p.overlay_ip)],
      ["Owner", (p) => (p.user_id == null ? h("span", { class: "muted" }, "setup key")
        : names.get(p.user_id) || `user ${p.user_id}`)],
      ["Paths", paths],
      ["Version", (p) => (p.agent_version
        ? `${p.agent_version}${p.os_family ? ` (${p.os_family})` : ""}`
        : h("span", { class: "muted" }, "—"))],
      ["Groups", (p) => list(p.groups)],
      ...(mayDelete ? [["", (p) => deleteButton(ctx, p)]] : []),
    ], peers, ctx.session.role === "user"
      ? "You have no peers yet: enrol a machine with `wiremesh up --login`."
      : "No peers have enrolled yet."));
}

function deleteButton(ctx, peer) {
  return h("button", {
    type: "button",
    class: "danger",
    "aria-label": `Delete peer ${peer.name}`,
    onclick: guarded(async () => {
      if (!confirm(`Delete peer ${peer.name}? It loses access at once.`)) return;
      await api.del(`/peers/${encodeURIComponent(peer.name)}`);
      await ctx.reload();
    }),
  }, "Delete");
}
