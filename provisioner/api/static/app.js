// Helpdesk page: token in sessionStorage, device search and detail, jobs with an Idempotency-Key, polling.
// Everything from the API is put on the page with textContent (never as HTML).
"use strict";

const API = "/api/v1";
const KEY = "provisioner.apiToken";
const ROLES = { viewer: 1, helpdesk: 2, admin: 3 };
const LABEL = { reprovision: "Reprovision", reset: "Reset", unlock: "Unlock" };
let me = null;
let current = null; // the device shown
let polling = null;

const $ = (id) => document.getElementById(id);

function token() { return sessionStorage.getItem(KEY) || ""; }

function when(iso) {
  if (!iso) return "never";
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleString();
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) tr.appendChild(c instanceof Node ? wrap(c) : el("td", c));
  return tr;
}

function wrap(node) { const td = document.createElement("td"); td.appendChild(node); return td; }

function badge(state) { return el("span", state, "badge state-" + state); }

function msg(id, text, bad) {
  const p = $(id);
  p.textContent = text || "";
  p.classList.toggle("bad", !!bad);
}

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: "Bearer " + token() }, options.headers || {});
  const res = await fetch(path, Object.assign({}, options, { headers, cache: "no-store" }));
  let body = null;
  try { body = await res.json(); } catch (e) { body = null; }
  if (!res.ok) {
    const detail = body && typeof body.detail === "string" ? body.detail : res.status + " " + res.statusText;
    const err = new Error(detail);
    err.status = res.status;
    throw err;
  }
  return body;
}

// ---- token -----------------------------------------------------------------------------------------

async function signIn() {
  if (!token()) { showSignedOut(); return; }
  try {
    me = await api(API + "/me");
    $("who").textContent = "signed in as " + me.name + " (" + me.role + ")";
    msg("token-msg", "Token accepted.");
    $("token").value = "";
    document.body.classList.add("signed-in");
    updateButtons();
  } catch (e) {
    me = null;
    showSignedOut();
    msg("token-msg", e.status === 401 ? "This token was refused (unknown or revoked)." : "Error: " + e.message, true);
  }
}

function showSignedOut() {
  me = null;
  $("who").textContent = "not signed in";
  document.body.classList.remove("signed-in");
  updateButtons();
}

// ---- search ----------------------------------------------------------------------------------------

async function search(ev) {
  if (ev) ev.preventDefault();
  if (!me) { msg("results-msg", "Use a token first.", true); return; }
  const params = new URLSearchParams();
  const q = $("q").value.trim();
  if (q) params.set("q", q);
  if ($("state").value) params.set("state", $("state").value);
  params.set("limit", "100");
  msg("results-msg", "Searching…");
  try {
    const data = await api(API + "/devices?" + params.toString());
    const tbody = $("results").querySelector("tbody");
    tbody.replaceChildren();
    for (const d of data.devices) {
      const tr = row([d.mac, d.name || "", d.vendor + " " + d.model, d.site, d.extensions.join(", "),
                      badge(d.state), d.in_sync ? "yes" : "no", when(d.last_seen)]);
      tr.dataset.mac = d.mac;
      tr.tabIndex = 0;
      tr.addEventListener("click", () => openDevice(d.mac));
      tr.addEventListener("keydown", (e) => { if (e.key === "Enter") openDevice(d.mac); });
      tbody.appendChild(tr);
    }
    $("results").hidden = data.devices.length === 0;
    msg("results-msg", data.total === 0 ? "No device matches." :
        data.total + " device" + (data.total === 1 ? "" : "s") + (data.total > data.devices.length ? " (first " + data.devices.length + " shown)" : ""));
    if (data.devices.length === 1) openDevice(data.devices[0].mac);
  } catch (e) {
    msg("results-msg", "Error: " + e.message, true);
  }
}

// ---- detail ----------------------------------------------------------------------------------------

async function openDevice(mac) {
  try {
    const d = await api(API + "/devices/" + encodeURIComponent(mac));
    current = d;
    render(d);
  } catch (e) {
    msg("results-msg", "Error: " + e.message, true);
    return;
  }
  zeroTouch(mac);
}

// zero-touch: will the phone find this server by itself (DHCP option 66, vendor redirect, SIP PnP)
async function zeroTouch(mac) {
  const v = $("zt-verdict");
  const tbody = $("zt-paths").querySelector("tbody");
  tbody.replaceChildren();
  v.textContent = "…";
  v.dataset.verdict = "";
  try {
    const z = await api(API + "/devices/" + encodeURIComponent(mac) + "/zero-touch");
    if (!current || current.mac !== z.mac) return;
    v.textContent = "Will provision by itself: " + z.because;
    v.dataset.verdict = z.will_provision ? "yes" : "no";
    v.className = "zt " + (z.will_provision ? "zt-yes" : "zt-no");
    const names = [["DHCP option 66", z.dhcp], ["Vendor redirect", z.redirect], ["SIP PnP", z.sip_pnp]];
    for (const [name, p] of names) {
      tbody.appendChild(row([name, p.supported ? "supported" : "not supported",
                             p.in_place ? "in place" : "not in place", p.detail]));
    }
    for (const t of z.todo) tbody.appendChild(row(["to do", "", "", t]));
  } catch (e) {
    v.textContent = e.status === 404 ? "not in the inventory" : "Error: " + e.message;
    v.dataset.verdict = "unknown";
  }
}

function render(d) {
  $("detail").hidden = false;
  $("d-title").textContent = (d.name ? d.name + " · " : "") + d.mac;
  const st = $("d-state");
  st.textContent = d.state;
  st.className = "badge state-" + d.state;
  $("d-lock").textContent = d.lock_reason ? "(" + d.lock_reason + ")" : "";
  $("d-sync").textContent = d.rotating ? "no: new credentials wait for the phone's next fetch"
    : d.in_sync ? "yes: the phone holds the desired config" : "no";
  const f = d.last_fetch;
  $("last-fetch").textContent = f ? when(f.at) + " from " + f.source_ip + ": " + f.filename + " → " + f.status + " (" + f.reason + ")"
    : "never";
  $("d-model").textContent = d.vendor + " " + d.model;
  $("d-site").textContent = d.site;
  $("d-lines").textContent = d.lines.map((l) => l.extension + " " + l.display_name).join(", ") || "-";
  const active = d.credentials.filter((c) => c.status === "active").length;
  const pending = d.credentials.filter((c) => c.status === "pending").length;
  $("d-creds").textContent = "generation " + d.generation + ", " + active + " active" + (pending ? ", " + pending + " pending" : "") + " (values never shown)";

  const fl = $("findings");
  fl.replaceChildren();
  if (d.findings === null) fl.appendChild(el("li", "findings unavailable", "muted"));
  else if (d.findings.length === 0) fl.appendChild(el("li", "none", "muted"));
  for (const x of d.findings || []) {
    const li = el("li", null, "sev-" + x.severity);
    li.appendChild(el("strong", x.severity + " · " + x.type + ": "));
    li.appendChild(el("span", x.what + " — " + x.evidence));
    li.appendChild(el("div", "fix: " + x.fix, "muted"));
    fl.appendChild(li);
  }
  const ft = $("fetches").querySelector("tbody");
  ft.replaceChildren(...d.fetches.map((x) => row([when(x.at), x.source_ip, x.transport + " " + x.filename, x.status, x.reason])));
  if (!d.fetches.length) ft.appendChild(row(["no fetch yet", "", "", "", ""]));
  const at = $("audit").querySelector("tbody");
  at.replaceChildren(...d.audit.map((x) => row([when(x.at), x.actor, x.action, x.why || ""])));
  updateButtons();
}

function updateButtons() {
  const can = !!me && ROLES[me.role] >= ROLES.helpdesk && !!current;
  const busy = polling !== null;
  $("btn-reprovision").disabled = !can || busy;
  $("btn-reset").disabled = !can || busy;
  $("btn-unlock").disabled = !can || busy || !current || current.state !== "locked";
  if (me && ROLES[me.role] < ROLES.helpdesk) {
    for (const b of ["btn-reprovision", "btn-reset", "btn-unlock"]) $(b).title = "needs a helpdesk token";
  }
}

// ---- jobs ------------------------------------------------------------------------------------------

function newKey() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

function showJob(job, action) {
  const box = $("job");
  box.hidden = false;
  box.dataset.status = job ? job.status : "sending";
  box.className = "job job-" + (job ? job.status : "sending");
  let text = LABEL[action] + ": ";
  if (!job) text += "sending…";
  else if (job.status === "queued") text += "queued";
  else if (job.status === "running") text += action === "reprovision" ? "running, waiting for the phone to fetch its new config…" : "running…";
  else if (job.status === "done") {
    text += "done";
    if (job.result && job.result.new_config_fetched) text += ": the phone fetched its new config (generation " + job.result.generation + ")";
    else if (job.result && job.result.state) text += ": device is now " + job.result.state;
  } else text += "failed: " + (job.error || "unknown error");
  box.textContent = text;
}

async function trigger(action) {
  if (!current || polling !== null) return;
  if (action === "reset" && !window.confirm("Factory-reset " + current.mac + "? The phone loses its settings and enrols again.")) return;
  const mac = current.mac;
  const key = newKey();
  const body = JSON.stringify({ action, mac, reason: action + " from the helpdesk page" });
  polling = true;
  updateButtons();
  showJob(null, action);
  let job = null;
  for (let attempt = 0; attempt < 3 && !job; attempt++) { // same key on a retry: never two jobs
    try {
      job = await api(API + "/jobs", { method: "POST", body, headers: { "Content-Type": "application/json", "Idempotency-Key": key } });
    } catch (e) {
      if (e.status || attempt === 2) { $("job").hidden = false; $("job").textContent = LABEL[action] + " refused: " + e.message; $("job").dataset.status = "refused"; polling = null; updateButtons(); return; }
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
  showJob(job, action);
  const deadline = Date.now() + 2 * 3600 * 1000;
  while ((job.status === "queued" || job.status === "running") && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 1000));
    try {
      job = await api(API + "/jobs/" + encodeURIComponent(job.id));
      showJob(job, action);
    } catch (e) {
      if (e.status === 401 || e.status === 403) break;
    }
  }
  polling = null;
  if (current && current.mac === mac) await openDevice(mac);
  updateButtons();
}

// ---- wiring ----------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = $("token").value.trim();
    if (!t) { msg("token-msg", "Paste a token first.", true); return; }
    sessionStorage.setItem(KEY, t);
    signIn();
  });
  $("forget-token").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    showSignedOut();
    msg("token-msg", "Token forgotten.");
  });
  $("search-form").addEventListener("submit", search);
  $("btn-reprovision").addEventListener("click", () => trigger("reprovision"));
  $("btn-reset").addEventListener("click", () => trigger("reset"));
  $("btn-unlock").addEventListener("click", () => trigger("unlock"));
  updateButtons();
  signIn();
});
