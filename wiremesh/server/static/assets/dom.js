// Building the page from data without ever parsing data as HTML: every text goes in as a
// text node, so a peer called "<img onerror=...>" is just a strange name.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

// A data table: `columns` is a list of [heading, row -> cell content].
export function table(caption, columns, rows, empty = "None yet.") {
  if (!rows.length) return h("p", { class: "empty" }, empty);
  return h("table", {},
    h("caption", {}, caption),
    h("thead", {}, h("tr", {}, columns.map(([title]) => h("th", { scope: "col" }, title)))),
    h("tbody", {}, rows.map((row) => h("tr", {}, columns.map(([, cell]) => h("td", {}, cell(row)))))));
}

export function when(iso) {
  if (!iso) return h("span", { class: "muted" }, "never");
  const date = new Date(iso);
  return h("time", { datetime: date.toISOString(), title: date.toISOString() }, ago(date));
}

function ago(date) {
  const s = Math.round((Date.now() - date.getTime()) / 1000);
  if (s < 5) return "just now";
  if (s < 120) return `${s} s ago`;
  if (s < 7200) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} h ago`;
  return date.toISOString().slice(0, 10);
}

export function badge(text, kind) {
  return h("span", { class: `badge ${kind}` }, text);
}

export function list(items) {
  return items.length ? items.join(", ") : h("span", { class: "muted" }, "—");
}

export function say(message, kind = "ok") {
  const status = document.getElementById("status");
  status.className = message ? `status ${kind}` : "status";
  status.textContent = message;
}

// A button's action: when the server refuses it (a group a policy uses, the last admin), its
// reason goes on the status line; unguarded, the refusal was only an unhandled rejection in
// the browser's console and the button seemed to do nothing.
export function guarded(action) {
  return async () => {
    try {
      await action();
    } catch (err) {
      say(err.message || String(err), "bad");
    }
  };
}

// A labelled form field.
export function field(label, input, hint) {
  const id = input.id || `f-${Math.random().toString(36).slice(2)}`;
  input.id = id;
  return h("div", { class: "field" }, h("label", { for: id }, label), input,
    hint ? h("small", {}, hint) : null);
}

// An error from the API, shown next to what caused it.
export function errorBox(err) {
  return h("p", { class: "error", role: "alert" }, err.message || String(err));
}
