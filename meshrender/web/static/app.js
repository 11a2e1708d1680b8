// meshrender's web page: vanilla JS, inline under the page's CSP nonce. Live data comes from
// /events (server-sent events: the peer's snapshot, then its events as they happen).
"use strict";
(function () {
  const page = document.body.dataset.page;
  const COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45",
    "#fabed4", "#469990", "#dcbeff", "#9a6324", "#fffac8", "#800000", "#aaffc3", "#808000"];
  const short = (id) => (id || "?").slice(-12);

  // Party and Queue: fetch the table again (rendered by the server) when something changed.
  const part = document.getElementById("live-part");
  let refreshing = false, again = false;
  function refresh() {
    if (!part) return;
    if (refreshing) { again = true; return; }
    if (part.contains(document.activeElement) && document.activeElement.tagName === "INPUT") return;
    refreshing = true;
    fetch(location.pathname + "?part=" + part.dataset.part, { credentials: "same-origin" })
      .then((r) => (r.ok ? r.text() : Promise.reject(r.status)))
      .then((text) => { part.innerHTML = text; })
      .catch(() => {})
      .finally(() => { refreshing = false; if (again) { again = false; setTimeout(refresh, 500); } });
  }

  // Results: the provenance overlay on or off.
  const toggle = document.getElementById("show-overlay");
  if (toggle) toggle.addEventListener("change", () => document.body.classList.toggle("no-overlay", !toggle.checked));

  // Live: the running job's frame filling in, and its bucket map.
  const canvas = document.getElementById("live-frame");
  const status = document.getElementById("live-status");
  const legend = document.getElementById("live-legend");
  const events = document.getElementById("live-events");
  const showBuckets = document.getElementById("live-buckets");
  let lastFrame = null;
  function draw(fv) {
    lastFrame = fv;
    if (!canvas) return;
    const ctx = canvas.getContext("2d");
    if (!fv) {
      status.textContent = "No job is rendering on this peer's coordination right now.";
      ctx.clearRect(0, 0, canvas.width, canvas.height);
      legend.textContent = "";
      return;
    }
    const scale = Math.min(1, 720 / fv.width);
    canvas.width = Math.max(1, Math.round(fv.width * scale));
    canvas.height = Math.max(1, Math.round(fv.height * scale));
    const p = fv.preview, raw = atob(p.rgb), img = ctx.createImageData(p.cols, p.rows);
    for (let i = 0, j = 0; i < p.cols * p.rows; i++, j += 3) {
      img.data[4 * i] = raw.charCodeAt(j); img.data[4 * i + 1] = raw.charCodeAt(j + 1);
      img.data[4 * i + 2] = raw.charCodeAt(j + 2); img.data[4 * i + 3] = 255;
    }
    const small = document.createElement("canvas");
    small.width = p.cols; small.height = p.rows;
    small.getContext("2d").putImageData(img, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(small, 0, 0, canvas.width, canvas.height);
    let done = 0, total = 0;
    if (fv.buckets) {
      fv.buckets.forEach((b, i) => {
        done += Math.min(fv.done[i], fv.passes); total += fv.passes;
        if (!showBuckets.checked) return;
        const [x, y, w, h] = b.map((v) => v * scale), owner = fv.owner[i];
        ctx.strokeStyle = owner < 0 ? "rgba(128,128,128,.5)" : COLOURS[owner % COLOURS.length];
        ctx.lineWidth = fv.done[i] >= fv.passes ? 1 : 2;
        ctx.strokeRect(x + .5, y + .5, w - 1, h - 1);
      });
    }
    const pct = total ? Math.round(100 * done / total) : 0;
    status.textContent = `job ${fv.job.slice(0, 12)} · frame ${fv.frame} · ${fv.width}x${fv.height} · ` +
      (total ? `${done}/${total} bucket passes (${pct}%)` : "bucket map too large to send");
    legend.textContent = "";
    fv.peers.forEach((peer, i) => {
      const li = document.createElement("li"), sw = document.createElement("span");
      sw.className = "swatch c" + (i % COLOURS.length);
      li.append(sw, short(peer));
      legend.append(li);
    });
  }
  if (showBuckets) showBuckets.addEventListener("change", () => draw(lastFrame));

  function logEvent(ev) {
    if (!events) return;
    const li = document.createElement("li");
    const rest = Object.entries(ev).filter(([k]) => k !== "event" && k !== "t")
      .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" ");
    li.textContent = `${new Date(ev.t * 1000).toLocaleTimeString()} ${ev.event} ${rest}`.slice(0, 400);
    events.prepend(li);
    while (events.children.length > 100) events.lastChild.remove();
  }

  if (page === "party" || page === "queue" || page === "live") {
    const source = new EventSource("/events");
    let lastRefresh = 0;
    source.addEventListener("snapshot", (m) => {
      const snap = JSON.parse(m.data);
      if (page === "live") draw((snap.frames || [])[0] || null);
      if (page === "party" && Date.now() - lastRefresh > 2000) { lastRefresh = Date.now(); refresh(); }
    });
    source.addEventListener("event", (m) => {
      const ev = JSON.parse(m.data);
      logEvent(ev);
      if (page === "queue" && ev.event.startsWith("job-")) refresh();
      if (page === "queue" && ev.event === "frame-done") refresh();
      if (page === "party" && ev.event.startsWith("peer-")) refresh();
    });
    source.onerror = () => { if (status) status.textContent = "The event stream broke off; retrying…"; };
  }
})();
