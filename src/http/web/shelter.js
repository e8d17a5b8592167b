// anpi shelter page: for the shared phone at an evacuation shelter. It is opened from a link
// that carries the shelter's own token after '#' (never sent to the server in the address, so
// it is in no log); the token is then kept in this tab only. One tap answers for the shelter.
"use strict";

const $ = (id) => document.getElementById(id);

function takeToken() {
  const m = /(?:^|[#&])token=([^&]+)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem("anpi-shelter-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname);
  }
  return sessionStorage.getItem("anpi-shelter-token") || "";
}
const TOKEN = takeToken();

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const k of kids) {
    if (k === null || k === undefined || k === "") continue;
    e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return e;
}

function showError(msg) {
  $("error").textContent = msg || "";
  $("error").hidden = !msg;
}

async function api(method, path, body) {
  const h = { Authorization: "Bearer " + TOKEN };
  if (body !== undefined) h["Content-Type"] = "application/json";
  const res = await fetch(path, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body) });
  if (!res.ok) {
    let msg = res.status + " " + res.statusText;
    try { msg = (await res.json()).error || msg; } catch (_) { /* not JSON */ }
    throw new Error(msg);
  }
  return res.json();
}

function fmtTime(ms) {
  return new Date(ms).toLocaleTimeString("ja-JP", { timeZone: "Asia/Tokyo", hour: "2-digit", minute: "2-digit" });
}

function render(d) {
  $("who").textContent = "端末 / phone: " + d.staff_id;
  const list = $("list");
  if (!d.roll_calls.length) {
    list.replaceChildren(el("p", { class: "card" }, "いま開いている安否確認はありません。/ No safety check is open now."));
    return;
  }
  list.replaceChildren(...d.roll_calls.map((x) => {
    const rc = x.roll_call;
    const answered = x.entry.standing || x.entry.latest;
    const card = el("section", { class: "card", "data-roll-call": rc.id },
      el("h2", {}, "#" + rc.id + " " + rc.title),
      el("p", { class: "message" }, rc.message));
    if (answered) {
      card.append(el("p", { class: "sent-answer" }, "本部に届いています / HQ has: " + answered.label + " (" + fmtTime(answered.at) + ")"));
    }
    const buttons = el("div", { class: "shelter-buttons" });
    for (const c of x.choices) {
      const b = el("button", { type: "button", class: c.level === "urgent" ? "danger" : c.level === "ok" ? "good" : "secondary", "data-value": c.value }, c.label);
      b.addEventListener("click", async () => {
        b.disabled = true;
        try {
          await api("POST", "/api/rollcalls/" + rc.id + "/ack", { value: c.value });
          showError("");
          await refresh();
        } catch (e) { showError(e.message); } finally { b.disabled = false; }
      });
      buttons.append(b);
    }
    card.append(buttons);
    return card;
  }));
}

async function refresh() {
  render(await api("GET", "/api/shelter"));
}

if (!TOKEN) {
  showError("この画面は本部から受け取ったリンクで開いてください。/ Open this page from the link HQ gave this shelter.");
} else {
  refresh().catch((e) => showError(e.message));
  setInterval(() => refresh().catch((e) => showError(e.message)), 15000);
}
