// fleetroll's status page: the services, their instances, the rollout in
// progress (live, from /events) and the recent ones, with a timeline.
// Everything shown is set as text, never as markup.
"use strict";

const state = { services: new Map(), rollouts: new Map(), seen: new Map() };
const csrf = document.querySelector('meta[name="csrf-token"]')?.content || "";
// The page opened on a rollout (/ui/rollouts/ID, the link of a Slack
// message or of Docker Hub's target_url).
const opened = (location.pathname.match(/^\/ui\/rollouts\/([0-9a-fA-F]{12})$/) || [])[1]?.toLowerCase() || "";
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

function yesNo(v) { return v === undefined ? "—" : (v ? "yes" : "no"); }

function seconds(ms) {
  if (!(ms > 0)) return "";
  return ms < 60000 ? (ms / 1000).toFixed(1) + " s" : Math.floor(ms / 60000) + " m " + Math.round((ms % 60000) / 1000) + " s";
}

function t(s) { return s ? Date.parse(s) : 0; }

// PHASES are a unit's steps, in order; each has its colour (.lane-*).
const PHASES = ["drain", "stop", "start", "health", "watch", "grace"];
// MARKED are the phases also marked where they begin: they can be short
// (a grace of 0 s), and they are the ones an operator looks for.
const MARKED = new Set(["drain", "health", "watch", "grace"]);

// scale chooses an axis's ticks for durations up to max (ms): a round
// step, about four ticks, the last at or above max.
function scale(max) {
  const steps = [100, 200, 500, 1000, 2000, 5000, 10000, 15000, 30000, 60000, 120000, 300000, 600000, 900000, 1800000, 3600000];
  const step = steps.find(s => s * 4 >= max) || Math.ceil(max / 4 / 3600000) * 3600000;
  const top = Math.max(step, Math.ceil(max / step) * step);
  const ticks = [];
  for (let v = 0; v <= top; v += step) ticks.push(v);
  return { top, ticks, label: v => step < 1000 ? (v / 1000).toFixed(1) + " s" : step < 60000 ? v / 1000 + " s" : v / 60000 + " m" };
}

function svgText(attrs, text) {
  const e = svg("text", attrs);
  e.textContent = text;
  return e;
}

function titled(e, text) {
  const title = svg("title", {});
  title.textContent = text;
  e.append(title);
  return e;
}

// stamp notes when the page received a state, so that how long an
// instance's target and state have disagreed keeps counting.
function stamp(svc) {
  const now = Date.now();
  for (const i of svc.instances) i.localSince = now - (i.disagreeing_seconds || 0) * 1000;
  return svc;
}

function disagreeing(i) {
  return "disagree for " + (seconds(Date.now() - i.localSince) || "0.0 s");
}

function duration(r) {
  const a = t(r.started), b = t(r.finished);
  return a && b ? b - a : 0;
}

async function load() {
  const resp = await fetch("/ui/state", { credentials: "same-origin" });
  if (!resp.ok) { document.getElementById("live").textContent = "cannot read the state (" + resp.status + ")"; return; }
  const doc = await resp.json();
  for (const svc of doc.services) {
    state.services.set(svc.name, stamp(svc));
    for (const r of svc.rollouts) state.rollouts.set(r.id, r);
  }
  renderAll();
}

function renderAll() {
  const main = document.getElementById("services");
  main.replaceChildren(...[...state.services.values()].map(renderService));
}

function rolloutsOf(name) {
  return [...state.rollouts.values()].filter(r => r.service === name)
    .sort((a, b) => (t(b.started) || Infinity) - (t(a.started) || Infinity) || (b.id < a.id ? -1 : 1));
}

function renderService(svc) {
  const sec = el("section", { class: "service", id: "svc-" + svc.name });
  const title = el("h2", {}, svc.name);
  title.append(el("span", { class: "release" }, svc.release || svc.image || "no image configured (each start pulls the newest)"));
  if (csrf) {
    const roll = el("button", { type: "button", class: "roll" }, "Roll now");
    roll.addEventListener("click", () => act("/ui/roll?service=" + encodeURIComponent(svc.name), roll));
    title.append(roll);
    if (svc.previous) {
      const back = el("button", { type: "button", class: "rollback", title: "deploy " + svc.previous + " again" }, "Roll back");
      back.addEventListener("click", () => act("/ui/rollback?service=" + encodeURIComponent(svc.name), back));
      title.append(back);
    }
  }
  sec.append(title);
  if (svc.error) sec.append(el("p", { class: "error" }, svc.error));
  if ((svc.quarantined || []).length) {
    const q = el("table", { class: "quarantined" }, el("tr", {}, el("th", {}, "quarantined digest"), el("th", {}, "tag"),
      el("th", {}, "rollout"), el("th", {}, "since"), el("th", {}, "reason")));
    for (const d of svc.quarantined) {
      q.append(el("tr", { "data-digest": d.digest, title: "fleetroll release clear " + svc.name + " " + d.digest + " lifts it" },
        el("td", {}, d.digest), el("td", {}, d.tag || "—"), el("td", {}, d.rollout), el("td", {}, d.at ? new Date(d.at).toLocaleString() : ""),
        el("td", {}, d.reason)));
    }
    sec.append(q);
  }

  const inst = el("table", { class: "instances" }, el("tr", {}, el("th", {}, "instance"), el("th", {}, "machine"),
    el("th", { title: "fleet's target state" }, "fleet"), el("th", { title: "systemd's state, as fleet publishes it" }, "systemd"),
    el("th", { title: "whether fleet's target and systemd's state agree (since this receiver's first reading that saw them disagree)" }, "target and state"),
    el("th", {}, "in the proxy"), el("th", {}, "healthy")));
  for (const i of svc.instances) {
    const agree = i.disagrees
      ? el("td", { class: "disagree", "data-local-since": String(i.localSince),
        title: "fleet's target is " + i.fleet + ", systemd's state " + i.systemd + ", since " + new Date(i.disagreeing_since).toLocaleString() }, disagreeing(i))
      : el("td", {}, "agree");
    inst.append(el("tr", { "data-unit": i.unit, "data-disagrees": String(!!i.disagrees), class: i.disagrees ? "disagrees" : "" },
      el("td", {}, i.unit), el("td", {}, i.machine || "—"), el("td", {}, i.fleet),
      el("td", {}, i.systemd), agree, el("td", {}, yesNo(i.announced)), el("td", {}, yesNo(i.healthy))));
  }
  sec.append(inst);

  const all = rolloutsOf(svc.name);
  const current = all.find(r => r.status === "running" || r.status === "paused");
  const cur = el("div", { class: "current" });
  if (current) {
    cur.append(el("h3", {}, "Rollout " + current.id + " ", el("span", { class: "status-" + current.status }, current.status), ...decisions(current)));
    const tbl = el("table", { class: "units" }, el("tr", {}, el("th", {}, "unit"), el("th", {}, "phase"), el("th", {}, "outcome"), el("th", { class: "w" }, "time")));
    for (const u of current.units) {
      const seen = state.seen.get(current.id + " " + u.unit) || [];
      // A bar for a unit that has begun: growing with its phase in
      // flight, or its whole time once done; none for a pending one.
      const phases = u.phases || [];
      const time = el("td", {});
      const row = el("tr", { "data-unit": u.unit, "data-phase": u.phase || "", "data-outcome": u.outcome || "", "data-seen": seen.join(" "), class: "phase-" + (u.phase || "none") },
        el("td", {}, u.unit), el("td", {}, u.phase || ""), el("td", {}, u.outcome), time);
      const open = phases.at(-1);
      if (open && !open.finished) {
        row.dataset.since = String(t(open.started));
        const bar = el("div", { class: "bar", title: open.phase + (open.diagnosis ? ": " + open.diagnosis : "") });
        bar.style.width = barWidth(Date.now() - t(open.started));
        time.append(bar);
      } else if (open) {
        const took = t(open.finished) - t(phases[0].started);
        const bar = el("div", { class: "bar", title: seconds(took) || "0.0 s" });
        bar.style.width = barWidth(took);
        time.append(bar);
      }
      tbl.append(row);
    }
    cur.append(tbl);
  }
  sec.append(cur);

  const hist = el("table", { class: "history" }, el("tr", {}, el("th", {}, "rollout"), el("th", {}, "trigger"),
    el("th", {}, "result"), el("th", {}, "took"), el("th", {}, "started")));
  for (const r of all.filter(r => r.status !== "running" && r.status !== "paused")) {
    const trig = [r.trigger?.source, r.trigger?.repository && (r.trigger.repository + (r.trigger.tag ? ":" + r.trigger.tag : ""))].filter(Boolean).join(" ");
    const row = el("tr", { "data-id": r.id, "data-status": r.status }, el("td", {}, r.id), el("td", {}, trig),
      el("td", { class: "status-" + r.status }, r.status), el("td", {}, seconds(duration(r))), el("td", {}, r.started ? new Date(r.started).toLocaleString() : ""));
    row.addEventListener("click", () => showDetail(r.id));
    if (csrf && r.status === "queued") {
      const cancel = el("button", { type: "button", class: "cancel" }, "Cancel");
      cancel.addEventListener("click", (e) => { e.stopPropagation(); act("/ui/cancel?id=" + encodeURIComponent(r.id), cancel); });
      row.append(el("td", {}, cancel));
    }
    hist.append(row);
  }
  sec.append(el("h3", {}, "Recent rollouts"), chart(all), hist);
  return sec;
}

// chart draws the durations of the last 50 rollouts, oldest left: a
// seconds axis, and under each bar its result.
function chart(all) {
  const done = all.filter(r => duration(r) > 0).slice(0, 50).reverse();
  const left = 44, plot = 90, top = 8, below = 78, slot = 13;
  const w = left + 50 * slot + 8, h = top + plot + below;
  const s = svg("svg", { class: "chart", width: w, height: h, viewBox: `0 0 ${w} ${h}`, role: "img", "aria-label": "rollout durations" });
  if (!done.length) {
    s.setAttribute("height", 24);
    s.append(svgText({ x: 0, y: 16, class: "empty" }, "no finished rollouts yet"));
    return s;
  }
  const sc = scale(Math.max(...done.map(duration)));
  const y = v => top + plot - v / sc.top * plot;
  const axis = svg("g", { class: "axis" });
  axis.append(svg("line", { x1: left, x2: left, y1: top, y2: top + plot }), svg("line", { x1: left, x2: w, y1: top + plot, y2: top + plot }));
  for (const v of sc.ticks) {
    axis.append(svg("line", { class: "grid", x1: left - 4, x2: w, y1: y(v), y2: y(v) }),
      svgText({ x: left - 6, y: y(v) + 4, class: "tick", "text-anchor": "end" }, sc.label(v)));
  }
  s.append(axis);
  done.forEach((r, i) => {
    const x = left + 2 + i * slot, d = duration(r);
    const ok = r.status === "succeeded";
    s.append(titled(svg("rect", { x, y: y(d), width: slot - 3, height: Math.max(1, top + plot - y(d)), class: ok ? "" : "failed", "data-id": r.id }),
      r.id + ": " + seconds(d) + ", " + r.status));
    const lx = x + (slot - 3) / 2 + 4, ly = top + plot + 4;
    s.append(svgText({ x: lx, y: ly, class: "result" + (ok ? "" : " failed"), "data-id": r.id, "text-anchor": "end", transform: `rotate(-90 ${lx} ${ly})` }, r.status));
  });
  return s;
}

// timeline draws one lane per unit from the record's phase timings, on an
// axis of seconds from the rollout's start, with a legend of the phases;
// drain, health, watch and grace are also marked where they begin (a
// grace of 0 s is a mark alone), and a phase fleetroll diagnosed is
// outlined, its diagnosis in its title. A unit not reached has no bar.
// Each lane carries when its unit went down (the stop began) and was
// running again (the start ended).
function timeline(r) {
  const spans = r.units.flatMap(u => u.phases || []);
  const t0 = Math.min(...spans.map(p => t(p.started)));
  const t1 = Math.max(...spans.map(p => t(p.finished) || Date.now()));
  const w = 700, lane = 22, left = 190, right = 16, pw = w - left - right;
  const sc = scale(Math.max(1, t1 - t0));
  const x = ms => left + ms / sc.top * pw;
  const lanesH = lane * r.units.length;
  const s = svg("svg", { width: w, height: lanesH + 74, role: "img", "aria-label": "timeline of rollout " + r.id });
  r.units.forEach((u, i) => {
    const g = svg("g", { class: "lane", "data-unit": u.unit, transform: `translate(0 ${i * lane})` });
    g.append(svgText({ x: 0, y: 15 }, u.unit));
    let down = 0, up = 0;
    const phases = u.phases || [];
    if (!phases.length) g.append(svgText({ x: left + 4, y: 15, class: "pending" }, u.outcome || "pending"));
    for (const p of phases) {
      const a = t(p.started), b = t(p.finished) || Date.now();
      if (p.phase === "stop" && !down) down = a;
      if (p.phase === "start") up = b;
      const what = p.phase + ": " + (seconds(b - a) || "0.0 s") + (p.finished ? "" : " so far") + (p.diagnosis ? "\n" + p.diagnosis : "");
      g.append(titled(svg("rect", { x: x(a - t0), y: 3, height: 14, width: Math.max(1, x(b - t0) - x(a - t0)),
        class: "lane-" + p.phase + (p.diagnosis ? " diagnosed" : ""), "data-phase": p.phase }), what));
      if (MARKED.has(p.phase)) {
        const mx = x(a - t0);
        g.append(titled(svg("path", { d: `M${mx - 4} 0 L${mx + 4} 0 L${mx} 6 Z`, class: "mark lane-" + p.phase, "data-mark": p.phase }), what));
      }
    }
    if (down) g.setAttribute("data-down-start", String(down));
    if (up) g.setAttribute("data-down-end", String(up));
    s.append(g);
  });
  const axis = svg("g", { class: "axis", transform: `translate(0 ${lanesH + 2})` });
  axis.append(svg("line", { x1: left, x2: left + pw, y1: 0, y2: 0 }));
  for (const v of sc.ticks) {
    axis.append(svg("line", { x1: x(v), x2: x(v), y1: 0, y2: 4 }), svgText({ x: x(v), y: 15, class: "tick", "text-anchor": "middle" }, sc.label(v)));
  }
  axis.append(svgText({ x: left - 16, y: 15, "text-anchor": "end", class: "axis-title" }, "since the start"));
  s.append(axis);
  const legend = svg("g", { class: "legend", transform: `translate(${left} ${lanesH + 36})` });
  PHASES.forEach((p, i) => {
    legend.append(svg("rect", { x: i * 72, y: 0, width: 12, height: 12, class: "lane-" + p }), svgText({ x: i * 72 + 16, y: 10, "data-phase": p }, p));
  });
  legend.append(svg("path", { d: "M0 22 L8 22 L4 28 Z", class: "mark" }), svgText({ x: 14, y: 30 }, "where drain, health, watch or grace begins"),
    svg("rect", { x: 290, y: 20, width: 12, height: 10, class: "diagnosed" }), svgText({ x: 306, y: 30 }, "diagnosed: a stall (hover for what)"));
  s.append(legend);
  return s;
}

// decisions are the Promote and Abort buttons of a rollout paused after
// its canaries, for a session (none read-only).
function decisions(r) {
  if (!csrf || r.status !== "paused") return [];
  const promote = el("button", { type: "button", class: "promote", "data-rollout": r.id, title: "roll the other instances" }, "Promote");
  const abort = el("button", { type: "button", class: "abort", "data-rollout": r.id, title: "stop here; the other instances stay untouched" }, "Abort");
  for (const [b, what] of [[promote, "promote"], [abort, "abort"]]) {
    b.addEventListener("click", async (e) => {
      e.stopPropagation();
      const ans = await act("/ui/" + what + "?id=" + encodeURIComponent(r.id), b);
      note(ans.ok ? "rollout " + r.id + ": " + what + " recorded" : "rollout " + r.id + ": " + what + " refused: " + ans.message);
    });
  }
  return [promote, abort];
}

function note(text) { document.getElementById("detail-note").textContent = text; }

function showDetail(id) {
  const r = state.rollouts.get(id);
  if (!r) return;
  document.getElementById("detail-title").textContent = "Rollout " + r.id + " of " + r.service;
  let summary = r.status + (r.error ? ": " + r.error : "");
  if (r.status === "paused" && r.canary?.units?.length) summary += " after its canaries (" + r.canary.units.join(", ") + "): promote or abort";
  if (duration(r)) summary += " — " + seconds(duration(r));
  document.getElementById("detail-summary").textContent = summary;
  document.getElementById("detail-actions").replaceChildren(...decisions(r));
  const phased = r.units?.some(u => (u.phases || []).length);
  document.getElementById("timeline").replaceChildren(...(phased ? [timeline(r)] : []));
  const d = document.getElementById("detail");
  d.hidden = false;
  d.dataset.rollout = r.id;
  d.dataset.status = r.status;
}

// openRollout shows the rollout the page was opened on: from the services'
// recent rollouts, or read on its own.
async function openRollout(id) {
  if (!state.rollouts.has(id)) {
    let resp;
    try {
      resp = await fetch("/ui/rollout?id=" + encodeURIComponent(id), { credentials: "same-origin" });
    } catch (e) {
      resp = null;
    }
    if (!resp || !resp.ok) {
      const d = document.getElementById("detail");
      document.getElementById("detail-title").textContent = "Rollout " + id;
      document.getElementById("detail-summary").textContent = resp && resp.status === 404 ? "no such rollout" : "the rollout could not be read" + (resp ? " (" + resp.status + ")" : "");
      d.hidden = false;
      d.scrollIntoView();
      return;
    }
    const r = await resp.json();
    if (!state.rollouts.has(id)) state.rollouts.set(id, r); // an event may have brought a newer record
  }
  showDetail(id);
  document.getElementById("detail").scrollIntoView();
}

// refreshSoon reads the services' state again, at most twice a second.
let refreshTimer = 0;
function refreshSoon() {
  if (refreshTimer) return;
  refreshTimer = setTimeout(async () => {
    refreshTimer = 0;
    let doc;
    try {
      const resp = await fetch("/ui/state", { credentials: "same-origin" });
      if (!resp.ok) return;
      doc = await resp.json();
    } catch (e) {
      document.getElementById("live").textContent = "cannot read the state";
      return;
    }
    for (const svc of doc.services) {
      state.services.set(svc.name, stamp(svc));
      const old = document.getElementById("svc-" + svc.name);
      if (old) old.replaceWith(renderService(svc));
    }
  }, 500);
}

// act posts one of the page's actions with the session's CSRF token, and
// says how it went: {ok, message}.
async function act(path, button) {
  button.disabled = true;
  try {
    const resp = await fetch(path, { method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": csrf } });
    const ans = await resp.json().catch(() => ({}));
    const message = resp.ok ? (ans.id ? "rollout " + ans.id + ": " + (ans.decision || ans.status || "queued") : "done") : (ans.error || String(resp.status));
    button.title = message;
    return { ok: resp.ok, message };
  } catch (e) {
    button.title = "the receiver could not be reached";
    return { ok: false, message: button.title };
  } finally {
    button.disabled = false;
  }
}

function listen() {
  const live = document.getElementById("live");
  const es = new EventSource("/events");
  es.onopen = () => { live.textContent = "live"; };
  es.onerror = () => { live.textContent = "reconnecting…"; };
  const onEvent = (msg) => {
    const ev = JSON.parse(msg.data);
    state.rollouts.set(ev.rollout_id, ev.record);
    const act = document.getElementById("activity");
    const what = ev.unit ? ev.unit + ": " + (ev.kind === "phase" ? ev.phase : ev.kind)
      : "rollout " + ev.rollout_id + " of " + ev.service + ": " + ev.kind + (ev.kind === "resumed" ? " by " + ev.record.by : "");
    act.prepend(el("li", { "data-rollout": ev.rollout_id, "data-unit": ev.unit || "", "data-kind": ev.kind },
      new Date().toLocaleTimeString() + " " + what));
    while (act.children.length > 200) act.lastChild.remove();
    if (ev.unit) {
      const key = ev.rollout_id + " " + ev.unit;
      const seen = state.seen.get(key) || [];
      seen.push(ev.kind === "phase" ? ev.phase : ev.kind);
      state.seen.set(key, seen);
    }
    const svc = state.services.get(ev.service);
    if (svc) {
      const old = document.getElementById("svc-" + ev.service);
      if (old) old.replaceWith(renderService(svc));
    }
    if (document.getElementById("detail").dataset.rollout === ev.rollout_id) showDetail(ev.rollout_id);
    // A unit back, or a rollout over: the instances' states changed.
    if (ev.kind === "running" || ev.kind === "healthy" || !["queued", "progress", "phase", "stopping", "stopped", "starting"].includes(ev.kind)) refreshSoon();
  };
  for (const kind of ["queued", "resumed", "stopping", "stopped", "starting", "recovering", "running", "healthy", "failed", "phase", "paused", "decided",
    "succeeded", "interrupted", "superseded", "cancelled", "rolled_back", "aborted", "refused", "progress"]) {
    es.addEventListener(kind, onEvent);
  }
  es.addEventListener("reset", () => { load(); });
}

// barWidth is a unit's bar for a time (ms): a minute is the cell's width.
function barWidth(ms) { return Math.max(0, Math.min(100, ms / 600)) + "%"; }

// The bars of the units in flight grow with time, and so do the times
// instances' targets and states have disagreed.
setInterval(() => {
  for (const row of document.querySelectorAll("tr[data-since]")) {
    const bar = row.querySelector(".bar");
    if (bar) bar.style.width = barWidth(Date.now() - Number(row.dataset.since));
  }
  for (const td of document.querySelectorAll("td[data-local-since]")) {
    td.textContent = disagreeing({ localSince: Number(td.dataset.localSince) });
  }
}, 250);

document.getElementById("detail-close").addEventListener("click", () => {
  const d = document.getElementById("detail"); d.hidden = true; delete d.dataset.rollout; delete d.dataset.status;
  note("");
});
load().then(() => opened && openRollout(opened)).then(listen);
