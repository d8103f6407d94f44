// orchestrd status page: live updates over Server-Sent Events. The page works without this
// file; everything it adds to the page goes in as text (textContent, text nodes), never markup.
"use strict";
(function () {
  const body = document.body;
  const live = document.getElementById("live");
  const LOG_KEEP = 256 * 1024;
  const QUIET = ["worker.poll", "check.passed"];

  function cell(value) {
    const td = document.createElement("td");
    if (value instanceof Node) td.appendChild(value); else td.textContent = value == null ? "-" : String(value);
    return td;
  }
  function badge(state) {
    const span = document.createElement("span");
    const known = ["queued", "running", "succeeded", "failed", "cancelled", "interrupted", "paused",
                   "corrupt"];
    span.className = "badge st-" + (known.includes(state) ? state : "other");
    span.textContent = state || "-";
    return span;
  }
  function elapsed(s) {
    if (s == null) return "-";
    s = Math.floor(s);
    const pad = (n) => String(n).padStart(2, "0");
    return s >= 3600 ? Math.floor(s / 3600) + "h" + pad(Math.floor(s % 3600 / 60)) + "m"
      : Math.floor(s / 60) + "m" + pad(s % 60) + "s";
  }
  function stamp(iso) {
    // the time as the daemon wrote it (its local time), as the server-rendered cells show it
    return iso ? String(iso).slice(0, 19).replace("T", " ") : "-";
  }
  function usage(u) {
    if (!u) return "-";
    const parts = [];
    if (typeof u.tokens === "number") parts.push(u.tokens.toLocaleString() + " tok");
    if (typeof u.cost === "number") parts.push("$" + u.cost.toFixed(2));
    return parts.join(" · ") || "-";
  }
  // Open streams are closed when the page is left: a page kept in the back/forward cache
  // would otherwise hold its connections, and browsers allow only six per host.
  const streams = [];
  window.addEventListener("pagehide", () => { for (const es of streams) es.close(); });
  window.addEventListener("pageshow", (e) => { if (e.persisted) location.reload(); });

  function stream(url, onData) {
    const es = new EventSource(url);
    streams.push(es);
    es.onopen = () => live && live.classList.add("on");
    es.onerror = () => live && live.classList.remove("on");
    es.onmessage = (m) => onData(JSON.parse(m.data));
    return es;
  }
  function debounce(fn, ms) {
    let timer = null;
    return () => { if (!timer) timer = setTimeout(() => { timer = null; fn(); }, ms); };
  }

  function plansPage() {
    const table = document.getElementById("plans");
    const withUsage = table.dataset.usage === "1";
    async function refresh() {
      const r = await fetch("/api/plans" + location.search, { credentials: "same-origin" });
      if (!r.ok) return;
      const data = await r.json();
      const tbody = document.createElement("tbody");
      for (const p of data.plans) {
        const tr = document.createElement("tr");
        tr.dataset.plan = p.plan;
        const link = document.createElement("a");
        link.href = "/plans/" + encodeURIComponent(p.plan);
        link.textContent = p.plan;
        const first = cell(link);
        if (p.where === "archive") {
          const tag = document.createElement("span");
          tag.className = "tag"; tag.textContent = "archived";
          first.append(" ", tag);
        }
        const phase = p.phase ? p.phase + (p.phases_total ? " (" + p.phase_index + "/" + p.phases_total + ")" : "") : "-";
        const attempt = p.attempt ? ("#" + p.attempt + " " + (p.role || "")).trim() : "-";
        const last = p.last_event ? p.last_event.event + " " + stamp(p.last_event.ts) : "-";
        tr.append(first, cell(badge(p.state)), cell(phase), cell(attempt), cell(elapsed(p.elapsed)),
                  cell(last), cell(p.repo));
        if (withUsage) tr.append(cell(usage(p.usage)));
        tbody.appendChild(tr);
      }
      if (!data.plans.length) {
        const tr = document.createElement("tr"); tr.className = "empty";
        const td = cell("no plans match"); td.colSpan = 8; tr.appendChild(td); tbody.appendChild(tr);
      }
      table.replaceChild(tbody, table.tBodies[0]);
      document.getElementById("plans-count").textContent =
        data.total + " plans · page " + data.page + " of " + data.pages;
    }
    // polls and passed checks change no row's state: with many workers they would refetch the
    // table several times a second for every open page
    const later = debounce(refresh, 500);
    stream("/api/events?since=" + body.dataset.since, (e) => { if (!QUIET.includes(e.event)) later(); });
  }

  function planPage() {
    const id = body.dataset.plan;
    const events = document.getElementById("events").tBodies[0];
    let logStream = null;

    function followLog() {
      if (logStream) { logStream.close(); streams.splice(streams.indexOf(logStream), 1); logStream = null; }
      const pre = document.getElementById("log");
      if (!pre || !pre.dataset.follow) return;
      logStream = stream(pre.dataset.follow, (d) => {
        const stick = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
        pre.appendChild(document.createTextNode(d.text));
        if (pre.textContent.length > LOG_KEEP) pre.textContent = pre.textContent.slice(-LOG_KEEP);
        if (stick) pre.scrollTop = pre.scrollHeight;
      });
    }
    // Server-rendered parts are fetched again and swapped in whole: the server escaped them,
    // and markup parsed by DOMParser never runs scripts.
    async function refresh() {
      const r = await fetch(location.pathname, { credentials: "same-origin" });
      if (!r.ok) return;
      const doc = new DOMParser().parseFromString(await r.text(), "text/html");
      for (const part of ["summary", "phases"]) {
        const fresh = doc.getElementById(part), old = document.getElementById(part);
        if (fresh && old) old.replaceWith(document.adoptNode(fresh));
      }
      const fresh = doc.getElementById("log"), old = document.getElementById("log");
      if (fresh && (!old || old.dataset.follow.split("&offset=")[0] !== fresh.dataset.follow.split("&offset=")[0])) {
        const section = doc.getElementById("log-section");
        const mine = document.getElementById("log-section");
        if (mine) mine.replaceWith(document.adoptNode(section));
        else document.getElementById("phases").after(document.adoptNode(section));
        followLog();
      }
    }
    const later = debounce(refresh, 250);
    stream("/api/plans/" + encodeURIComponent(id) + "/events?since=" + body.dataset.since, (e) => {
      const tr = document.createElement("tr");
      const rest = Object.entries(e).filter(([k]) => !["ts", "event", "plan"].includes(k))
        .map(([k, v]) => k + "=" + (typeof v === "string" ? v : JSON.stringify(v))).join(" ");
      const code = document.createElement("code");
      code.textContent = rest.length > 400 ? rest.slice(0, 400) + "…" : rest;
      tr.append(cell(stamp(e.ts)), cell(e.event), cell(code));
      events.appendChild(tr);
      if (!QUIET.includes(e.event)) later();
    });
    followLog();
  }

  if (body.dataset.page === "plans") plansPage();
  if (body.dataset.page === "plan") planPage();
})();
