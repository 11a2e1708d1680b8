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

  // Stream: the session's previews on a canvas over a WebSocket (/stream/ws), and its edits.
  // Protocol: we send JSON text ({"t": "hello", fmt, quality, denoise}, "camera", "material",
  // "light", and "ack" once a frame is drawn); the server sends JSON ("session", "frame",
  // "edited", "error"), each "frame" header followed by one binary message, the image.
  const CAMERA_MS = 50; // camera messages at most 20 a second; the newest one waits its turn
  const ORBIT_RAD_PER_PX = 0.01, ELEVATION_MAX = Math.PI / 2 - 0.01, ZOOM_PER_WHEEL = 0.0015;
  const RETRY_MS = 2000;
  function stream() {
    const $ = (id) => document.getElementById(id);
    const view = $("stream-view"), statusLine = $("stream-status"), errorLine = $("stream-error");
    const fmt = $("stream-fmt"), quality = $("stream-quality"), denoise = $("stream-denoise");
    const matName = $("material-name"), matColor = $("material-color"), matRough = $("material-roughness");
    const matIor = $("material-ior"), lightIndex = $("light-index");
    const lightXYZ = [$("light-x"), $("light-y"), $("light-z")];
    let ws = null, header = null, session = null, camera = null, dragging = null;
    let sentCamera = 0, cameraTimer = null, frames = 0, bytes = 0, since = performance.now();

    // vectors
    const add = (a, b) => a.map((v, i) => v + b[i]), sub = (a, b) => a.map((v, i) => v - b[i]);
    const mul = (a, k) => a.map((v) => v * k), dot = (a, b) => a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
    const cross = (a, b) => [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]];
    const norm = (a) => { const l = Math.hypot(...a); return l > 0 ? mul(a, 1 / l) : a; };
    // the orbit frame: e1, e2 across `up`, so a camera is (radius, azimuth, elevation) about look_at
    function frame(up) {
      const u = norm(up), ref = Math.abs(u[2]) < 0.9 ? [0, 0, 1] : [1, 0, 0];
      const e1 = norm(cross(u, ref));
      return [e1, cross(u, e1), u];
    }
    function toSpherical(cam) {
      const [e1, e2, u] = frame(cam.up), o = sub(cam.position, cam.look_at), r = Math.hypot(...o) || 1e-6;
      return { r, az: Math.atan2(dot(o, e2), dot(o, e1)), el: Math.asin(Math.max(-1, Math.min(1, dot(o, u) / r))) };
    }
    function fromSpherical(cam, s) {
      const [e1, e2, u] = frame(cam.up), c = Math.cos(s.el);
      const o = add(add(mul(e1, c * Math.cos(s.az) * s.r), mul(e2, c * Math.sin(s.az) * s.r)), mul(u, Math.sin(s.el) * s.r));
      return { ...cam, position: add(cam.look_at, o) };
    }
    function orbit(cam, dx, dy) {
      const s = toSpherical(cam);
      s.az -= dx * ORBIT_RAD_PER_PX;
      s.el = Math.max(-ELEVATION_MAX, Math.min(ELEVATION_MAX, s.el + dy * ORBIT_RAD_PER_PX));
      return fromSpherical(cam, s);
    }
    function pan(cam, dx, dy) {
      const fwd = norm(sub(cam.look_at, cam.position)), right = norm(cross(fwd, cam.up)), up = cross(right, fwd);
      const dist = Math.hypot(...sub(cam.look_at, cam.position));
      const perPx = 2 * dist * Math.tan((cam.fov_deg * Math.PI) / 360) / (view.clientHeight || view.height);
      const move = add(mul(right, -dx * perPx), mul(up, dy * perPx));
      return { ...cam, position: add(cam.position, move), look_at: add(cam.look_at, move) };
    }
    function zoom(cam, wheel) {
      const s = toSpherical(cam);
      s.r = Math.max(1e-3, s.r * Math.exp(wheel * ZOOM_PER_WHEEL));
      return fromSpherical(cam, s);
    }

    function send(msg) { if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(msg)); }
    function hello() {
      send({ t: "hello", fmt: fmt.value, quality: Number(quality.value), denoise: denoise.checked });
    }
    function sendCamera() { // throttled, latest wins
      if (cameraTimer) return;
      const wait = Math.max(0, sentCamera + CAMERA_MS - performance.now());
      cameraTimer = setTimeout(() => {
        cameraTimer = null;
        sentCamera = performance.now();
        const c = camera;
        send({ t: "camera", position: c.position, look_at: c.look_at, up: c.up, fov_deg: c.fov_deg });
      }, wait);
    }
    const fix = (v) => Math.round(v * 1000) / 1000;

    function showSession(st) {
      const none = !st;
      $("no-session").hidden = !none;
      $("stream").hidden = none;
      if (none) { session = null; return; }
      const first = !session || session.id !== st.id;
      session = st;
      if (first || (!dragging && !cameraTimer)) camera = { ...st.camera };
      const c = st.camera, v = (a) => a.map((x) => x.toFixed(3)).join(", ");
      $("stream-camera").textContent = `camera at ${v(c.position)} looking at ${v(c.look_at)} · ` +
        `up ${v(c.up)} · ${c.fov_deg.toFixed(1)}° · scene ${st.scene}`;
      if (first) {
        view.width = st.width; view.height = st.height;
        matName.textContent = "";
        (st.materials || []).slice(0, 1000).forEach((m) => matName.append(new Option(m.name, m.name)));
        lightIndex.textContent = "";
        (st.lights || []).slice(0, 1000).forEach((l) => lightIndex.append(new Option(`${l.index}: ${l.kind}`, l.index)));
      }
      showMaterial(); showLight();
    }
    const toHex = (c) => "#" + c.map((v) => {
      const s = v <= 0.0031308 ? 12.92 * v : 1.055 * Math.pow(v, 1 / 2.4) - 0.055; // linear -> sRGB
      return Math.round(Math.max(0, Math.min(1, s)) * 255).toString(16).padStart(2, "0");
    }).join("");
    const fromHex = (hex) => [1, 3, 5].map((i) => {
      const s = parseInt(hex.slice(i, i + 2), 16) / 255; // sRGB -> linear
      return fix(s <= 0.04045 ? s / 12.92 : Math.pow((s + 0.055) / 1.055, 2.4));
    });
    function material() { return (session && session.materials || []).find((m) => m.name === matName.value); }
    function light() { return (session && session.lights || []).find((l) => String(l.index) === lightIndex.value); }
    function showMaterial() {
      const m = material();
      if (!m) return;
      if (document.activeElement !== matColor && m.color) matColor.value = toHex(m.color);
      if (document.activeElement !== matRough && m.roughness != null) matRough.value = m.roughness;
      if (document.activeElement !== matIor && m.ior != null) matIor.value = m.ior;
    }
    function showLight() {
      const l = light();
      if (!l || !l.position) return;
      lightXYZ.forEach((input, i) => { if (document.activeElement !== input) input.value = fix(l.position[i]); });
    }

    function drawFrame(blob) {
      const h = header;
      createImageBitmap(blob).then((bitmap) => {
        if (view.width !== bitmap.width || view.height !== bitmap.height) {
          view.width = bitmap.width; view.height = bitmap.height;
        }
        view.getContext("2d").drawImage(bitmap, 0, 0);
        bitmap.close();
        view.dataset.version = h.version; view.dataset.pass = h.pass_done;
        frames += 1; bytes += h.bytes;
        const now = performance.now(), secs = (now - since) / 1000;
        if (secs >= 2) {
          $("stream-bytes").textContent = `${(frames / secs).toFixed(1)} frames/s · ` +
            `${Math.round(bytes / secs / 1024)} KiB/s · ${Math.round(h.bytes / 1024)} KiB a frame`;
          frames = 0; bytes = 0; since = now;
        }
        statusLine.textContent = `version ${h.version} · pass ${h.pass_done}/${h.pass_count} · ` +
          `${h.samples} spp · ${h.width}x${h.height} · rendered by ${h.peers.map(short).join(", ") || "?"} · ` +
          `${h.mime.split("/")[1].toUpperCase()} ${(h.bytes / 1024).toFixed(1)} KiB` +
          (h.denoised ? " · denoised" : h.note ? ` · not denoised: ${h.note}` : "");
      }).catch((e) => { errorLine.textContent = `cannot draw a frame: ${e}`; })
        .finally(() => send({ t: "ack" }));
    }

    function connect() {
      const scheme = location.protocol === "https:" ? "wss://" : "ws://";
      ws = new WebSocket(scheme + location.host + "/stream/ws");
      ws.binaryType = "blob";
      ws.onopen = () => { statusLine.textContent = "Waiting for a frame…"; hello(); };
      ws.onmessage = (m) => {
        if (typeof m.data !== "string") {
          if (header) drawFrame(new Blob([m.data], { type: header.mime }));
          return;
        }
        const msg = JSON.parse(m.data);
        if (msg.t === "frame") header = msg;
        else if (msg.t === "session") showSession(msg.status);
        else if (msg.t === "error") errorLine.textContent = msg.message;
        else if (msg.t === "edited") errorLine.textContent = "";
      };
      ws.onclose = (e) => {
        statusLine.textContent = `The stream closed (${e.code}${e.reason ? ": " + e.reason : ""}); reconnecting…`;
        ws = null;
        setTimeout(connect, RETRY_MS);
      };
    }

    // the viewport: drag orbits about look_at, shift- or right-drag pans, the wheel dollies
    view.addEventListener("contextmenu", (e) => e.preventDefault());
    view.addEventListener("pointerdown", (e) => {
      if (!camera) return;
      dragging = { x: e.clientX, y: e.clientY, pan: e.shiftKey || e.button === 2 };
      view.setPointerCapture(e.pointerId);
    });
    view.addEventListener("pointermove", (e) => {
      if (!dragging || !camera) return;
      const dx = e.clientX - dragging.x, dy = e.clientY - dragging.y;
      if (!dx && !dy) return;
      dragging.x = e.clientX; dragging.y = e.clientY;
      camera = dragging.pan ? pan(camera, dx, dy) : orbit(camera, dx, dy);
      sendCamera();
    });
    const stop = () => { dragging = null; };
    view.addEventListener("pointerup", stop);
    view.addEventListener("pointercancel", stop);
    view.addEventListener("wheel", (e) => {
      if (!camera) return;
      e.preventDefault();
      camera = zoom(camera, e.deltaY);
      sendCamera();
    }, { passive: false });

    // controls
    [fmt, quality, denoise].forEach((el) => el.addEventListener("change", hello));
    matName.addEventListener("change", showMaterial);
    lightIndex.addEventListener("change", showLight);
    // each control sends its own field only (a diffuse material has no IOR to set)
    const sendMaterial = (field, value) => {
      const m = material();
      if (m) send({ t: "material", name: m.name, [field]: value });
    };
    matColor.addEventListener("change", () => sendMaterial("color", fromHex(matColor.value)));
    matRough.addEventListener("change", () => sendMaterial("roughness", Number(matRough.value)));
    matIor.addEventListener("change", () => {
      const v = Number(matIor.value);
      if (Number.isFinite(v) && v >= 1) sendMaterial("ior", v);
    });
    lightXYZ.forEach((input) => input.addEventListener("change", () => {
      const l = light();
      if (!l || lightXYZ.some((i) => !Number.isFinite(Number(i.value)) || i.value === "")) return;
      send({ t: "light", index: l.index, position: lightXYZ.map((i) => Number(i.value)) });
    }));
    connect();
  }

  if (page === "stream") stream();

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
