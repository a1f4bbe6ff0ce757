// The gateway's web page (daemons/gateway/web.py): plain JS, no build step, nothing from outside the board.
// Speak streams POST /v1/audio/speech as pcm (s16le, 24 kHz, mono) and schedules every chunk into a Web Audio
// graph as it arrives, so playback starts with the first audio. window.qwenStats says what happened (the
// tests read it): samples/chunks/bytes scheduled, ttfa_ms, rtf, and what the graph actually rendered.
//
// The same file is also the AudioWorklet module of the tap that counts rendered samples (loaded with
// audioWorklet.addModule on this URL): in a worklet scope there is no `document`, only registerProcessor.
"use strict";

if (typeof registerProcessor === "function" && typeof document === "undefined") {
  // ---- AudioWorklet scope: pass the audio through, count what is rendered
  class QwenTap extends AudioWorkletProcessor {
    constructor() {
      super();
      this.nonzero = 0; this.energy = 0; this.quanta = 0; this.last = -1;
      this.port.onmessage = (m) => { if (m.data === "reset") { this.nonzero = 0; this.energy = 0; } };
    }
    process(inputs, outputs) {
      const inp = inputs[0], out = outputs[0];
      if (inp && inp.length) {
        const x = inp[0];
        for (let c = 0; c < out.length; c++) out[c].set(inp[c] || x);
        for (let k = 0; k < x.length; k++) {
          const v = x[k];
          if (v !== 0) { this.nonzero++; this.energy += v * v; }
        }
      }
      if (++this.quanta % 8 === 0 && this.nonzero !== this.last) {
        this.last = this.nonzero;
        this.port.postMessage({ nonzero: this.nonzero, energy: this.energy });
      }
      return true;
    }
  }
  registerProcessor("qwen-tap", QwenTap);
} else {
  (() => {
    const RATE = 24000;
    const LEAD_S = 0.15;             // first chunk starts this far ahead: room for network jitter
    const KEY = "qwen3-tts.api-key";
    const FALLBACK_LANGUAGES = ["auto", "english", "chinese", "japanese", "korean", "german", "french", "russian",
      "portuguese", "spanish", "italian"];
    const $ = (id) => document.getElementById(id);

    const stats = {
      state: "idle", samples: 0, chunks: 0, bytes: 0, ttfa_ms: null, rtf: null, wall_ms: null, underruns: 0,
      played_nonzero: null, played_energy: null, expected_nonzero: 0, random_weights: null, error: null,
      content_type: null, downloads: {}, voices: [], clone: null, worklet: false, context_rate: null,
    };
    window.qwenStats = stats;

    let info = { random_weights: null, languages: null, voice_aliases: [] };
    let ctx = null, master = null, tap = null, tapReady = null;
    let current = null;        // the request being played: {abort, sources}
    let env = [];              // waveform envelope: [min, max] per 10 ms
    let envAcc = null;         // the bin being filled
    let playStart = null;      // context time of the first sample, for the playhead
    let playEnd = 0;

    // ---------- helpers
    function apiKey() { return ($("api-key").value || "").trim(); }
    function headers(extra) {
      const h = Object.assign({}, extra || {});
      const k = apiKey();
      if (k) h.Authorization = "Bearer " + k;
      return h;
    }
    async function errorText(resp) {
      // OpenAI's envelope {"error":{"message","type","param","code"}}; anything else as text
      let body = "";
      try { body = await resp.text(); } catch (e) { /* the body is gone */ }
      let msg = "";
      try {
        const e = JSON.parse(body).error;
        if (e && e.message) msg = e.message + (e.code ? ` (${e.code})` : "");
      } catch (e) { /* not JSON */ }
      if (!msg) msg = body.trim().slice(0, 300) || resp.statusText || "request failed";
      let s = `Error ${resp.status}: ${msg}`;
      if (resp.status === 401) s += "\nSet the API key at the bottom of the page.";
      if (resp.status === 429) s += `\nThe server is busy; retry in ${resp.headers.get("Retry-After") || "a few"} s.`;
      return s;
    }
    function showError(msg) {
      stats.error = msg;
      const el = $("error");
      el.textContent = msg;
      el.hidden = false;
    }
    function clearError() { stats.error = null; $("error").hidden = true; $("error").textContent = ""; }
    function setState(s) { stats.state = s; $("state").textContent = s; }
    function noise(on) {
      if (on === true) { stats.random_weights = true; $("noise-banner").hidden = false; }
      else if (on === false && stats.random_weights !== true) stats.random_weights = false;
    }
    function fmtMs(ms) { return ms == null ? "–" : `${Math.round(ms)} ms`; }
    function showStats() {
      $("ttfa").textContent = fmtMs(stats.ttfa_ms);
      $("rtf").textContent = stats.rtf == null ? "–" : stats.rtf.toFixed(3);
      $("duration").textContent = stats.samples ? `${(stats.samples / RATE).toFixed(2)} s` : "–";
      $("chunks").textContent = stats.chunks ? String(stats.chunks) : "–";
    }

    function requestBody(format) {
      const body = { model: "qwen3-tts", input: $("text").value, response_format: format,
                     language: $("language").value || "auto" };
      const voice = $("voice").value;
      if (voice) body.voice = voice;
      const seed = $("seed").value.trim();
      if (seed !== "") body.seed = Number(seed);
      const mf = $("max-frames").value.trim();
      if (mf !== "") body.max_frames = Number(mf);
      return body;
    }

    // ---------- model info, languages, voices
    function fillLanguages(select, langs) {
      const keep = select.value;
      select.textContent = "";
      for (const l of langs) {
        const o = document.createElement("option");
        o.value = l; o.textContent = l;
        select.appendChild(o);
      }
      if (keep && langs.includes(keep)) select.value = keep;
    }
    async function loadInfo() {
      try {
        const r = await fetch("/v1/info");
        if (r.ok) info = await r.json();
      } catch (e) { /* an older gateway: defaults */ }
      noise(info.random_weights);
      const langs = info.languages && info.languages.length ? info.languages : FALLBACK_LANGUAGES;
      fillLanguages($("language"), langs);
      fillLanguages($("clone-language"), langs);
    }
    async function loadVoices(select) {
      const sel = $("voice");
      const keep = select || sel.value;
      let voices = [];
      try {
        const r = await fetch("/v1/audio/voices", { headers: headers() });
        if (!r.ok) { showError(await errorText(r)); return; }
        voices = (await r.json()).voices || [];
      } catch (e) { showError(`Could not list the voices: ${e.message}`); return; }
      stats.voices = voices.map((v) => v.id);
      const aliases = new Set(info.voice_aliases || []);
      sel.textContent = "";
      const def = document.createElement("option");
      def.value = ""; def.textContent = "default voice";
      sel.appendChild(def);
      const own = voices.filter((v) => !aliases.has(v.id));
      const stock = voices.filter((v) => aliases.has(v.id));
      for (const v of own) {
        const o = document.createElement("option");
        o.value = v.id; o.textContent = v.name || v.id;
        sel.appendChild(o);
      }
      if (stock.length) {
        const g = document.createElement("optgroup");
        g.label = "OpenAI names";
        for (const v of stock) {
          const o = document.createElement("option");
          o.value = v.id; o.textContent = v.name || v.id;
          g.appendChild(o);
        }
        sel.appendChild(g);
      }
      if (keep && voices.some((v) => v.id === keep)) sel.value = keep;
    }

    // ---------- Web Audio
    async function audio() {
      if (!ctx) {
        try { ctx = new AudioContext({ sampleRate: RATE }); }  // the graph at 24 kHz: no resampling before it
        catch (e) { ctx = new AudioContext(); }
        stats.context_rate = ctx.sampleRate;
        master = ctx.createGain();
        // The tap (an AudioWorklet: secure contexts only, e.g. http://127.0.0.1 or https) counts the samples
        // the graph renders; elsewhere the page plays without it.
        tapReady = (async () => {
          if (!ctx.audioWorklet) { master.connect(ctx.destination); return; }
          try {
            await ctx.audioWorklet.addModule(document.querySelector("script[src$='app.js']").src);
            tap = new AudioWorkletNode(ctx, "qwen-tap", { numberOfInputs: 1, numberOfOutputs: 1,
              outputChannelCount: [1], channelCount: 1, channelCountMode: "explicit" });
            tap.port.onmessage = (m) => { stats.played_nonzero = m.data.nonzero; stats.played_energy = m.data.energy; };
            master.connect(tap).connect(ctx.destination);
            stats.worklet = true;
            stats.played_nonzero = 0; stats.played_energy = 0;
          } catch (e) {
            master.connect(ctx.destination);
          }
        })();
      }
      await tapReady;
      if (ctx.state !== "running") await ctx.resume();
      return ctx;
    }

    function schedule(f32, req) {
      const buf = ctx.createBuffer(1, f32.length, RATE);
      buf.copyToChannel(f32, 0);
      const src = ctx.createBufferSource();
      src.buffer = buf;
      src.connect(master);
      // Start times on the graph's sample grid (an integer frame count): back-to-back chunks join exactly,
      // with no sub-sample interpolation at their seams.
      const sr = ctx.sampleRate, now = ctx.currentTime;
      if (req.next / sr < now + 0.01) {         // first chunk, or the stream fell behind the playback
        if (req.next > 0) stats.underruns++;
        req.next = Math.ceil((now + LEAD_S) * sr);
        if (playStart == null) playStart = req.next / sr;
      }
      src.start(req.next / sr);
      req.next += Math.round(buf.duration * sr);
      playEnd = req.next / sr;
      req.sources.add(src);
      src.onended = () => {
        req.sources.delete(src);
        if (req.finished && req.sources.size === 0 && current === req) setState("done");
      };
    }

    function stopPlayback() {
      if (!current) return;
      const req = current;
      current = null;
      req.abort.abort();
      for (const s of req.sources) { try { s.stop(); } catch (e) { /* not started */ } }
      req.sources.clear();
    }

    // ---------- waveform
    const BIN = RATE / 100;
    function addToWave(f32) {
      for (let i = 0; i < f32.length; i++) {
        const v = f32[i];
        if (!envAcc) envAcc = [v, v, 0];
        if (v < envAcc[0]) envAcc[0] = v;
        if (v > envAcc[1]) envAcc[1] = v;
        if (++envAcc[2] === BIN) { env.push(envAcc); envAcc = null; }
      }
    }
    let drawPending = false;
    function drawSoon() { if (!drawPending) { drawPending = true; requestAnimationFrame(draw); } }
    function draw() {
      drawPending = false;
      const cv = $("wave");
      const w = cv.width = Math.max(300, Math.round(cv.clientWidth * (window.devicePixelRatio || 1)));
      const h = cv.height;
      const g = cv.getContext("2d");
      g.clearRect(0, 0, w, h);
      const bins = envAcc ? env.concat([envAcc]) : env;
      const span = Math.max(bins.length, 200);   // at least 2 s across, so the first chunks do not fill it
      const css = getComputedStyle(document.documentElement);
      g.fillStyle = css.getPropertyValue("--wave").trim() || "#3057d5";
      const mid = h / 2;
      for (let x = 0; x < w; x++) {
        const a = Math.floor(x * span / w), b = Math.max(a + 1, Math.floor((x + 1) * span / w));
        if (a >= bins.length) break;
        let lo = 0, hi = 0;
        for (let i = a; i < b && i < bins.length; i++) { lo = Math.min(lo, bins[i][0]); hi = Math.max(hi, bins[i][1]); }
        const y0 = mid - hi * mid, y1 = mid - lo * mid;
        g.fillRect(x, y0, 1, Math.max(1, y1 - y0));
      }
      if (ctx && playStart != null && bins.length) {  // playhead
        const t = Math.min(ctx.currentTime, playEnd) - playStart;
        if (t >= 0) {
          g.fillStyle = css.getPropertyValue("--fg").trim() || "#000";
          g.fillRect(Math.min(w - 1, Math.round(t * 100 * w / span)), 0, 1, h);
        }
        if (ctx.currentTime < playEnd) drawSoon();
      }
    }

    // ---------- Speak: stream and play
    async function speak() {
      clearError();
      stopPlayback();
      const body = requestBody("pcm");
      await audio();
      if (tap) tap.port.postMessage("reset");
      Object.assign(stats, { samples: 0, chunks: 0, bytes: 0, ttfa_ms: null, rtf: null, wall_ms: null,
                             underruns: 0, expected_nonzero: 0, content_type: null });
      if (stats.worklet) { stats.played_nonzero = 0; stats.played_energy = 0; }
      env = []; envAcc = null; playStart = null; playEnd = 0;
      showStats(); drawSoon();
      const req = { abort: new AbortController(), sources: new Set(), next: 0, finished: false /* next: in frames of ctx.sampleRate */ };
      current = req;
      $("speak").disabled = true; $("stop").disabled = false;
      setState("waiting");
      const t0 = performance.now();
      try {
        const resp = await fetch("/v1/audio/speech", { method: "POST", signal: req.abort.signal,
          headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify(body) });
        if (!resp.ok) { showError(await errorText(resp)); setState("error"); return; }
        stats.content_type = resp.headers.get("Content-Type");
        noise(resp.headers.get("X-Qwen3-TTS-Random-Weights") === "true" ? true : false);
        const reader = resp.body.getReader();
        let carry = null;
        setState("streaming");
        for (;;) {
          let chunk;
          try { chunk = await reader.read(); }
          catch (e) {
            if (current !== req) return;   // stopped by the user
            showError(`The stream ended early (the server reported an error after the first audio; see its log): ${e.message}`);
            setState("error");
            break;
          }
          if (chunk.done) break;
          if (current !== req) return;
          let bytes = chunk.value;
          if (!bytes || !bytes.length) continue;
          stats.bytes += bytes.length;
          if (carry) { const b = new Uint8Array(carry.length + bytes.length); b.set(carry); b.set(bytes, carry.length); bytes = b; carry = null; }
          const n = bytes.length >> 1;
          if (bytes.length & 1) carry = bytes.slice(bytes.length - 1);
          if (!n) continue;
          const dv = new DataView(bytes.buffer, bytes.byteOffset, n * 2);
          const f32 = new Float32Array(n);
          let nz = 0;
          for (let i = 0; i < n; i++) { const s = dv.getInt16(2 * i, true); if (s) nz++; f32[i] = s / 32768; }
          if (stats.ttfa_ms == null) stats.ttfa_ms = performance.now() - t0;
          stats.samples += n; stats.chunks += 1; stats.expected_nonzero += nz;
          stats.wall_ms = performance.now() - t0;
          stats.rtf = (stats.wall_ms / 1000) / (stats.samples / RATE);
          schedule(f32, req);
          addToWave(f32);
          showStats(); drawSoon();
        }
        stats.wall_ms = performance.now() - t0;
        if (stats.samples) stats.rtf = (stats.wall_ms / 1000) / (stats.samples / RATE);
        showStats(); drawSoon();
        req.finished = true;
        if (stats.state !== "error") setState(req.sources.size ? "playing" : "done");
      } catch (e) {
        if (e.name === "AbortError") { setState("stopped"); return; }
        showError(`Request failed: ${e.message}`);
        setState("error");
      } finally {
        if (current === req || !current) { $("speak").disabled = false; $("stop").disabled = true; }
      }
    }

    // ---------- downloads: the same request in another format, saved as a file
    const EXT = { mp3: "mp3", opus: "opus", aac: "aac", flac: "flac", wav: "wav", pcm: "pcm" };
    async function download(fmt, button) {
      clearError();
      button.disabled = true;
      try {
        const resp = await fetch("/v1/audio/speech", { method: "POST",
          headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify(requestBody(fmt)) });
        if (!resp.ok) { showError(await errorText(resp)); return; }
        noise(resp.headers.get("X-Qwen3-TTS-Random-Weights") === "true" ? true : false);
        const type = resp.headers.get("Content-Type") || "";
        const blob = await resp.blob();
        const seed = $("seed").value.trim();
        const name = `speech${seed !== "" ? "-seed" + seed : ""}.${EXT[fmt]}`;
        let a = document.getElementById("file-" + fmt);
        if (!a) {
          a = document.createElement("a");
          a.id = "file-" + fmt;
          $("downloads").appendChild(a);
        } else if (a.href) URL.revokeObjectURL(a.href);
        a.href = URL.createObjectURL(blob);
        a.download = name;
        a.dataset.contentType = type;
        a.dataset.bytes = String(blob.size);
        a.textContent = `${name} (${type}, ${(blob.size / 1024).toFixed(1)} KiB)`;
        stats.downloads[fmt] = { content_type: type, bytes: blob.size, name };
        a.click();
      } catch (e) {
        showError(`Download failed: ${e.message}`);
      } finally {
        button.disabled = false;
      }
    }

    // ---------- voice cloning by upload
    async function clone() {
      clearError();
      const file = $("clone-file").files[0];
      const name = $("clone-name").value.trim();
      const status = $("clone-status");
      if (!file) { showError("Choose a recording to clone (1–30 s)."); return; }
      if (!name) { showError("Give the new voice a name."); return; }
      const fd = new FormData();
      fd.append("name", name);
      fd.append("audio_sample", file, file.name);
      const tr = $("clone-transcript").value.trim();
      if (tr) fd.append("transcript", tr);
      const lang = $("clone-language").value;
      if (lang) fd.append("language", lang);
      $("clone").disabled = true;
      status.textContent = "encoding the voice…";
      stats.clone = { state: "uploading" };
      try {
        const resp = await fetch("/v1/audio/voices", { method: "POST", headers: headers(), body: fd });
        if (!resp.ok) {
          const msg = await errorText(resp);
          showError(msg);
          status.textContent = "failed";
          stats.clone = { state: "error", error: msg };
          return;
        }
        const v = await resp.json();
        stats.clone = { state: "done", id: v.id, name: v.name };
        await loadVoices(v.id);
        $("voice").value = v.id;
        status.textContent = `voice “${v.name || v.id}” created and selected`;
      } catch (e) {
        showError(`Upload failed: ${e.message}`);
        status.textContent = "failed";
        stats.clone = { state: "error", error: e.message };
      } finally {
        $("clone").disabled = false;
      }
    }

    // ---------- wiring
    async function init() {
      $("api-base").textContent = `${location.origin}/v1`;
      try { $("api-key").value = localStorage.getItem(KEY) || ""; } catch (e) { /* storage disabled */ }
      $("api-key").addEventListener("input", () => {
        try { localStorage.setItem(KEY, apiKey()); } catch (e) { /* storage disabled */ }
      });
      $("speak").addEventListener("click", () => { speak(); });
      $("stop").addEventListener("click", () => {
        stopPlayback(); setState("stopped"); $("speak").disabled = false; $("stop").disabled = true;
      });
      for (const b of document.querySelectorAll("button.dl")) b.addEventListener("click", () => download(b.dataset.format, b));
      $("clone").addEventListener("click", () => { clone(); });
      window.addEventListener("resize", drawSoon);
      await loadInfo();
      await loadVoices();
      draw();
      document.body.dataset.ready = "1";
    }
    init();
  })();
}
