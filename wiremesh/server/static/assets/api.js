// The JSON API, as the logged-in browser session: same-origin cookies, the server's CSRF
// header on every write (a cross-site form cannot set it), RFC 9457 problem bodies turned
// into errors that name what was wrong.

let csrf = null; // [header, value]

export function setCsrf(header, value) {
  csrf = header ? [header, value] : null;
}

export class ApiError extends Error {
  constructor(status, problem) {
    const fields = (problem.errors || [])
      .map((e) => (e.line ? `line ${e.line}: ` : "") + (e.field ? `${e.field}: ` : "") + e.message);
    super(fields.length ? fields.join("; ") : problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

export async function request(method, url, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && csrf) headers[csrf[0]] = csrf[1];
  const response = await fetch(url, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) {
    let problem;
    try {
      problem = await response.json();
    } catch {
      problem = { title: response.statusText, detail: "" };
    }
    throw new ApiError(response.status, problem);
  }
  if (response.status === 204) return null;
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response.text();
}

export const api = {
  get: (path) => request("GET", `/api/v1${path}`),
  post: (path, body) => request("POST", `/api/v1${path}`, body ?? {}),
  put: (path, body) => request("PUT", `/api/v1${path}`, body ?? {}),
  del: (path) => request("DELETE", `/api/v1${path}`),
};
