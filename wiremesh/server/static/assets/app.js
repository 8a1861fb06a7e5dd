// The console's shell: who is logged in, the navigation for their role, and the page named by
// the URL's fragment (#/peers, #/matrix, ...), so every page is a real link.

import { request, setCsrf } from "./api.js";
import { errorBox, h, say } from "./dom.js";
import { pages } from "./pages.js";

let session = null;

async function loadSession() {
  session = await request("GET", "/console/session");
  setCsrf(session.csrf_header, session.csrf_token);
  return session;
}

function allowed(link) {
  const roles = link.dataset.roles;
  return !roles || roles.split(" ").includes(session.role);
}

function showShell() {
  const nav = document.getElementById("nav");
  for (const link of nav.querySelectorAll("a")) link.parentElement.hidden = !allowed(link);
  nav.hidden = false;
  document.getElementById("who").hidden = false;
  document.getElementById("who-name").textContent = session.name;
  document.getElementById("who-role").textContent = session.role;
}

function loginPage(main) {
  document.getElementById("nav").hidden = true;
  document.getElementById("who").hidden = true;
  document.title = "Log in · wiremesh console";
  if (!session.sso) {
    main.replaceChildren(
      h("h1", {}, "wiremesh console"),
      h("p", {}, "This server has no identity provider configured, so nobody can log in here. " +
        "Start it with --oidc-issuer (see the README), or use the CLI with an admin token."));
    return;
  }
  const next = `/${location.hash || "#/peers"}`;
  const url = `${session.login_url}?next=${encodeURIComponent(next)}`;
  main.replaceChildren(
    h("h1", {}, "wiremesh console"),
    h("p", {}, "Log in with your organisation's identity provider to manage the mesh."),
    h("p", {}, h("a", { class: "button primary", href: url, id: "login" }, "Log in")));
}

async function logout() {
  try {
    await request("POST", session.logout_url);
  } catch (err) {
    say(`Logout failed: ${err.message}`, "bad");
    return;
  }
  location.hash = "#/";
  await route();
  say("Logged out.");
}

async function route() {
  const main = document.getElementById("main");
  try {
    await loadSession();
  } catch (err) {
    main.replaceChildren(h("h1", {}, "wiremesh console"), errorBox(err));
    return;
  }
  if (!session.authenticated) {
    loginPage(main);
    return;
  }
  showShell();
  const wanted = (location.hash.match(/^#\/([a-z-]+)/) || [])[1];
  const links = [...document.querySelectorAll("#nav a")].filter(allowed);
  const link = links.find((a) => a.dataset.page === wanted) || links[0];
  if (link.dataset.page !== wanted) {
    history.replaceState(null, "", link.getAttribute("href"));
  }
  for (const a of links) a.removeAttribute("aria-current");
  link.setAttribute("aria-current", "page");
  document.title = `${link.textContent} · wiremesh console`;
  const ctx = { session, canWrite: session.role === "admin", reload: route };
  main.removeAttribute("data-page");
  main.setAttribute("aria-busy", "true");
  main.replaceChildren(h("p", { class: "loading" }, "Loading…"));
  try {
    const page = await pages[link.dataset.page](ctx);
    main.replaceChildren(h("h1", {}, link.textContent), page);
  } catch (err) {
    main.replaceChildren(h("h1", {}, link.textContent), errorBox(err));
  }
  main.dataset.page = link.dataset.page;
  main.setAttribute("aria-busy", "false");
}

document.getElementById("logout").addEventListener("click", logout);
window.addEventListener("hashchange", () => {
  say(""); // a message belongs to the page it was said on
  route();
});
route();
