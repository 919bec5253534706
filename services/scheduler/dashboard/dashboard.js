// twinbridge dashboard: polls the scheduler's admin API (same origin) and renders the fleet.
// The admin token is asked for once, kept in sessionStorage and sent on every call as
// `Authorization: Bearer <token>`; a 401 stops polling and shows the token form again.
// Everything is rendered with textContent (never innerHTML): letters and payloads are untrusted.
'use strict';

(() => {
  const TOKEN_KEY = 'twinbridge.adminToken';
  const POLL_MS = 1500;          // fleet, shards, workers
  const DLQ_EVERY_MS = 10000;    // the DLQ list, unless its count changes sooner
  const RATE_WINDOW_MS = 5000;   // msgs/s are averaged over this much history
  const CHART_POINTS = 120;      // 3 minutes at 1.5 s
  const DLQ_PAGE = 100;

  const $ = (id) => document.getElementById(id);

  let token = sessionStorage.getItem(TOKEN_KEY); // null: try without one
  let timer = null;
  let running = false;
  let stopped = true;
  const samples = [];            // {t, received, delivered} of recent polls
  const chart = [];              // {in, out} rates, oldest first
  let lastDeadLetters = null;
  let lastDlqLoad = 0;
  let dlqLimit = DLQ_PAGE;
  const selected = new Set();    // letter ids ticked in the DLQ table
  let shownLetters = [];
  let thingName = null;
  let thingBusy = false;

  // ------------------------------------------------------------------ API

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(method, path, body) {
    const headers = { Accept: 'application/json' };
    if (token) headers.Authorization = 'Bearer ' + token;
    const init = { method, headers, cache: 'no-store', credentials: 'omit' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, 'unreachable', 'cannot reach the scheduler');
    }
    const text = await res.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch (e) { data = null; }
    }
    if (res.status === 401) {
      refused();
      throw new ApiError(401, 'unauthorized', 'the scheduler refused the token');
    }
    if (!res.ok) {
      const code = (data && data.code) || 'http_' + res.status;
      const message = (data && data.message) || res.statusText || 'HTTP ' + res.status;
      throw new ApiError(res.status, code, message);
    }
    return data;
  }

  // ------------------------------------------------------------------ formatting

  const nf = new Intl.NumberFormat('en-US');
  const int = (n) => (typeof n === 'number' ? nf.format(n) : '–');
  function rate(n) {
    if (n === null || n === undefined || !isFinite(n)) return '–';
    return n >= 100 ? nf.format(Math.round(n)) : n.toFixed(1);
  }
  function duration(ms) {
    if (typeof ms !== 'number') return '–';
    if (ms < 1000) return ms + ' ms';
    if (ms < 60000) return (ms / 1000).toFixed(1) + ' s';
    if (ms < 3600000) return Math.floor(ms / 60000) + ' min ' + Math.floor((ms % 60000) / 1000) + ' s';
    return (ms / 3600000).toFixed(1) + ' h';
  }
  const age = (epochMs) => (typeof epochMs === 'number' && epochMs > 0 ? duration(Math.max(0, Date.now() - epochMs)) + ' ago' : '–');
  function clock(epochMs) {
    if (typeof epochMs !== 'number' || epochMs <= 0) return '–';
    const d = new Date(epochMs);
    const pad = (n, w = 2) => String(n).padStart(w, '0');
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  }
  const isoTime = (epochMs) => (typeof epochMs === 'number' && epochMs > 0 ? new Date(epochMs).toISOString() : '');
  function short(text, max) {
    const s = String(text);
    return s.length > max ? s.slice(0, max - 1) + '…' : s;
  }
  function payloadText(p) {
    if (p === null || p === undefined) return '';
    if (typeof p === 'string') return p;
    if (p.base64 !== undefined) return 'base64:' + p.base64;
    return JSON.stringify(p);
  }

  // ------------------------------------------------------------------ DOM helpers

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') node.className = v;
      else if (k === 'text') node.textContent = v;
      else if (k.startsWith('data-')) node.dataset[k.slice(5).replace(/-(\w)/g, (_, c) => c.toUpperCase())] = v;
      else if (k in node) node[k] = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  function badge(text, tone) {
    return el('span', { class: 'badge' + (tone ? ' ' + tone : ''), text });
  }

  /// Sets a cell to text (or a node) only when it changed, so rows kept across polls stay put.
  function cell(td, content, title) {
    if (content instanceof Node) {
      td.replaceChildren(content);
    } else if (td.textContent !== String(content)) {
      td.textContent = String(content);
    }
    if (title !== undefined) td.title = title;
  }

  /// Keeps one <tr> per key: rows are made once (`make`), updated in place (`fill`) and reordered,
  /// so buttons and checkboxes survive the refresh.
  function syncRows(tbody, items, keyOf, make, fill) {
    const old = new Map(Array.from(tbody.rows, (r) => [r.dataset.key, r]));
    let before = tbody.firstChild;
    for (const item of items) {
      const key = String(keyOf(item));
      let row = old.get(key);
      if (row) old.delete(key);
      else {
        row = make(item);
        row.dataset.key = key;
      }
      fill(row, item);
      if (row !== before) tbody.insertBefore(row, before);
      before = row.nextSibling;
    }
    for (const r of old.values()) r.remove();
  }

  function tds(n, classes = []) {
    return Array.from({ length: n }, (_, i) => el('td', { class: classes[i] || undefined }));
  }

  function setResult(id, text, ok) {
    const p = $(id);
    p.textContent = text;
    p.className = 'result' + (text ? (ok ? ' ok' : ' error') : '');
  }

  function setValue(id, text, raw, tone) {
    const node = $(id);
    if (node.textContent !== text) node.textContent = text;
    if (raw !== undefined) node.dataset.value = String(raw);
    node.classList.toggle('warn', tone === 'warn');
    node.classList.toggle('bad', tone === 'bad');
  }

  function setStatus(state, text) {
    const s = $('status');
    s.dataset.state = state;
    s.textContent = text;
  }

  // ------------------------------------------------------------------ auth

  function showLogin(message, isError) {
    $('dashboard').hidden = true;
    $('sign-out').hidden = true;
    $('login').hidden = false;
    const m = $('login-message');
    m.textContent = message;
    m.classList.toggle('error', Boolean(isError));
    const input = $('token');
    input.value = '';
    input.focus();
  }

  function stop() {
    stopped = true;
    clearTimeout(timer);
    timer = null;
  }

  function refused() {
    if (stopped && !$('login').hidden) return;
    stop();
    if (token) {
      sessionStorage.removeItem(TOKEN_KEY);
      token = null;
      setStatus('refused', 'token refused');
      showLogin('Token refused: the scheduler answered 401 Unauthorized. Check scheduler.admin_token and try again.', true);
    } else {
      setStatus('refused', 'token required');
      showLogin("This scheduler's admin API needs its token (scheduler.admin_token).", false);
    }
  }

  function showDashboard() {
    if (!$('dashboard').hidden) return;
    $('login').hidden = true;
    $('dashboard').hidden = false;
    $('sign-out').hidden = !token;
  }

  // ------------------------------------------------------------------ polling

  function start() {
    stopped = false;
    clearTimeout(timer);
    timer = setTimeout(poll, 0);
  }

  function schedule() {
    if (stopped || document.hidden) return;
    clearTimeout(timer);
    timer = setTimeout(poll, POLL_MS);
  }

  async function poll() {
    if (running) return;
    running = true;
    try {
      const [fleet, shards, workers] = await Promise.all([
        api('GET', '/v1/fleet'),
        api('GET', '/v1/shards'),
        api('GET', '/v1/workers'),
      ]);
      showDashboard();
      renderFleet(fleet);
      renderShards(shards || []);
      renderWorkers(workers || []);
      const now = Date.now();
      if (fleet.dead_letters !== lastDeadLetters || now - lastDlqLoad > DLQ_EVERY_MS) {
        lastDeadLetters = fleet.dead_letters;
        await loadDlq();
      }
      if (thingName) await loadThing(false);
      setStatus('live', 'live · updated ' + clock(now).slice(0, 8));
    } catch (e) {
      if (e.status !== 401) {
        const state = e.status === 0 ? 'unreachable' : e.status === 503 ? 'starting' : 'error';
        setStatus(state, e.status === 0 ? 'scheduler unreachable · retrying' : `${e.code}: ${e.message}`);
      }
    } finally {
      running = false;
      schedule();
    }
  }

  // ------------------------------------------------------------------ fleet

  function renderFleet(f) {
    const t = performance.now();
    const c = f.counters || {};
    const received = Number(c.received || 0);
    const delivered = Number(c.delivered || 0);
    const last = samples[samples.length - 1];
    if (last && (received < last.received || delivered < last.delivered)) samples.length = 0; // store reset
    samples.push({ t, received, delivered });
    while (samples.length > 2 && t - samples[1].t >= RATE_WINDOW_MS) samples.shift();
    let rin = null;
    let rout = null;
    if (samples.length > 1) {
      const a = samples[0];
      const secs = (t - a.t) / 1000;
      if (secs > 0) {
        rin = (received - a.received) / secs;
        rout = (delivered - a.delivered) / secs;
      }
    }
    setValue('m-things', int(f.things), f.things);
    setValue('m-shards', `${int(f.shards_owned)} / ${int(f.shards)}`, f.shards_owned,
      f.shards_owned < f.shards ? 'warn' : undefined);
    setValue('m-workers', int(f.workers), f.workers, f.workers === 0 && f.shards > 0 ? 'bad' : undefined);
    setValue('m-rate-in', rate(rin), rin === null ? '' : rin.toFixed(3));
    setValue('m-rate-delivered', rate(rout), rout === null ? '' : rout.toFixed(3));
    setValue('m-received', int(received) + ' total', received);
    setValue('m-delivered', int(delivered) + ' total', delivered);
    setValue('m-backlog', int(f.backlog), f.backlog);
    const lag = typeof f.lag_ms === 'number' ? f.lag_ms : null;
    setValue('m-lag', lag === null ? '–' : duration(lag), lag === null ? '' : lag,
      lag > 60000 ? 'bad' : lag > 5000 ? 'warn' : undefined);
    setValue('m-dlq', int(f.dead_letters), f.dead_letters, f.dead_letters > 0 ? 'warn' : undefined);
    if (rin !== null) {
      chart.push({ in: rin, out: rout });
      while (chart.length > CHART_POINTS) chart.shift();
      drawChart();
    }
  }

  function drawChart() {
    const canvas = $('chart');
    const ratio = window.devicePixelRatio || 1;
    const w = canvas.clientWidth;
    const h = canvas.clientHeight;
    if (!w || !h) return;
    if (canvas.width !== Math.round(w * ratio)) canvas.width = Math.round(w * ratio);
    if (canvas.height !== Math.round(h * ratio)) canvas.height = Math.round(h * ratio);
    const ctx = canvas.getContext('2d');
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const css = getComputedStyle(document.documentElement);
    const peak = Math.max(1, ...chart.map((p) => Math.max(p.in, p.out)));
    // A round top for the scale: 1, 2 or 5 times a power of ten.
    const step = 10 ** Math.floor(Math.log10(peak));
    const max = [1, 2, 5, 10].map((m) => m * step).find((m) => m >= peak);
    const pad = { l: 52, r: 8, t: 8, b: 8 };
    const x = (i) => pad.l + ((w - pad.l - pad.r) * (i + CHART_POINTS - chart.length)) / (CHART_POINTS - 1);
    const y = (v) => pad.t + (h - pad.t - pad.b) * (1 - v / max);
    ctx.font = '11px system-ui, sans-serif';
    ctx.fillStyle = css.getPropertyValue('--muted');
    ctx.strokeStyle = css.getPropertyValue('--line');
    ctx.lineWidth = 1;
    for (const frac of [0, 0.5, 1]) {
      const yy = Math.round(y(max * frac)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(pad.l, yy);
      ctx.lineTo(w - pad.r, yy);
      ctx.stroke();
      ctx.fillText(nf.format(max * frac), 4, yy + 4);
    }
    for (const [key, color] of [['in', '--in'], ['out', '--out']]) {
      ctx.strokeStyle = css.getPropertyValue(color);
      ctx.lineWidth = 2;
      ctx.beginPath();
      chart.forEach((p, i) => (i ? ctx.lineTo(x(i), y(p[key])) : ctx.moveTo(x(i), y(p[key]))));
      ctx.stroke();
    }
  }

  // ------------------------------------------------------------------ shards

  function renderShards(list) {
    $('shards-empty').hidden = list.length > 0;
    syncRows($('shards').tBodies[0], list, (s) => s.shard.id,
      () => el('tr', {}, ...tds(7, ['', 'num', 'mono', 'num', 'num', 'num', ''])),
      (row, s) => {
        const sh = s.shard;
        const st = s.stream || {};
        const [id, things, owner, backlog, inflight, lag, state] = row.cells;
        cell(id, String(sh.id));
        cell(things, `${int(sh.members)} / ${int(sh.capacity)}`);
        cell(owner, sh.owner || 'unowned');
        owner.classList.toggle('muted', !sh.owner);
        cell(backlog, int(st.length));
        cell(inflight, int(st.pending));
        cell(lag, st.length ? duration(st.oldest_age_ms) : '–');
        const tone = !sh.owner ? 'bad' : sh.draining ? 'warn' : 'good';
        const text = !sh.owner ? 'no owner' : sh.draining ? 'draining' : 'owned';
        if (state.textContent !== text) cell(state, badge(text, tone));
      });
  }

  // ------------------------------------------------------------------ workers

  function renderWorkers(list) {
    $('workers-empty').hidden = list.length > 0;
    syncRows($('workers').tBodies[0], list, (w) => w.id,
      (w) => {
        const button = el('button', { type: 'button', 'data-worker': w.id });
        button.addEventListener('click', () => toggleDrain(button));
        return el('tr', {}, ...tds(6, ['mono', '', '', 'num', 'mono', '']), el('td', {}, button));
      },
      (row, w) => {
        const [id, host, shards, beat, version, state, action] = row.cells;
        cell(id, w.id);
        cell(host, `${w.host} · ${w.pid}`);
        const ids = (w.shards || []).map(String);
        cell(shards, `${ids.length} / ${w.capacity}` + (ids.length ? ' (' + ids.join(', ') + ')' : ''));
        cell(beat, age(w.last_heartbeat_ms));
        cell(version, w.version || '–');
        const text = w.draining ? 'draining' : 'active';
        if (state.textContent !== text) cell(state, badge(text, w.draining ? 'warn' : 'good'));
        const button = action.firstChild;
        // Right after a click the worker may not have reported its new state yet: keep the
        // button as the click left it for a few seconds.
        if (!button.disabled && Date.now() > Number(button.dataset.holdUntil || 0)) {
          button.dataset.draining = String(Boolean(w.draining));
          button.textContent = w.draining ? 'Undrain' : 'Drain';
          button.title = w.draining
            ? 'cancel the drain: the worker takes shards again'
            : 'hand every shard of this worker to the others; it takes no new ones';
        }
      });
  }

  async function toggleDrain(button) {
    const id = button.dataset.worker;
    const undo = button.dataset.draining === 'true';
    button.disabled = true;
    try {
      const r = await api(undo ? 'DELETE' : 'POST', `/v1/workers/${encodeURIComponent(id)}/drain`);
      if (undo) setResult('workers-result', `Drain of ${id} cancelled.`, true);
      else {
        const n = (r.shards || []).length;
        setResult('workers-result', `Draining ${id}: handing over ${n} shard${n === 1 ? '' : 's'}.`, true);
      }
      button.dataset.draining = String(!undo);
      button.dataset.holdUntil = String(Date.now() + 4000);
      button.textContent = undo ? 'Drain' : 'Undrain';
    } catch (e) {
      if (e.status !== 401) setResult('workers-result', `Drain of ${id} failed: ${e.message}`, false);
    } finally {
      button.disabled = false;
    }
  }

  // ------------------------------------------------------------------ Thing lookup

  async function loadThing(fresh) {
    if (thingBusy) return;
    thingBusy = true;
    const name = thingName;
    const path = '/v1/things/' + encodeURIComponent(name);
    try {
      let thing;
      try {
        thing = await api('GET', path);
      } catch (e) {
        if (e.status === 404) {
          $('thing-info').hidden = true;
          $('deliveries').hidden = true;
          $('deliveries-title').hidden = true;
          $('deliveries-note').hidden = true;
          setResult('thing-result', `No Thing named “${name}” in the fleet registry.`, false);
          return;
        }
        throw e;
      }
      if (name !== thingName) return;
      renderThing(thing);
      setResult('thing-result', '', true);
      let log = null;
      let note = null;
      try {
        log = await api('GET', path + '/deliveries?limit=50');
      } catch (e) {
        if (e.status === 404) note = 'The delivery log is not available on this scheduler.';
        else if (e.status === 401) throw e;
        else note = `Delivery log: ${e.message}`;
      }
      if (name !== thingName) return;
      renderDeliveries(log, note);
    } catch (e) {
      if (e.status !== 401 && fresh) setResult('thing-result', `Lookup failed: ${e.message}`, false);
    } finally {
      thingBusy = false;
    }
  }

  function renderThing(r) {
    const t = r.thing || {};
    const model = t.model || {};
    const props = Object.keys(model);
    const facts = [
      ['Thing', t.name],
      ['Shard', String(t.shard)],
      ['Owner', r.owner || 'no live owner'],
      ['Template', t.template || '–'],
      ['Model version', String(t.model_version)],
      ['Last activity', r.last_activity_ms ? `${age(r.last_activity_ms)} (${isoTime(r.last_activity_ms)})` : 'never'],
      ['Properties', props.length ? props.join(', ') : '–'],
    ];
    const dl = $('thing-info');
    dl.replaceChildren(...facts.flatMap(([k, v]) => [el('dt', { text: k }), el('dd', { text: v })]));
    dl.hidden = false;
  }

  const OUTCOME_TONE = { delivered: 'good', skipped: 'warn', dead_lettered: 'bad' };

  function renderDeliveries(log, note) {
    $('deliveries-title').hidden = false;
    const table = $('deliveries');
    const list = (log && log.deliveries) || [];
    if (note || !list.length) {
      $('deliveries-note').textContent = note || 'No deliveries recorded for this Thing yet.';
      $('deliveries-note').hidden = false;
    } else {
      $('deliveries-note').hidden = true;
    }
    table.hidden = !list.length;
    syncRows(table.tBodies[0], list,
      (d) => `${d.shard}/${d.entry}/${d.done_at_ms}`,
      () => el('tr', {}, ...tds(10, ['mono', '', 'mono', 'num', '', 'num', 'num', 'mono', 'mono payload', 'wrap'])),
      (row, d) => {
        const [when, kind, source, shard, outcome, latency, attempts, worker, values, reason] = row.cells;
        cell(when, clock(d.received_at_ms), isoTime(d.received_at_ms));
        cell(kind, d.kind || '–');
        const src = d.source || {};
        cell(source, short(`${src.kind || '?'}:${src.name || '?'} @ ${src.position || '?'}`, 60),
          `${src.kind}:${src.name} @ ${src.position}` + (d.trace_id ? ` · trace ${d.trace_id}` : ''));
        cell(shard, String(d.shard));
        if (outcome.textContent !== d.outcome) cell(outcome, badge(d.outcome, OUTCOME_TONE[d.outcome]));
        cell(latency, typeof d.latency_ms === 'number' ? duration(d.latency_ms) : '–');
        cell(attempts, String(d.attempts ?? '–'));
        cell(worker, d.worker || '–');
        const v = d.values === undefined ? '' : JSON.stringify(d.values);
        cell(values, short(v, 80), v);
        cell(reason, [d.reason, d.detail].filter(Boolean).join(': ') || '');
      });
  }

  // ------------------------------------------------------------------ dead letters

  async function loadDlq() {
    const r = await api('GET', `/v1/dlq?limit=${dlqLimit}`);
    lastDlqLoad = Date.now();
    lastDeadLetters = r.count;
    renderDlq(r);
  }

  function renderDlq(r) {
    const letters = r.letters || [];
    shownLetters = letters.map((l) => l.id);
    const present = new Set(shownLetters);
    for (const id of [...selected]) if (!present.has(id)) selected.delete(id);
    $('dlq-empty').hidden = letters.length > 0;
    $('dlq-shown').textContent = letters.length < r.count ? `(${int(letters.length)} of ${int(r.count)} shown)` : `(${int(r.count)})`;
    $('dlq-more').hidden = letters.length >= r.count || dlqLimit >= 1000;
    syncRows($('dlq').tBodies[0], letters, (l) => l.id,
      (l) => {
        const box = el('input', { type: 'checkbox', 'data-letter': l.id, 'aria-label': 'select letter ' + l.id });
        box.addEventListener('change', () => {
          if (box.checked) selected.add(l.id);
          else selected.delete(l.id);
          updateDlqButtons();
        });
        return el('tr', {}, el('td', {}, box), ...tds(9, ['mono', '', 'mono', 'mono', 'num', 'num', '', 'wrap', 'mono payload']));
      },
      (row, l) => {
        const letter = l.letter || {};
        const env = letter.envelope || {};
        const src = env.source || {};
        const reason = letter.reason || {};
        const [box, id, code, thing, source, shard, attempts, failed, detail, payload] = row.cells;
        box.firstChild.checked = selected.has(l.id);
        cell(id, l.id);
        if (code.textContent !== reason.code) cell(code, badge(reason.code || '?', 'bad'));
        cell(thing, env.thing || '–');
        cell(source, short(`${src.kind || '?'}:${src.name || '?'}`, 40), `${src.kind}:${src.name} @ ${src.position}`);
        cell(shard, letter.shard === undefined ? '–' : String(letter.shard));
        cell(attempts, String(letter.attempts ?? 0));
        cell(failed, age(letter.last_failure_ms), isoTime(letter.first_failure_ms));
        cell(detail, reason.detail || '');
        const p = payloadText(env.payload);
        cell(payload, short(p, 60), p);
      });
    updateDlqButtons();
  }

  function updateDlqButtons() {
    const n = selected.size;
    $('dlq-replay-selected').disabled = n === 0;
    $('dlq-purge-selected').disabled = n === 0;
    $('dlq-replay-selected').textContent = n ? `Replay selected (${n})` : 'Replay selected';
    $('dlq-purge-selected').textContent = n ? `Purge selected (${n})` : 'Purge selected';
    const all = $('dlq-select-all');
    all.checked = n > 0 && n === shownLetters.length;
    all.indeterminate = n > 0 && n < shownLetters.length;
  }

  /// A destructive button asks for a second click within 5 s.
  function confirmed(button) {
    if (button.classList.contains('confirm')) {
      clearTimeout(button.confirmTimer);
      button.classList.remove('confirm');
      button.textContent = button.dataset.label;
      return true;
    }
    button.dataset.label = button.textContent;
    button.classList.add('confirm');
    button.textContent = 'Click again to purge';
    button.confirmTimer = setTimeout(() => {
      button.classList.remove('confirm');
      button.textContent = button.dataset.label;
      updateDlqButtons();
    }, 5000);
    return false;
  }

  async function dlqAction(button, run) {
    button.disabled = true;
    try {
      setResult('dlq-result', await run(), true);
      await loadDlq();
    } catch (e) {
      if (e.status !== 401) setResult('dlq-result', `Failed: ${e.message}`, false);
    } finally {
      button.disabled = false;
      updateDlqButtons();
    }
  }

  function replayText(r) {
    const skipped = r.skipped ? `, ${r.skipped} left in the queue (their Thing has no shard)` : '';
    return `Replayed ${r.replayed} letter${r.replayed === 1 ? '' : 's'}${skipped}.`;
  }

  function wireDlq() {
    $('dlq-select-all').addEventListener('change', (e) => {
      if (e.target.checked) shownLetters.forEach((id) => selected.add(id));
      else selected.clear();
      for (const box of $('dlq').tBodies[0].querySelectorAll('input[type=checkbox]')) {
        box.checked = selected.has(box.dataset.letter);
      }
      updateDlqButtons();
    });
    $('dlq-replay-selected').addEventListener('click', (e) => dlqAction(e.target, async () => {
      const ids = [...selected];
      const r = await api('POST', '/v1/dlq/replay', { ids });
      ids.forEach((id) => selected.delete(id));
      return replayText(r);
    }));
    $('dlq-replay-all').addEventListener('click', (e) => dlqAction(e.target, async () => {
      const r = await api('POST', '/v1/dlq/replay', {});
      return replayText(r);
    }));
    $('dlq-purge-selected').addEventListener('click', (e) => {
      if (!confirmed(e.target)) return;
      dlqAction(e.target, async () => {
        const ids = [...selected];
        const r = await api('DELETE', '/v1/dlq', { ids });
        ids.forEach((id) => selected.delete(id));
        return `Purged ${r.removed} letter${r.removed === 1 ? '' : 's'}.`;
      });
    });
    $('dlq-purge-all').addEventListener('click', (e) => {
      if (!confirmed(e.target)) return;
      dlqAction(e.target, async () => {
        const r = await api('DELETE', '/v1/dlq', { all: true });
        selected.clear();
        return `Purged ${r.removed} letter${r.removed === 1 ? '' : 's'}.`;
      });
    });
    $('dlq-more').addEventListener('click', () => {
      dlqLimit = Math.min(1000, dlqLimit + DLQ_PAGE);
      loadDlq().catch(() => {});
    });
  }

  // ------------------------------------------------------------------ start

  function init() {
    $('login-form').addEventListener('submit', (e) => {
      e.preventDefault();
      token = $('token').value.trim() || null;
      if (token) sessionStorage.setItem(TOKEN_KEY, token);
      else sessionStorage.removeItem(TOKEN_KEY);
      $('login').hidden = true;
      setStatus('connecting', 'checking the token…');
      start();
    });
    $('sign-out').addEventListener('click', () => {
      stop();
      sessionStorage.removeItem(TOKEN_KEY);
      token = null;
      setStatus('refused', 'signed out');
      showLogin("Signed out. This scheduler's admin API needs its token (scheduler.admin_token).", false);
    });
    $('thing-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const name = $('thing-name').value.trim();
      if (!name) return;
      thingName = name;
      $('deliveries').tBodies[0].replaceChildren();
      setResult('thing-result', 'Looking up…', true);
      loadThing(true);
    });
    wireDlq();
    window.addEventListener('resize', drawChart);
    document.addEventListener('visibilitychange', () => {
      if (!document.hidden && !stopped) start();
    });
    start();
  }

  init();
})();
