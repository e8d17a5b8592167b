// anpi HQ page. Plain JavaScript, no build step. Everything goes through the JSON API with
// the pasted token (kept in sessionStorage: gone when the tab closes); live progress comes
// over server-sent events (EventSource cannot send headers, so the stream takes ?token=).
"use strict";

const T = {
  app_title: ["安否確認 本部画面", "anpi — HQ safety check"],
  logout: ["ログアウト", "Log out"],
  login_title: ["ログイン", "Log in"],
  login_help: ["管理者から受け取ったトークンを貼り付けてください。このタブを閉じると消えます。",
    "Paste the token you were given. It is forgotten when this tab closes."],
  login: ["ログイン", "Log in"],
  start_title: ["安否確認を開始", "Start a safety check"],
  scenario: ["シナリオ", "Scenario"],
  drill: ["訓練として送る", "Send as a drill"],
  next: ["次へ（見積もり）", "Next (estimate)"],
  confirm_start: ["この内容で送信する", "Send it now"],
  cancel: ["やめる", "Cancel"],
  rollcall: ["安否確認", "Roll call"],
  total: ["対象", "Recipients"],
  sent: ["送信済み", "Sent"],
  confirmed: ["確認済み", "Confirmed"],
  to_call: ["要電話", "To call"],
  reached: ["電話対応済み", "Closed by phone"],
  needs_action: ["負傷・要救助・不通", "Injured / needs help / unreachable"],
  live_on: ["更新: ライブ", "Updates: live"],
  live_off: ["更新: 停止中（再接続中）", "Updates: paused (reconnecting)"],
  by_shelter: ["避難所ごと", "By shelter"],
  by_department: ["所属ごと", "By department"],
  shelter: ["避難所", "Shelter"],
  department: ["所属", "Department"],
  close_rc: ["この安否確認を終了", "Close this roll call"],
  queue_title: ["電話連絡", "Phone calls"],
  claim_next: ["次の人に電話する", "Call the next person"],
  csv: ["CSV ダウンロード", "Download CSV"],
  print: ["印刷", "Print"],
  o_safe: ["無事", "Safe"],
  o_injured: ["負傷", "Injured"],
  o_needs_help: ["要救助", "Needs help"],
  o_no_answer: ["不在（後でかけ直す）", "No answer (retry later)"],
  o_unreachable: ["不通", "Unreachable"],
  release: ["他の人に回す", "Give back to the queue"],
  nobody: ["電話連絡が必要な人はいません", "Nobody to call"],
  to_call_list: ["要電話一覧", "People to call"],
  done_list: ["対応済み（電話での代理回答・後から既読）", "Done (proxy answers by phone, late reads)"],
  name: ["氏名", "Name"],
  group: ["所属・避難所", "Department / shelter"],
  phones: ["電話", "Phones"],
  minutes: ["経過(分)", "Minutes"],
  why: ["理由", "Why"],
  status: ["状態", "Status"],
  announce_title: ["全職員へ指示を送る", "Instruction to all staff"],
  announce_help: ["チャットで全員に送ります（確認ボタン1つ）。あいさつ文は不要です。",
    "Goes to everyone through the chat app with one OK button. No greetings."],
  announce_send: ["送信", "Send"],
  announce_confirm: ["全員に送信します。よろしいですか？", "Send this to everyone?"],
  close_confirm: ["この安否確認を終了します。よろしいですか？", "Close this roll call?"],
  estimate: ["対象 {n} 名（チャット未登録 {nc} 名は最初から要電話）。全員への送信に約 {s} 秒。",
    "{n} recipients ({nc} without a chat id go straight to the call list). About {s} s to reach everyone."],
  estimate_answer: ["全員が回答ボタンを受け取るまで約 {a} 秒。", "Everyone able to answer in about {a} s."],
  drill_note: ["【訓練】として送ります。", "It goes out marked [DRILL]."],
  real_note: ["訓練ではありません。実際の安否確認として送ります。", "This is NOT a drill."],
  held_by: ["対応中: {who}", "Being called by {who}"],
  proxy: ["代理回答", "Proxy answer"],
  read_late: ["後から既読", "Read late"],
  no_rollcall: ["（安否確認はまだありません）", "(no roll calls yet)"],
  closed: ["終了", "closed"],
  not_for_shelter: ["このトークンでは本部画面を使えません（避難所用）。", "This token is for a shelter phone, not for the HQ page."],
  announced: ["送信しました（#{id}）", "Sent (#{id})"],
};

const OUTCOME = {
  reached_safe: ["電話で無事確認", "reached: safe"],
  reached_injured: ["電話で負傷確認", "reached: injured"],
  reached_needs_help: ["要救助", "reached: needs help"],
  no_answer: ["不在", "no answer"],
  unreachable: ["不通", "unreachable"],
};
const REASON = {
  never_read: ["未読", "never read"],
  send_failed: ["送信失敗", "send failed"],
  no_chat_id: ["チャット未登録", "no chat id"],
};

const S = {
  lang: sessionStorage.getItem("anpi-lang") || "ja",
  token: sessionStorage.getItem("anpi-token") || "",
  desk: sessionStorage.getItem("anpi-desk") || ("tab-" + Math.random().toString(36).slice(2, 8)),
  role: null,
  rc: null,
  source: null,
  callsVersion: null,
  claimed: null,
  pendingStart: null,
};
sessionStorage.setItem("anpi-desk", S.desk);

const $ = (id) => document.getElementById(id);
const L = () => (S.lang === "ja" ? 0 : 1);
function t(key, vars) {
  let s = (T[key] || [key, key])[L()];
  for (const [k, v] of Object.entries(vars || {})) s = s.replace("{" + k + "}", v);
  return s;
}
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return e;
}

function applyLang() {
  document.documentElement.lang = S.lang;
  for (const e of document.querySelectorAll("[data-i18n]")) e.textContent = t(e.dataset.i18n);
  $("lang-btn").textContent = S.lang === "ja" ? "English" : "日本語";
}

function showError(msg) {
  const e = $("error");
  e.textContent = msg || "";
  e.hidden = !msg;
}

async function api(method, path, body, headers) {
  const h = Object.assign({ Authorization: "Bearer " + S.token }, headers || {});
  if (body !== undefined) h["Content-Type"] = "application/json";
  const res = await fetch(path, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body) });
  if (!res.ok) {
    let msg = res.status + " " + res.statusText;
    try { msg = (await res.json()).error || msg; } catch (_) { /* not JSON */ }
    const err = new Error(msg);
    err.status = res.status;
    throw err;
  }
  return res;
}
const getJson = async (path) => (await api("GET", path)).json();

function fmtTime(ms) {
  if (!ms) return "";
  return new Date(ms).toLocaleTimeString(S.lang === "ja" ? "ja-JP" : "en-GB",
    { timeZone: "Asia/Tokyo", hour: "2-digit", minute: "2-digit" });
}
function national(e164) {
  if (e164 && e164.startsWith("+81")) {
    const d = "0" + e164.slice(3);
    if (d.length === 11) return d.slice(0, 3) + "-" + d.slice(3, 7) + "-" + d.slice(7);
    return d;
  }
  return e164;
}
function phoneLinks(phones) {
  const span = el("span", { class: "phones" });
  for (const p of phones || []) span.append(el("a", { href: "tel:" + p }, national(p)));
  return span;
}
function group(e) {
  if (e.kind === "shelter_phone") return t("shelter") + ": " + (e.shelter || "-");
  return e.department || "-";
}

// ---- login ----
async function login(token) {
  S.token = token.trim();
  showError("");
  try {
    await getJson("/api/rollcalls");
  } catch (e) {
    if (e.status === 403) showError(t("not_for_shelter")); else showError(e.message);
    S.token = "";
    sessionStorage.removeItem("anpi-token");
    return;
  }
  sessionStorage.setItem("anpi-token", S.token);
  S.role = "caller";
  try {
    const list = await getJson("/api/scenarios");
    S.role = "hq";
    const sel = $("scenario");
    sel.replaceChildren(...list.map((s) => el("option", { value: s.name }, s.title + " (" + s.name + ")")));
  } catch (e) {
    if (e.status !== 403) showError(e.message);
  }
  for (const x of document.querySelectorAll(".hq-only")) x.hidden = S.role !== "hq";
  $("login").hidden = true;
  $("app").hidden = false;
  $("logout-btn").hidden = false;
  await loadRollCalls();
}

async function loadRollCalls(select) {
  const list = await getJson("/api/rollcalls");
  list.sort((a, b) => b.id - a.id);
  const sel = $("rc-select");
  if (!list.length) {
    sel.replaceChildren(el("option", { value: "" }, t("no_rollcall")));
    return;
  }
  sel.replaceChildren(...list.map((rc) => el("option", { value: rc.id },
    "#" + rc.id + " " + rc.title + (rc.state === "closed" ? " (" + t("closed") + ")" : ""))));
  const want = select || S.rc || (list.find((r) => r.state === "open") || list[0]).id;
  sel.value = String(want);
  watch(Number(sel.value));
}

// ---- live progress ----
function watch(id) {
  if (!id) return;
  if (S.source) S.source.close();
  S.rc = id;
  S.callsVersion = null;
  $("print-rc").textContent = "#" + id;
  const src = new EventSource("/api/rollcalls/" + id + "/stream?token=" + encodeURIComponent(S.token));
  S.source = src;
  src.addEventListener("progress", (ev) => {
    $("live").textContent = t("live_on");
    const d = JSON.parse(ev.data);
    renderStatus(d.status);
    if (d.calls_version !== S.callsVersion) {
      S.callsVersion = d.calls_version;
      loadCalls().catch((e) => showError(e.message));
    }
  });
  src.onerror = () => { $("live").textContent = t("live_off"); };
}

// Proxy answers HQ must act on: reached and injured or needing help, or not reachable at all.
function needsAction(c) {
  return (c.injured || 0) + (c.needs_help || 0) + (c.unreachable || 0);
}

function countRow(name, c) {
  const tr = el("tr", c.to_call > 0 ? { class: "silent" } : {},
    el("td", {}, name), el("td", { class: "num" }, c.total),
    el("td", { class: "num" }, c.read + c.answered), el("td", { class: "num" }, c.to_call),
    el("td", { class: "num" }, needsAction(c)));
  return tr;
}

function renderStatus(st) {
  const rc = st.roll_call, c = st.progress.overall;
  $("rc-title").textContent = "#" + rc.id + " " + rc.title + (rc.state === "closed" ? " (" + t("closed") + ")" : "");
  $("p-total").textContent = c.total;
  $("p-sent").textContent = c.sent + c.read + c.answered;
  $("p-confirmed").textContent = c.read + c.answered;
  $("p-to_call").textContent = c.to_call;
  $("p-reached").textContent = c.reached;
  $("p-needs_action").textContent = needsAction(c);
  $("by-shelter").replaceChildren(...Object.entries(st.progress.by_shelter).map(([k, v]) => countRow(k, v)));
  $("by-department").replaceChildren(...Object.entries(st.progress.by_department).map(([k, v]) => countRow(k, v)));
}

// ---- call list ----
async function loadCalls() {
  if (!S.rc) return;
  const d = await getJson("/api/rollcalls/" + S.rc + "/escalations?scope=all");
  const todo = d.entries.filter((x) => x.to_call);
  const done = d.entries.filter((x) => !x.to_call);
  $("tocall").replaceChildren(...todo.map((x, i) => {
    const e = x.entry;
    const held = e.claimed_by && e.claimed_until ? t("held_by", { who: e.claimed_by }) : "";
    const last = e.outcome ? OUTCOME[e.outcome][L()] + " " + fmtTime(e.outcome_at) : "";
    return el("tr", { "data-staff": e.staff_id },
      el("td", {}, i + 1), el("td", {}, e.name), el("td", {}, group(e)),
      el("td", {}, phoneLinks(e.phones)), el("td", { class: "num" }, x.minutes_waiting),
      el("td", {}, e.reason ? REASON[e.reason][L()] : "-"),
      el("td", {}, [held, last].filter(Boolean).join(" / ")));
  }));
  $("done").replaceChildren(...done.map((x) => {
    const e = x.entry;
    const status = e.outcome
      ? el("span", { class: "proxy" }, t("proxy") + ": " + OUTCOME[e.outcome][L()] + " (" + e.outcome_by + " " + fmtTime(e.outcome_at) + ")")
      : t("read_late");
    return el("tr", { "data-staff": e.staff_id }, el("td", {}, e.name), el("td", {}, group(e)), el("td", {}, status));
  }));
  $("queue-empty").hidden = todo.length > 0;
  if (S.claimed && !todo.some((x) => x.entry.staff_id === S.claimed.staff_id)) showClaimed(null);
}

function showClaimed(e) {
  S.claimed = e;
  $("claimed").hidden = !e;
  if (!e) return;
  $("claimed-name").textContent = e.name;
  $("claimed-group").textContent = group(e);
  $("claimed-phones").replaceChildren(phoneLinks(e.phones));
}

async function claimNext() {
  showError("");
  const d = await (await api("POST", "/api/rollcalls/" + S.rc + "/calls/next", { desk: S.desk })).json();
  showClaimed(d.entry);
  $("queue-empty").hidden = !!d.entry;
  await loadCalls();
}

async function recordOutcome(outcome) {
  if (!S.claimed) return;
  await api("POST", "/api/rollcalls/" + S.rc + "/calls/" + encodeURIComponent(S.claimed.staff_id),
    { outcome, desk: S.desk });
  showClaimed(null);
  await loadCalls();
}

async function release() {
  if (!S.claimed) return;
  await api("POST", "/api/rollcalls/" + S.rc + "/calls/" + encodeURIComponent(S.claimed.staff_id) + "/release",
    { desk: S.desk });
  showClaimed(null);
  await loadCalls();
}

async function downloadCsv() {
  const res = await api("GET", "/api/rollcalls/" + S.rc + "/escalations?format=csv&scope=all");
  const blob = await res.blob();
  const a = el("a", { href: URL.createObjectURL(blob), download: "anpi-" + S.rc + "-call-list.csv" });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

// ---- start ----
async function estimate() {
  showError("");
  const body = { scenario: $("scenario").value, drill: $("drill").checked };
  const d = await (await api("POST", "/api/estimate", body)).json();
  const e = d.estimate;
  S.pendingStart = { body, key: "web-" + Date.now() + "-" + Math.random().toString(36).slice(2) };
  $("estimate-text").textContent = t("estimate", { n: e.recipients, nc: e.no_chat_id, s: Math.ceil(e.seconds_to_all_sent) })
    + " " + t("estimate_answer", { a: Math.ceil(Math.max(e.plan.seconds_to_all_able_to_answer || 0, e.seconds_to_all_sent)) })
    + " " + (body.drill ? t("drill_note") : t("real_note"));
  $("confirm").hidden = false;
}

async function confirmStart() {
  if (!S.pendingStart) return;
  const btn = $("confirm-btn");
  btn.disabled = true;
  try {
    // The same Idempotency-Key for this confirmation: a double tap starts one roll call.
    const d = await (await api("POST", "/api/rollcalls", S.pendingStart.body,
      { "Idempotency-Key": S.pendingStart.key })).json();
    S.pendingStart = null;
    $("confirm").hidden = true;
    await loadRollCalls(d.roll_call.id);
  } finally {
    btn.disabled = false;
  }
}

async function announce() {
  const text = $("announce-text").value.trim();
  if (!text || !confirm(t("announce_confirm"))) return;
  // One key per text until it has gone out: a double tap (two confirmations) posts it once.
  if (!S.announceKey || S.announceKey.text !== text) {
    S.announceKey = { text, key: "web-ann-" + Date.now() + "-" + Math.random().toString(36).slice(2) };
  }
  const d = await (await api("POST", "/api/announcements", { text_ja: text, drill: $("announce-drill").checked },
    { "Idempotency-Key": S.announceKey.key })).json();
  S.announceKey = null;
  $("announce-text").value = "";
  showError("");
  alert(t("announced", { id: d.roll_call.id }));
  await loadRollCalls(S.rc);
}

async function closeRc() {
  if (!S.rc || !confirm(t("close_confirm"))) return;
  await api("POST", "/api/rollcalls/" + S.rc + "/close", {});
  await loadRollCalls(S.rc);
}

function guard(fn) {
  return (ev) => { if (ev) ev.preventDefault(); Promise.resolve(fn(ev)).catch((e) => showError(e.message)); };
}

$("lang-btn").addEventListener("click", () => {
  S.lang = S.lang === "ja" ? "en" : "ja";
  sessionStorage.setItem("anpi-lang", S.lang);
  applyLang();
  loadCalls().catch(() => {});
});
$("login-form").addEventListener("submit", guard(() => login($("token").value)));
$("logout-btn").addEventListener("click", () => { sessionStorage.removeItem("anpi-token"); location.reload(); });
$("start-form").addEventListener("submit", guard(estimate));
$("confirm-btn").addEventListener("click", guard(confirmStart));
$("cancel-btn").addEventListener("click", () => { S.pendingStart = null; $("confirm").hidden = true; });
$("rc-select").addEventListener("change", () => { showClaimed(null); watch(Number($("rc-select").value)); });
$("claim-btn").addEventListener("click", guard(claimNext));
$("release-btn").addEventListener("click", guard(release));
for (const b of document.querySelectorAll("[data-outcome]")) {
  b.addEventListener("click", guard(() => recordOutcome(b.dataset.outcome)));
}
$("csv-btn").addEventListener("click", guard(downloadCsv));
$("print-btn").addEventListener("click", () => window.print());
$("announce-btn").addEventListener("click", guard(announce));
$("close-btn").addEventListener("click", guard(closeRc));

applyLang();
if (S.token) login(S.token);
