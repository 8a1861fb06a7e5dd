import { api } from "./api.js";
import { h, table, when } from "./dom.js";

export async function auditPage() {
  const entries = await api.get("/audit?limit=200");
  return h("section", {},
    table("Audit log, newest first", [
      ["When", (e) => when(e.at)],
      ["Who", (e) => e.actor],
      ["Action", (e) => h("code", {}, e.action)],
      ["Detail", (e) => (typeof e.detail === "string" ? e.detail : JSON.stringify(e.detail))],
    ], entries, "Nothing has changed yet."));
}
