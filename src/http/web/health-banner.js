// The provider-trouble banner: one self-contained element (#health-banner) fed by
// GET /api/health. It reads the token and language the page keeps in sessionStorage and
// checks every 5 seconds; it shows what is failing, since when, and what that means.
(function () {
  "use strict";
  const el = document.getElementById("health-banner");
  if (!el) return;
  async function check() {
    const token = sessionStorage.getItem("anpi-token");
    if (!token) { el.hidden = true; return; }
    let d;
    try {
      const r = await fetch("/api/health", { headers: { Authorization: "Bearer " + token } });
      if (!r.ok) return;
      d = await r.json();
    } catch (e) {
      return; // the page reports network trouble itself
    }
    const list = d.degraded || [];
    el.textContent = "";
    if (list.length === 0) { el.hidden = true; return; }
    const ja = (sessionStorage.getItem("anpi-lang") || "ja") === "ja";
    const title = document.createElement("strong");
    title.textContent = ja ? "チャット連携に障害があります" : "Chat platform trouble";
    el.appendChild(title);
    for (const x of list) {
      const parts = String(x.label).split(" / ");
      const line = document.createElement("div");
      line.className = "health-" + x.component;
      line.textContent = (ja ? parts[0] : (parts[1] || parts[0]))
        + (ja ? "（" + x.since_local + " から）" : " (since " + x.since_local + ")");
      el.appendChild(line);
    }
    el.hidden = false;
  }
  check();
  setInterval(check, 5000);
})();
