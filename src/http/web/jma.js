// anpi HQ page: the JMA section (気象庁情報) and the drill report. Self-contained: it reads the
// token the page keeps in sessionStorage and follows the roll call chosen in #rc-select, and
// uses only the JSON API (/api/jma, /api/rollcalls/{id}/trigger, /api/rollcalls/{id}/drill-report).
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const token = () => sessionStorage.getItem("anpi-token") || "";
  const ACTION = {
    start: "自動開始 / started",
    upgrade: "強まった / stronger",
    notify: "本部へのお知らせ / HQ notice",
    retract: "取消 / retracted",
    ignore: "記録のみ / logged",
  };

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v; else e.setAttribute(k, v);
    }
    for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
    return e;
  }

  async function get(path) {
    const res = await fetch(path, { headers: { Authorization: "Bearer " + token() } });
    if (!res.ok) throw new Error(res.status + " " + res.statusText);
    return res;
  }

  function when(ms) {
    if (!ms) return "";
    return new Date(ms).toLocaleString("ja-JP", {
      timeZone: "Asia/Tokyo", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit",
    });
  }

  function telegramLine(r) {
    return el("li", { class: "jma-" + r.action },
      el("b", {}, ACTION[r.action] || r.action), " ",
      r.scope === "replay" ? "【再生・訓練 / replay】" : "",
      when(r.reported_at), " ", r.code + " " + r.kind, "（" + r.status + "・" + r.info_type + "） ",
      el("span", { class: "muted" }, r.headline || ""), el("br"),
      el("span", {}, r.reason || ""));
  }

  async function loadOverview() {
    if (!token()) return;
    let v;
    try { v = await (await get("/api/jma")).json(); } catch (_) { return; }
    const box = $("jma");
    box.hidden = !(v.enabled || v.rules.length || v.recent.length);
    const h = $("jma-health");
    if (!v.enabled) {
      h.textContent = "気象庁フィードの監視: 無効 / JMA feed watcher off";
      h.className = "muted";
    } else if (v.health && v.health.status === "ok") {
      h.textContent = "気象庁フィード: 正常 / JMA feed: ok";
      h.className = "good";
    } else {
      const stale = (v.health && v.health.stale || []).join(", ");
      h.textContent = "気象庁フィード: 停止・遅延（" + stale + "）/ JMA feed stale or failing";
      h.className = "error";
    }
    const list = $("jma-recent");
    list.replaceChildren();
    // Decisions first (starts, notices, retractions), then what was only logged (another
    // area, too old, already seen), muted: HQ sees every telegram anpi read.
    const acted = v.recent.filter((r) => r.action !== "ignore");
    const logged = v.recent.filter((r) => r.action === "ignore");
    for (const r of acted.slice(0, 10)) list.append(telegramLine(r));
    for (const r of logged.slice(0, 5)) {
      const li = telegramLine(r);
      li.classList.add("muted");
      list.append(li);
    }
    const more = Math.max(0, acted.length - 10) + Math.max(0, logged.length - 5);
    $("jma-ignored").textContent = more
      ? "ほか " + more + " 件 / " + more + " more (anpi jma log)"
      : "";
  }

  async function loadRollCall() {
    const sel = $("rc-select");
    const id = sel && sel.value;
    const why = $("jma-why");
    const rep = $("drill-report");
    if (!token() || !id) { why.hidden = true; rep.hidden = true; return; }
    try {
      const t = await (await get("/api/rollcalls/" + id + "/trigger")).json();
      why.replaceChildren();
      for (const r of t.telegrams) why.append(telegramLine(r));
      why.hidden = t.telegrams.length === 0;
    } catch (_) { why.hidden = true; }
    try {
      const r = await (await get("/api/rollcalls/" + id + "/drill-report")).json();
      rep.hidden = !r.drill;
      if (r.drill) renderReport(r);
    } catch (_) { rep.hidden = true; }
  }

  function secs(v) { return v === null || v === undefined ? "-" : v.toFixed(1); }

  function renderReport(r) {
    $("drill-state").textContent = r.finished
      ? "確定 / final"
      : "期限前の途中経過 / so far (deadline not passed)";
    const body = $("drill-groups");
    body.replaceChildren();
    const row = (name, g) => body.append(el("tr", {},
      el("td", {}, name), el("td", { class: "num" }, g.total), el("td", { class: "num" }, g.read),
      el("td", { class: "num" }, secs(g.read_p50_s)), el("td", { class: "num" }, secs(g.read_p95_s)),
      el("td", { class: "num" }, g.answered),
      el("td", { class: "num" }, secs(g.answer_p50_s)), el("td", { class: "num" }, secs(g.answer_p95_s)),
      el("td", { class: "num" }, g.never_reached)));
    row("全体 / overall", r.overall);
    for (const [k, g] of Object.entries(r.by_department)) row(k, g);
    for (const [k, g] of Object.entries(r.by_shelter)) row("避難所 " + k, g);
    const un = $("drill-unreached");
    un.replaceChildren();
    for (const u of r.never_reached) {
      un.append(el("li", {}, u.staff_id + " " + u.name + "（" + u.group + "）— " + u.why));
    }
  }

  async function downloadCsv() {
    const id = $("rc-select").value;
    if (!id) return;
    const blob = await (await get("/api/rollcalls/" + id + "/drill-report?format=csv")).blob();
    const a = el("a", { href: URL.createObjectURL(blob), download: "anpi-" + id + "-drill-report.csv" });
    document.body.append(a);
    a.click();
    a.remove();
  }

  function tick() { loadOverview(); loadRollCall(); }

  document.addEventListener("DOMContentLoaded", () => {
    const sel = $("rc-select");
    if (sel) sel.addEventListener("change", loadRollCall);
    $("drill-csv").addEventListener("click", downloadCsv);
    // The page fills and changes #rc-select itself: follow its value.
    let last = null;
    setInterval(() => {
      if (sel && sel.value !== last) { last = sel.value; loadRollCall(); }
    }, 2000);
    setTimeout(tick, 500);
    setInterval(tick, 30000);
  });
})();
