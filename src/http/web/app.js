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
  desk_label: ["この端末の名前（電話の記録に残ります。例: 受付1）", "This desk's name (kept with every call you record, e.g. Desk 1)"],
  desk_prompt: ["この端末の名前（例: 受付1）", "This desk's name (e.g. Desk 1)"],
  change_desk: ["端末名を変更", "Change desk name"],
  who: ["{role} / 端末: {desk}", "{role} / desk: {desk}"],
  role_hq: ["本部", "HQ"],
  role_caller: ["電話係", "Caller"],
  login: ["ログイン", "Log in"],
  start_title: ["安否確認を開始", "Start a safety check"],
  scenario: ["シナリオ", "Scenario"],
  drill: ["訓練として送る", "Send as a drill"],
  next: ["次へ（見積もり）", "Next (estimate)"],
  confirm_start: ["この内容で送信する", "Send it now"],
  cancel: ["やめる", "Cancel"],
  action_title: ["要対応", "Needs HQ now"],
  print_title: ["要対応一覧", "Action list"],
  as_of: ["{time} 現在", "as of {time}"],
  a_urgent: ["救助要請・負傷", "Asked for help / injured"],
  a_silent_shelter: ["避難所 応答なし", "Silent shelters"],
  a_never_read: ["未読", "Never read"],
  a_not_sent: ["送信できず", "Not sent"],
  progress_title: ["進み具合", "Progress"],
  total: ["対象", "Recipients"],
  sent: ["送信済み", "Sent"],
  confirmed: ["確認済み", "Confirmed"],
  urgent_open: ["要対応", "Needs HQ"],
  to_call: ["要電話", "To call"],
  answered_urgent: ["回答: 負傷・救助要請", "Answered: injured / help"],
  answered_attention: ["回答: 要確認", "Answered: attention"],
  reached: ["電話対応済み", "Closed by phone"],
  phone_bad: ["電話で負傷・要救助・不通", "By phone: injured / needs help / unreachable"],
  resent: ["再送", "Sent again"],
  live_on: ["更新: ライブ", "Updates: live"],
  live_off: ["更新: 停止中（再接続中）", "Updates: paused (reconnecting)"],
  by_shelter: ["避難所ごと（応答なしが先）", "By shelter (silent first)"],
  by_department: ["所属ごと", "By department"],
  shelter: ["避難所", "Shelter"],
  shelter_state: ["状態", "State"],
  silent: ["応答なし", "silent"],
  shelter_ok: ["確認済み", "confirmed"],
  shelter_waiting: ["確認待ち", "waiting"],
  department: ["所属", "Department"],
  levels_help_title: ["回答の区分について", "What answers mean"],
  levels_help: ["各ボタンにはシナリオで区分が決まっています。「要対応」（負傷・救助要請、避難所の支援要請、助けを求める言葉を含む自由記述）は届いた瞬間にこの画面の一番上に出ます。「要確認」（出動不可、その他の自由記述）は下の一覧に原文のまま出ます。スタンプと既読は「問題なし」。一番重い回答は、あとでスタンプなどが来ても残り、本部がメモを書いて閉じるまで消えません。",
    "Each button's meaning is set in its scenario. Urgent answers (injured, need help, a shelter asking for support, free text with a word asking for help) appear at the top of this page the moment they arrive. Attention answers (cannot work, other free text) are listed below, word for word. Stickers and reads are OK. The most severe answer stays, whatever the person sends later, until HQ closes it with a note."],
  attention_title: ["要確認の回答（出動不可・自由記述）", "Answers to read (cannot work, free text)"],
  attention_none: ["ありません", "None"],
  close_rc: ["この安否確認を終了", "Close this roll call"],
  claim_next: ["次の人に電話する", "Call the next person"],
  csv: ["CSV ダウンロード", "Download CSV"],
  print: ["印刷", "Print"],
  search: ["探す", "Find"],
  search_help: ["名前・ふりがな・職員ID・電話番号で探す（本人から電話があったとき）", "Find by name, kana, staff id or phone (someone who phoned in)"],
  search_none: ["見つかりません", "Nobody found"],
  note_label: ["メモ（場所・必要なこと・対応内容）", "Note (where, what is needed, what was done)"],
  note_required: ["救助要請・負傷を閉じるには、対応内容をメモに書いてください。", "To close an urgent answer, write in the note what was done."],
  note_only: ["メモだけ保存", "Save the note only"],
  close_panel: ["閉じる", "Close"],
  record: ["記録", "Record"],
  o_safe: ["無事", "Safe"],
  o_injured: ["負傷", "Injured"],
  o_needs_help: ["要救助", "Needs help"],
  o_no_answer: ["不在（後でかけ直す）", "No answer (retry later)"],
  o_unreachable: ["不通", "Unreachable"],
  release: ["他の人に回す", "Give back to the queue"],
  nobody: ["対応が必要な人はいません", "Nobody needs HQ now"],
  done_list: ["対応済み（電話での代理回答・後から既読）", "Done (proxy answers by phone, late reads)"],
  name: ["氏名", "Name"],
  group: ["所属・避難所", "Department / shelter"],
  phones: ["電話", "Phones"],
  said: ["回答・理由", "Answer / why"],
  minutes: ["経過(分)", "Minutes"],
  handling: ["対応", "Handling"],
  status: ["状態", "Status"],
  latest: ["最新", "latest"],
  resent_at: ["再送 {time}", "sent again {time}"],
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
  not_for_shelter: ["このトークンは避難所用です。避難所の画面を開きます。", "This token is for a shelter phone: opening the shelter page."],
  announced: ["送信しました（#{id}）", "Sent (#{id})"],
  late_title: ["終了した安否確認の救助要請（未対応）", "Urgent answers of closed roll calls"],
  late_help: ["終了後に届いた要対応の回答と、終了時にまだ対応されていなかったものです。対応したらメモを書いて閉じてください。",
    "Urgent answers that came after their roll call closed, and those still open when it was closed. Write what was done and close each."],
  late_close: ["対応済みにする", "Mark as handled"],
  late_note_prompt: ["対応内容（必須）", "What was done (required)"],
  title_urgent: ["要対応 {n}名", "{n} need help"],
  elapsed: ["開始から {m} 分", "{m} min since start"],
  new_rollcall: ["新しい安否確認 #{id} {title} が始まりました。上の一覧から選べます。",
    "A new roll call #{id} {title} has started; pick it from the list above."],
};

const ACTION_LABEL = {
  urgent: ["要対応（救助要請・負傷など）", "Asked for help / injured"],
  silent_shelter: ["避難所 応答なし", "Silent shelter"],
  never_read: ["未読（期限切れ）", "Never read by the deadline"],
  not_sent: ["送信できず", "Message could not go out"],
};
const OUTCOME = {
  reached_safe: ["電話で無事確認", "reached: safe"],
  reached_injured: ["電話で負傷確認", "reached: injured"],
  reached_needs_help: ["要救助", "reached: needs help"],
  no_answer: ["不在", "no answer"],
  unreachable: ["不通", "unreachable"],
};

const S = {
  lang: sessionStorage.getItem("anpi-lang") || "ja",
  token: sessionStorage.getItem("anpi-token") || "",
  desk: sessionStorage.getItem("anpi-desk") || "",
  role: null,
  rc: null,
  rcInfo: null,
  source: null,
  callsVersion: null,
  person: null,
  claimed: false,
  pendingStart: null,
  knownIds: null,
  baseTitle: document.title,
};

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
  for (const k of kids) {
    if (k === null || k === undefined || k === "") continue;
    e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return e;
}

function applyLang() {
  document.documentElement.lang = S.lang;
  for (const e of document.querySelectorAll("[data-i18n]")) e.textContent = t(e.dataset.i18n);
  for (const e of document.querySelectorAll("[data-i18n-placeholder]")) e.placeholder = t(e.dataset.i18nPlaceholder);
  $("lang-btn").textContent = S.lang === "ja" ? "English" : "日本語";
  showWho();
}

function showWho() {
  if (!S.role) { $("who").textContent = ""; return; }
  $("who").textContent = t("who", { role: t("role_" + S.role), desk: S.desk });
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
function fmtDateTime(ms) {
  return new Date(ms).toLocaleString(S.lang === "ja" ? "ja-JP" : "en-GB",
    { timeZone: "Asia/Tokyo", year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit" });
}
// Each number dials its E.164 form and shows the form people read aloud, grouped by the
// daemon (phones_national), which knows the area codes.
function phoneLinks(x) {
  const span = el("span", { class: "phones" });
  const shown = x.phones_national || [];
  (x.phones || []).forEach((p, i) => span.append(el("a", { href: "tel:" + p }, shown[i] || p)));
  return span;
}
function group(e) {
  if (e.kind === "shelter_phone") return t("shelter") + ": " + (e.shelter || "-");
  const d = e.department || "-";
  return e.shelter ? d + " (" + t("shelter") + ": " + e.shelter + ")" : d;
}
// "caller#1/受付2" -> "受付2": the desk the person named when they opened the page.
function desk(by) {
  if (!by) return "";
  const i = by.lastIndexOf("/");
  return i >= 0 ? by.slice(i + 1) : by;
}
function nameCell(e) {
  return el("span", {}, el("b", {}, e.name), e.kana ? el("span", { class: "kana" }, " (" + e.kana + ")") : null,
    e.role ? el("span", { class: "role" }, " " + e.role) : null);
}
// What the person answered (label, free text verbatim, when), or why they are listed.
function saidCell(x) {
  const e = x.entry;
  const td = el("td", {});
  if (e.standing) {
    const a = e.standing;
    td.append(el("span", { class: "answer lvl-" + a.level }, a.label + " " + fmtTime(a.at)));
    if (a.text) td.append(el("q", { class: "freetext" }, a.text));
  }
  if (e.latest) {
    td.append(el("div", { class: "muted" }, t("latest") + ": " + e.latest.label
      + (e.latest.text ? " 「" + e.latest.text + "」" : "") + " " + fmtTime(e.latest.at)));
  }
  if (!e.standing && x.action) td.append(ACTION_LABEL[x.action][L()]
    + (e.last_error && x.action !== "never_read" ? " (" + e.last_error + ")" : ""));
  if (e.resent_at) td.append(el("div", { class: "muted" }, t("resent_at", { time: fmtTime(e.resent_at) })));
  return td;
}
function handlingCell(e) {
  const td = el("td", {});
  if (e.claimed_by && e.claimed_until && e.claimed_until > Date.now()) {
    td.append(el("div", { class: "held" }, t("held_by", { who: desk(e.claimed_by) })));
  }
  if (e.outcome) td.append(el("div", {}, OUTCOME[e.outcome][L()] + " " + fmtTime(e.outcome_at) + " " + desk(e.outcome_by)));
  for (const n of e.notes || []) td.append(el("div", { class: "note" }, fmtTime(n.at) + " " + desk(n.by) + ": " + n.text));
  return td;
}

// ---- login ----
function askDesk(initial) {
  const d = (prompt(t("desk_prompt"), initial || "") || "").trim();
  return d;
}

async function login(token) {
  S.token = token.trim();
  showError("");
  let me;
  try {
    me = await getJson("/api/whoami");
  } catch (e) {
    showError(e.message);
    S.token = "";
    sessionStorage.removeItem("anpi-token");
    return;
  }
  if (me.role === "shelter") {
    showError(t("not_for_shelter"));
    location.href = "/shelter#token=" + encodeURIComponent(S.token);
    return;
  }
  sessionStorage.setItem("anpi-token", S.token);
  if (!S.desk) S.desk = $("desk").value.trim() || askDesk("");
  if (!S.desk) S.desk = me.name;
  sessionStorage.setItem("anpi-desk", S.desk);
  S.role = me.role;
  showWho();
  if (S.role === "hq") {
    try {
      const list = await getJson("/api/scenarios");
      const sel = $("scenario");
      // A broken scenario file is shown, disabled, with its error; the others stay usable.
      sel.replaceChildren(...list.map((s) => s.broken
        ? el("option", { value: "", disabled: "" }, "⚠ " + s.file + ": " + s.error)
        : el("option", { value: s.name }, s.title + " (" + s.name + ")")));
      const usable = list.find((s) => !s.broken);
      if (usable) sel.value = usable.name;
    } catch (e) { showError(e.message); }
  }
  // A caller sees no button they may not press.
  for (const x of document.querySelectorAll(".hq-only")) x.hidden = S.role !== "hq";
  $("login").hidden = true;
  $("app").hidden = false;
  $("logout-btn").hidden = false;
  $("desk-btn").hidden = false;
  await loadRollCalls();
  loadLate().catch((e) => showError(e.message));
  setInterval(() => loadLate().catch(() => {}), 15000);
  setInterval(() => refreshRollCalls().catch(() => {}), 15000);
  setInterval(showElapsed, 10000);
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
  S.knownIds = list.map((r) => r.id);
  watch(Number(sel.value));
}

// Roll calls started elsewhere (the CLI, a JMA telegram, another desk) appear in the list
// without a reload; a page with none shown follows the new one.
async function refreshRollCalls() {
  const list = await getJson("/api/rollcalls");
  const ids = list.map((r) => r.id);
  if (S.knownIds && ids.length === S.knownIds.length && ids.every((id) => S.knownIds.includes(id))) return;
  const fresh = list.filter((r) => r.state === "open" && !(S.knownIds || []).includes(r.id));
  await loadRollCalls(S.rc ? S.rc : (fresh[0] || {}).id);
  if (fresh.length && S.rc && fresh[0].id !== S.rc) {
    showError(t("new_rollcall", { id: fresh[0].id, title: fresh[0].title }));
  }
}

// Minutes since the roll call started, kept current between updates.
function showElapsed() {
  const rc = S.rcInfo;
  if (!rc || !$("rc-elapsed")) return;
  const end = rc.state === "closed" && rc.closed_at ? rc.closed_at : Date.now();
  $("rc-elapsed").textContent = t("elapsed", { m: Math.max(0, Math.floor((end - rc.created_at) / 60000)) });
}

// ---- live progress ----
function watch(id) {
  if (!id) return;
  if (S.source) S.source.close();
  S.rc = id;
  S.status = null;
  S.callsVersion = null;
  const src = new EventSource("/api/rollcalls/" + id + "/stream?token=" + encodeURIComponent(S.token));
  S.source = src;
  src.addEventListener("progress", (ev) => {
    $("live").textContent = t("live_on");
    const d = JSON.parse(ev.data);
    // The first event holds the whole status, later ones only what changed.
    S.status = d.full || !S.status ? d.status : {
      roll_call: d.status.roll_call || S.status.roll_call,
      progress: mergeProgress(S.status.progress, d.status.progress || {}),
    };
    renderStatus(S.status);
    if (d.calls_version !== S.callsVersion) {
      S.callsVersion = d.calls_version;
      loadCalls().catch((e) => showError(e.message));
      loadAttention().catch((e) => showError(e.message));
    }
  });
  src.onerror = () => { $("live").textContent = t("live_off"); };
}

// A change to the progress: a part that is an object (overall, by_department, by_shelter,
// answers) comes as its changed keys only, a key gone as null; anything else whole.
function mergeProgress(old, change) {
  const out = Object.assign({}, old);
  for (const [k, v] of Object.entries(change)) {
    const was = out[k];
    if (v && typeof v === "object" && was && typeof was === "object") {
      const merged = Object.assign({}, was, v);
      for (const [ik, iv] of Object.entries(v)) if (iv === null) delete merged[ik];
      out[k] = merged;
    } else {
      out[k] = v;
    }
  }
  return out;
}

function countRow(name, c, shelter) {
  const silent = shelter && c.shelter_phones_silent > 0;
  const cells = [el("td", {}, name)];
  if (shelter) {
    const state = c.shelter_phones === 0 ? "-" : silent ? t("silent")
      : (c.shelter_phones_confirmed > 0 ? t("shelter_ok") : t("shelter_waiting"));
    cells.push(el("td", {}, silent ? el("b", { class: "silent-label" }, state) : state));
  }
  cells.push(el("td", { class: "num" }, c.total), el("td", { class: "num" }, c.read + c.answered),
    el("td", { class: "num" }, c.to_call), el("td", { class: "num" }, c.urgent_open || 0));
  return el("tr", silent ? { class: "silent" } : (c.urgent_open > 0 ? { class: "urgent-row" } : {}), ...cells);
}

function renderStatus(st) {
  const rc = st.roll_call, c = st.progress.overall;
  S.rcInfo = rc;
  $("rc-title").textContent = "#" + rc.id + " " + rc.title + (rc.state === "closed" ? " (" + t("closed") + ")" : "");
  showElapsed();
  // The tab's title says when someone is waiting for help, so a desk in another tab sees it.
  document.title = (c.urgent_open > 0 ? "【" + t("title_urgent", { n: c.urgent_open }) + "】 " : "") + S.baseTitle;
  for (const k of ["total", "to_call", "reached", "urgent_open", "answered_urgent", "answered_attention", "resent"]) {
    $("p-" + k).textContent = c[k] || 0;
  }
  $("p-sent").textContent = c.sent + c.read + c.answered;
  $("p-confirmed").textContent = c.read + c.answered;
  $("p-phone_bad").textContent = (c.injured || 0) + (c.needs_help || 0) + (c.unreachable || 0);
  const shelters = Object.entries(st.progress.by_shelter);
  shelters.sort(([a, x], [b, y]) => (y.shelter_phones_silent > 0) - (x.shelter_phones_silent > 0) || a.localeCompare(b));
  $("by-shelter").replaceChildren(...shelters.map(([k, v]) => countRow(k, v, true)));
  $("by-department").replaceChildren(...Object.entries(st.progress.by_department).map(([k, v]) => countRow(k, v, false)));
  if (st.warnings && st.warnings.length) {
    $("health").textContent = st.warnings.join(" / ");
    $("health").hidden = false;
  } else {
    $("health").hidden = true;
  }
}

// ---- the action list ----
async function loadCalls() {
  if (!S.rc) return;
  const d = await getJson("/api/rollcalls/" + S.rc + "/escalations?scope=all");
  const todo = d.entries.filter((x) => x.to_call);
  const done = d.entries.filter((x) => !x.to_call);
  for (const k of ["urgent", "silent_shelter", "never_read", "not_sent"]) $("n-" + k).textContent = (d.counts || {})[k] || 0;
  $("print-rc").textContent = "#" + S.rc + " " + (S.rcInfo ? S.rcInfo.title : "") + " — " + t("as_of", { time: fmtDateTime(d.as_of || Date.now()) });
  const rows = [];
  let section = null;
  todo.forEach((x, i) => {
    if (x.action !== section) {
      section = x.action;
      const n = todo.filter((y) => y.action === section).length;
      rows.push(el("tr", { class: "section s-" + section }, el("th", { colspan: "8" }, "■ " + ACTION_LABEL[section][L()] + " — " + n)));
    }
    const e = x.entry;
    const btn = el("button", { type: "button", class: "secondary small", "data-record": e.staff_id }, t("record"));
    rows.push(el("tr", { "data-staff": e.staff_id, class: "a-" + x.action },
      el("td", {}, i + 1), el("td", {}, nameCell(e)), el("td", {}, group(e)),
      el("td", {}, phoneLinks(e)), saidCell(x), el("td", { class: "num" }, x.minutes_waiting),
      handlingCell(e), el("td", { class: "no-print" }, btn)));
  });
  $("tocall").replaceChildren(...rows);
  $("done").replaceChildren(...done.map((x) => {
    const e = x.entry;
    const status = e.outcome
      ? el("span", { class: "proxy" }, t("proxy") + ": " + OUTCOME[e.outcome][L()] + " (" + desk(e.outcome_by) + " " + fmtTime(e.outcome_at) + ")")
      : (e.state === "read" || e.state === "answered") ? t("read_late") : "";
    const td = el("td", {}, status);
    for (const n of e.notes || []) td.append(el("div", { class: "note" }, fmtTime(n.at) + " " + desk(n.by) + ": " + n.text));
    return el("tr", { "data-staff": e.staff_id }, el("td", {}, nameCell(e)), el("td", {}, group(e)), td);
  }));
  $("queue-empty").hidden = todo.length > 0;
  for (const b of document.querySelectorAll("[data-record]")) {
    b.addEventListener("click", guard(() => openPerson(b.dataset.record, false)));
  }
  if (S.person) {
    const fresh = d.entries.find((x) => x.entry.staff_id === S.person.staff_id);
    if (fresh) showPerson(fresh.entry);
  }
}

async function loadAttention() {
  if (!S.rc) return;
  const d = await getJson("/api/rollcalls/" + S.rc + "/answers?level=attention");
  $("attention-empty").hidden = d.entries.length > 0;
  $("attention-list").replaceChildren(...d.entries.map((e) => el("tr", { "data-staff": e.staff_id },
    el("td", {}, nameCell(e)), el("td", {}, group(e)), saidCell({ entry: e, action: null }), el("td", {}, phoneLinks(e)))));
}

async function loadLate() {
  const d = await getJson("/api/late-answers");
  $("late").hidden = d.entries.length === 0;
  $("late-list").replaceChildren(...d.entries.map((a) => {
    const btn = el("button", { type: "button", class: "danger small" }, t("late_close"));
    btn.addEventListener("click", guard(async () => {
      const note = (prompt(t("late_note_prompt")) || "").trim();
      if (!note) return;
      await api("POST", "/api/late-answers/" + a.id + "/close", { note, desk: S.desk });
      await loadLate();
    }));
    return el("tr", {}, el("td", {}, nameCell(a)), el("td", {}, group(Object.assign({ kind: "staff" }, a))),
      el("td", {}, el("span", { class: "answer lvl-urgent" }, a.answer.label + " " + fmtTime(a.answer.at)),
        a.answer.text ? el("q", { class: "freetext" }, a.answer.text) : null, el("div", { class: "muted" }, "#" + a.roll_call_id)),
      el("td", {}, phoneLinks(a)), el("td", {}, btn));
  }));
}

// ---- one person: the claimed one, or one found or picked from the list ----
function showPerson(e) {
  S.person = e;
  $("person").hidden = !e;
  if (!e) return;
  $("person-name").replaceChildren(nameCell(e));
  $("person-role").textContent = "";
  $("person-group").textContent = group(e);
  const ans = $("person-answer");
  ans.replaceChildren();
  if (e.standing) {
    ans.append(el("span", { class: "answer lvl-" + e.standing.level }, e.standing.label + " " + fmtTime(e.standing.at)));
    if (e.standing.text) ans.append(el("q", { class: "freetext" }, e.standing.text));
  }
  $("person-phones").replaceChildren(phoneLinks(e));
  $("person-notes").replaceChildren(...(e.notes || []).map((n) => el("li", {}, fmtTime(n.at) + " " + desk(n.by) + ": " + n.text)));
  const urgent = e.standing && e.standing.level === "urgent";
  $("note-required").hidden = !urgent;
  $("release-btn").hidden = !S.claimed;
}

async function openPerson(staff, claimed) {
  showError("");
  const d = await getJson("/api/rollcalls/" + S.rc + "/people/" + encodeURIComponent(staff));
  S.claimed = claimed;
  $("note").value = "";
  showPerson(d.entry);
  $("person").scrollIntoView({ block: "nearest" });
}

async function claimNext() {
  showError("");
  const d = await (await api("POST", "/api/rollcalls/" + S.rc + "/calls/next", { desk: S.desk })).json();
  S.claimed = !!d.entry;
  $("note").value = "";
  showPerson(d.entry);
  $("queue-empty").hidden = !!d.entry;
  await loadCalls();
}

async function record(outcome) {
  if (!S.person) return;
  const note = $("note").value.trim();
  const body = { desk: S.desk };
  if (outcome) body.outcome = outcome;
  if (note) body.note = note;
  await api("POST", "/api/rollcalls/" + S.rc + "/calls/" + encodeURIComponent(S.person.staff_id), body);
  $("note").value = "";
  S.claimed = false;
  showPerson(null);
  await loadCalls();
  await loadAttention();
}

async function release() {
  if (!S.person) return;
  await api("POST", "/api/rollcalls/" + S.rc + "/calls/" + encodeURIComponent(S.person.staff_id) + "/release",
    { desk: S.desk });
  S.claimed = false;
  showPerson(null);
  await loadCalls();
}

async function search() {
  const q = $("search").value.trim();
  const ul = $("search-results");
  if (!q) { ul.hidden = true; return; }
  const d = await getJson("/api/rollcalls/" + S.rc + "/people?q=" + encodeURIComponent(q));
  ul.hidden = false;
  if (!d.people.length) { ul.replaceChildren(el("li", { class: "muted" }, t("search_none"))); return; }
  ul.replaceChildren(...d.people.map((p) => {
    const b = el("button", { type: "button", class: "secondary small" }, t("record"));
    b.addEventListener("click", guard(async () => { ul.hidden = true; await openPerson(p.staff_id, false); }));
    return el("li", {}, nameCell(p), " ", p.staff_id, " ", group(p), " ", phoneLinks(p), b);
  }));
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
$("logout-btn").addEventListener("click", () => {
  sessionStorage.removeItem("anpi-token");
  sessionStorage.removeItem("anpi-desk");
  location.reload();
});
$("desk-btn").addEventListener("click", () => {
  const d = askDesk(S.desk);
  if (d) { S.desk = d; sessionStorage.setItem("anpi-desk", d); showWho(); }
});
$("start-form").addEventListener("submit", guard(estimate));
$("confirm-btn").addEventListener("click", guard(confirmStart));
$("cancel-btn").addEventListener("click", () => { S.pendingStart = null; $("confirm").hidden = true; });
$("rc-select").addEventListener("change", () => { showPerson(null); watch(Number($("rc-select").value)); });
$("claim-btn").addEventListener("click", guard(claimNext));
$("release-btn").addEventListener("click", guard(release));
$("note-btn").addEventListener("click", guard(() => record(null)));
$("person-close").addEventListener("click", () => { S.claimed = false; showPerson(null); });
$("search-form").addEventListener("submit", guard(search));
for (const b of document.querySelectorAll("[data-outcome]")) {
  b.addEventListener("click", guard(() => record(b.dataset.outcome)));
}
$("csv-btn").addEventListener("click", guard(downloadCsv));
$("print-btn").addEventListener("click", () => window.print());
$("announce-btn").addEventListener("click", guard(announce));
$("close-btn").addEventListener("click", guard(closeRc));

applyLang();
$("desk").value = S.desk;
if (S.token) login(S.token);
