"""The admin listener's status page (GET /): one HTML document with its
CSS and script inline (no external assets; the admin's Content-Security-Policy
allows nothing else), which fetches /status.json every second and redraws
the figures without reloading. Names from the config are set as text
(textContent), never as markup.

Per school: requests in flight against the configured limit (with this
instance's current part of it when limits are shared), the queue by class,
waiting pages per minute, admissions per second, the estimated wait, and
each upstream's health. Above the table: whether the limits are shared
(Redis, shared memory, or not) and whether this instance is failing static
(Redis not answering).
"""

STATUS_PAGE = b"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>schoolgate status</title>
<style>
body { font: 15px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #1d2430; background: #f6f7f9; }
h1 { font-size: 1.3rem; margin: 0 0 .3rem; }
#summary { color: #5a6475; margin-bottom: 1rem; }
#error, #fallback { color: #a4161a; font-weight: 600; }
#sharing { color: #5a6475; margin-bottom: 1rem; }
.lease { color: #5a6475; font-size: .8rem; }
table { border-collapse: collapse; width: 100%; background: #fff; box-shadow: 0 1px 2px #0002; }
th, td { text-align: left; padding: .45rem .6rem; border-bottom: 1px solid #e4e7ec;
         vertical-align: top; }
th { background: #eef1f5; font-weight: 600; font-size: .85rem; }
td.num { font-variant-numeric: tabular-nums; white-space: nowrap; }
.bar { height: 6px; background: #e4e7ec; border-radius: 3px; margin-top: 3px; width: 8rem; }
.bar span { display: block; height: 100%; border-radius: 3px; background: #2f9e44; }
.bar span.hot { background: #e8590c; }
.up, .down, .unknown { display: inline-block; padding: 0 .4rem; border-radius: .6rem;
                       font-size: .8rem; margin: 0 .2rem .2rem 0; }
.up { background: #d3f9d8; color: #2b8a3e; }
.down { background: #ffe3e3; color: #c92a2a; }
.unknown { background: #e9ecef; color: #495057; }
</style>
</head>
<body>
<h1>schoolgate</h1>
<div id="summary">loading&hellip;</div>
<div id="sharing"></div>
<div id="fallback"></div>
<div id="error"></div>
<table>
<thead><tr><th>School</th><th>In flight / limit</th><th>Queue by class</th>
<th>Waiting in line (called, serving / last)</th>
<th>Waiting pages / min</th><th>Admissions / s</th><th>Estimated wait</th>
<th>Upstreams</th></tr></thead>
<tbody id="schools"></tbody>
</table>
<script>
"use strict";
function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}
function seconds(s) {
  if (!s) return "none";
  if (s < 60) return Math.round(s) + " s";
  return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
}
function draw(data) {
  const when = new Date(data.time * 1000).toLocaleTimeString();
  document.getElementById("summary").textContent =
    data.workers + " of " + data.configured_workers + " worker(s) reporting, configuration "
    + data.generation + ", updated " + when;
  const sh = data.shared;
  document.getElementById("sharing").textContent = sh == null
    ? (data.redis ? "limits: shared through Redis, no worker reporting yet"
                  : "limits: not shared (one worker enforces each limit whole)")
    : sh.store === "redis"
      ? "limits: shared through Redis with every instance naming it ("
        + sh.participants + " participant(s) seen); each limit shown is the fleet's"
        + " (here: this instance's current part)"
      : "limits: shared between this instance's " + sh.workers
        + " workers through shared memory";
  document.getElementById("fallback").textContent = sh != null && sh.fallback
    ? "fallback: " + sh.fallback + " of " + sh.workers + " worker(s) failing static"
      + " (the shared store is not answering: each limit falls back to its part"
      + " divided by the participants last seen)"
    : "";
  const body = document.getElementById("schools");
  const rows = [];
  for (const s of data.schools) {
    const tr = document.createElement("tr");
    tr.dataset.school = s.name;
    cell(tr, s.title === s.name ? s.name : s.title + " (" + s.name + ")");
    const limit = s.max_inflight == null ? "unlimited" : s.max_inflight;
    const fl = cell(tr, s.inflight + " / " + limit, "num inflight");
    if (s.max_inflight) {
      const bar = document.createElement("div");
      bar.className = "bar";
      const fill = document.createElement("span");
      const share = Math.min(1, s.inflight / s.max_inflight);
      fill.style.width = (100 * share) + "%";
      if (share >= 0.9) fill.className = "hot";
      bar.appendChild(fill);
      fl.appendChild(bar);
    }
    if (sh != null && sh.store === "redis" && s.inflight_allotment != null) {
      const lease = document.createElement("div");
      lease.className = "lease";
      lease.textContent = "here: " + s.inflight_allotment;
      fl.appendChild(lease);
    }
    const q = Object.entries(s.queued).map(([k, n]) => k + ": " + n).join(", ");
    cell(tr, q || "empty", "num queued");
    const w = Object.entries(s.waiting).map(([k, n]) => k + ": " + n).join(", ");
    cell(tr, (w || "nobody") + " (" + s.called + " called, " + s.now_serving + " / "
         + s.last_ticket + ")", "num waiting");
    cell(tr, String(s.waiting_pages_per_minute), "num pages");
    cell(tr, String(s.admission_rate), "num rate");
    cell(tr, seconds(s.estimated_wait), "num wait");
    const ups = cell(tr, "", "upstreams");
    for (const u of s.upstreams) {
      const tag = document.createElement("span");
      tag.className = u.up === true ? "up" : u.up === false ? "down" : "unknown";
      tag.textContent = u.addr + (u.up === true ? " up" : u.up === false ? " down" : " ?");
      ups.appendChild(tag);
    }
    rows.push(tr);
  }
  body.replaceChildren(...rows);
}
async function tick() {
  try {
    const resp = await fetch("status.json", {cache: "no-store"});
    if (!resp.ok) throw new Error("status.json: " + resp.status);
    draw(await resp.json());
    document.getElementById("error").textContent = "";
  } catch (err) {
    document.getElementById("error").textContent = "not updating: " + err.message;
  }
  setTimeout(tick, 1000);
}
tick();
</script>
</body>
</html>
"""
