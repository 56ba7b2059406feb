// The operators' dashboard: sign-in with a pasted token, one event stream shared by every page, and the pages
// (live figures, fleet, work, a task, plugins) as small functions that mount into #view and react to events.
// No framework and nothing fetched from elsewhere: this file, app.css and index.html are compiled into the server.
// Every value shown comes from the API with the operator's token, so the API's permissions are the page's.
'use strict';

// The API beside the page: `/dashboard` → `/api/v1/control-plane`, and under a proxy's prefix `/cp/dashboard` →
// `/cp/api/v1/control-plane`.
const API = `${location.pathname.replace(/dashboard\/?$/, '')}api/v1/control-plane`;
const TOKEN_KEY = 'aragora-cp-token';
// Lists read this many records per request; the virtual lists below render only the rows in sight. Pending
// tasks come as whole records (payloads included), so their pages are smaller.
const PAGE = 1000;
const PENDING_PAGE = 200;

// ---------------------------------------------------------------------------------------------------------------
// Small helpers: elements built with textContent (never innerHTML: agent ids and payloads are other people's text),
// times, throttling.

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'text') el.textContent = value;
    else if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// Replaces an element's children, skipping absent ones (null, undefined, false) as `h` does.
function fill(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== undefined && c !== null && c !== false));
  return el;
}

function badge(value, extra) {
  const text = value === undefined || value === null || value === '' ? '—' : String(value);
  return h('span', { class: `badge ${text} ${extra || ''}`.trim(), text });
}

function taskLink(id) {
  return h('a', { href: `#/task/${encodeURIComponent(id)}`, class: 'mono', text: id });
}

function ageOf(time, now = Date.now()) {
  if (!time) return '—';
  const seconds = Math.max(0, (now - Date.parse(time)) / 1000);
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
  if (seconds < 86400) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86400).toFixed(1)} d`;
}

function clock(time) {
  return time ? new Date(time).toLocaleTimeString([], { hour12: false }) + '.' + String(new Date(time).getMilliseconds()).padStart(3, '0') : '—';
}

function number(value, digits = 0) {
  return value === undefined || value === null ? '—' : Number(value).toLocaleString(undefined, { maximumFractionDigits: digits });
}

// Calls `fn` (which may answer a promise) at most once per `ms`, never while its previous call is still running,
// and always once after the last request: a burst of events costs one reload, and an older answer cannot land
// after a newer one.
function throttle(fn, ms) {
  let busy = false;
  let again = false;
  let timer = null;
  let stopped = false;
  const run = async () => {
    busy = true;
    again = false;
    try {
      await fn();
    } catch {
      // The page's own load reports its errors.
    }
    timer = setTimeout(() => {
      timer = null;
      busy = false;
      if (again && !stopped) run();
    }, typeof ms === 'function' ? ms() : ms);
  };
  const request = () => {
    if (stopped) return;
    if (busy) again = true;
    else run();
  };
  request.cancel = () => {
    stopped = true;
    clearTimeout(timer);
  };
  return request;
}

// A page's reads, all through one throttle (so answers land in order): the first now, then on every event
// `concerns` accepts (and on `reset`). Failed reads are `load`'s to report. Answers `{refresh, onEvent, stop}`.
function reloading(load, ms, concerns, onStop = () => {}) {
  const later = throttle(load, ms);
  later();
  return {
    refresh: later,
    onEvent(event) {
      if (event.type === 'reset' || concerns(event)) later();
    },
    stop() {
      later.cancel();
      onStop();
    },
  };
}

function toast(message, kind) {
  const el = h('div', { class: `toast ${kind || ''}`, text: message });
  document.getElementById('toasts').append(el);
  setTimeout(() => el.remove(), kind === 'error' ? 9000 : 4000);
}

// ---------------------------------------------------------------------------------------------------------------
// The API: the token from session storage, problem+json errors as exceptions with the server's own words.

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const session = {
  get token() {
    return sessionStorage.getItem(TOKEN_KEY);
  },
  set token(value) {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  },
};

async function api(path, { method = 'GET', body, form } = {}) {
  const headers = { Authorization: `Bearer ${session.token}` };
  let payload;
  if (form) payload = form;
  else if (body !== undefined) {
    headers['content-type'] = 'application/json';
    payload = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(API + path, { method, headers, body: payload });
  } catch (e) {
    throw new ApiError(0, 'unreachable', `the server did not answer (${e.message})`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const detail = (data && (data.detail || data.error || data.title)) || response.statusText;
    if (response.status === 401 && started) signOut(`The server refused the token: ${detail}`);
    throw new ApiError(response.status, data && data.code, detail);
  }
  return data;
}

// Every page of a cursor-paged list: the `field` arrays concatenated, or (for `GET /health`'s map by agent id)
// merged into one object.
async function allPages(path, field, limit = PAGE) {
  let all = null;
  let cursor = null;
  do {
    const sep = path.includes('?') ? '&' : '?';
    const page = await api(`${path}${sep}limit=${limit}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
    const items = page[field];
    all = Array.isArray(items) ? (all || []).concat(items) : Object.assign(all || Object.create(null), items);
    cursor = page.next_cursor;
  } while (cursor);
  return all;
}

// A button that calls the API and says what happened: the server's refusal (a read-only token, a task already
// finished) is shown as it was given.
function action(label, what, call, { danger, confirmText } = {}) {
  return h('button', {
    type: 'button',
    class: `small ${danger ? 'danger' : ''}`,
    text: label,
    onclick: async (event) => {
      event.stopPropagation();
      if (confirmText && !window.confirm(confirmText)) return;
      try {
        await call();
        toast(`${what}: done`);
        current && current.refresh && current.refresh();
      } catch (e) {
        toast(`${what} refused: ${e.message}${e.code ? ` (${e.code})` : ''}`, 'error');
      }
    },
  });
}

// ---------------------------------------------------------------------------------------------------------------
// The event stream: one `GET /events` for the whole tab, read with fetch so the token travels in a header (an
// EventSource would need it in the URL). It resumes with Last-Event-ID after a drop and keeps the latest events
// for the pages that open later (a task's timeline).

const stream = {
  lastId: null,
  recent: [],
  abort: null,
  listeners: new Set(),

  start() {
    this.stop();
    const controller = new AbortController();
    this.abort = controller;
    this.run(controller.signal);
  },

  stop() {
    if (this.abort) this.abort.abort();
    this.abort = null;
  },

  // What one session saw is not the next one's business.
  forget() {
    this.stop();
    this.lastId = null;
    this.recent = [];
  },

  state(text, live) {
    const el = document.getElementById('stream-state');
    el.hidden = false;
    el.textContent = text;
    el.classList.toggle('live', live);
  },

  async run(signal) {
    let backoff = 500;
    while (!signal.aborted) {
      try {
        const headers = { Authorization: `Bearer ${session.token}`, Accept: 'text/event-stream' };
        if (this.lastId) headers['Last-Event-ID'] = this.lastId;
        const response = await fetch(`${API}/events`, { headers, signal });
        if (response.status === 401 || response.status === 403) {
          signOut(`The server refused the token for the event stream (${response.status}).`);
          return;
        }
        if (!response.ok) throw new Error(`events: ${response.status}`);
        this.state('live', true);
        backoff = 500;
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let buffer = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          // The SSE grammar allows CRLF and CR line ends as well as LF.
          buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, '\n');
          let end;
          while ((end = buffer.indexOf('\n\n')) >= 0) {
            this.frame(buffer.slice(0, end));
            buffer = buffer.slice(end + 2);
          }
        }
      } catch (e) {
        if (signal.aborted) return;
      }
      this.state('reconnecting…', false);
      await new Promise((resolve) => setTimeout(resolve, backoff));
      backoff = Math.min(backoff * 2, 10000);
    }
  },

  frame(text) {
    let id = null;
    let type = 'message';
    const data = [];
    for (const line of text.split('\n')) {
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
      if (field === 'id') id = value;
      else if (field === 'event') type = value;
      else if (field === 'data') data.push(value);
    }
    if (id) this.lastId = id;
    if (!data.length) return;
    let event;
    try {
      event = type === 'reset' ? { type: 'reset', ...JSON.parse(data.join('\n')) } : JSON.parse(data.join('\n'));
    } catch {
      return;
    }
    if (event.type !== 'reset') {
      this.recent.push(event);
      if (this.recent.length > 5000) this.recent.splice(0, this.recent.length - 5000);
    }
    for (const listener of this.listeners) listener(event);
  },
};

// ---------------------------------------------------------------------------------------------------------------
// A virtual list: a scrolling box as tall as every row would be, with only the rows in sight in the document, so a
// thousand agents or a hundred thousand tasks cost the tab what thirty rows cost.

class VirtualList {
  // `columns`: `{title, width, render(row), live?}`; a `live` column (an age) is recomputed on every render, the
  // others only when the row changes. `signature(row)` says when a row changed (default: its JSON).
  constructor(columns, { height = '60vh', rowHeight = 30, empty = 'Nothing here.', signature } = {}) {
    this.columns = columns;
    this.rowHeight = rowHeight;
    this.rows = [];
    this.signature = signature || ((row) => JSON.stringify(row));
    this.shown = new Map();
    this.template = columns.map((c) => c.width || '1fr').join(' ');
    this.maxHeight = height;
    this.el = h('div', { class: 'vlist', role: 'table' });
    this.el.style.height = height;
    this.head = h('div', { class: 'vhead', role: 'row' }, columns.map((c) => h('span', { role: 'columnheader', text: c.title })));
    this.head.style.gridTemplateColumns = this.template;
    this.spacer = h('div');
    this.body = h('div', { role: 'rowgroup' });
    this.emptyNote = h('div', { class: 'empty', text: empty });
    this.el.append(this.head, this.spacer, this.body, this.emptyNote);
    this.el.addEventListener('scroll', () => this.render(), { passive: true });
  }

  setRows(rows) {
    this.rows = rows;
    this.spacer.style.height = `${rows.length * this.rowHeight}px`;
    // As tall as its rows (two at least, for the empty note), up to the page's share.
    this.el.style.height = `min(${this.maxHeight}, ${(Math.max(2, rows.length) + 1) * this.rowHeight + 2}px)`;
    this.render();
  }

  row(row) {
    const el = h('div', { class: 'vrow', role: 'row', 'data-key': row.key }, this.columns.map((c) => {
      const cell = c.render(row);
      return cell instanceof Node && cell.tagName === 'SPAN' && cell.getAttribute('role') === 'cell'
        ? cell
        : h('span', { role: 'cell' }, cell);
    }));
    el.style.gridTemplateColumns = this.template;
    return el;
  }

  // Rows that did not change keep their elements, so a button being clicked or focused is not swapped under the
  // pointer by a reload.
  render() {
    const height = this.el.clientHeight || 600;
    const first = Math.max(0, Math.floor(this.el.scrollTop / this.rowHeight) - 5);
    const last = Math.min(this.rows.length, first + Math.ceil(height / this.rowHeight) + 10);
    const keep = new Map();
    for (let i = first; i < last; i++) {
      const row = this.rows[i];
      const signature = `${row.key}\u0000${this.signature(row)}`;
      const el = this.shown.get(signature) || this.row(row);
      el.style.top = `${this.rowHeight * (i + 1)}px`;
      this.columns.forEach((c, index) => {
        if (c.live) el.children[index].textContent = c.render(row);
      });
      keep.set(signature, el);
    }
    for (const [signature, el] of this.shown) if (!keep.has(signature)) el.remove();
    for (const el of keep.values()) if (!el.isConnected) this.body.append(el);
    this.shown = keep;
    this.emptyNote.hidden = this.rows.length > 0;
  }
}

function sparkline(values, label) {
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('class', 'spark');
  svg.setAttribute('viewBox', '0 0 300 48');
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', label);
  const max = Math.max(1, ...values);
  const step = values.length > 1 ? 300 / (values.length - 1) : 0;
  const line = document.createElementNS('http://www.w3.org/2000/svg', 'polyline');
  line.setAttribute('points', values.map((v, i) => `${(i * step).toFixed(1)},${(46 - (v / max) * 44).toFixed(1)}`).join(' '));
  svg.append(line);
  return svg;
}

function figure(label, value, attrs) {
  return h('div', { class: 'figure', ...attrs }, h('div', { class: 'value', text: value }), h('div', { class: 'label', text: label }));
}

// ---------------------------------------------------------------------------------------------------------------
// Pages. Each is a function of its root element (and the route's argument) answering `{refresh, onEvent, stop}`.

// Live: the fleet's figures with throughput and claim-wait sparklines (sampled every 2 s), the latest events, and
// policy violations.
function LivePage(root) {
  const samples = { throughput: [], wait: [], queued: [] };
  let previous = null;
  const figures = h('div', { class: 'figures', id: 'figures' });
  const sparks = h('div', { class: 'grid' });
  const events = h('tbody');
  const violations = h('tbody');
  root.append(
    h('h1', { text: 'Live' }),
    figures,
    h('div', { class: 'card' }, h('h2', { text: 'Last three minutes' }), sparks),
    h('div', { class: 'grid' },
      h('div', { class: 'card' }, h('h2', { text: 'Events' }),
        h('table', { class: 'plain', id: 'event-tail' }, h('thead', {}, h('tr', {}, ['Time', 'Type', 'Task', 'Agent'].map((t) => h('th', { text: t })))), events)),
      h('div', { class: 'card' }, h('h2', { text: 'Policy violations' }),
        h('table', { class: 'plain' }, h('thead', {}, h('tr', {}, ['Time', 'Policy', 'Decision', 'Reason', 'Task / agent'].map((t) => h('th', { text: t })))), violations))),
  );

  async function sample() {
    const [summary, queue] = await Promise.all([api('/metrics'), api('/queue/metrics').catch(() => null)]);
    const now = Date.now();
    const finished = summary.completed_jobs + summary.failed_jobs;
    if (previous && now > previous.at) {
      // Retention prunes finished tasks from the counters; a drop is pruning, not negative throughput.
      samples.throughput.push(Math.max(0, (finished - previous.finished) / ((now - previous.at) / 1000)));
    }
    previous = { finished, at: now };
    samples.wait.push(queue && queue.claim_wait ? queue.claim_wait.p50_ms || 0 : 0);
    samples.queued.push(summary.queued_jobs);
    for (const list of Object.values(samples)) if (list.length > 90) list.shift();
    const rate = samples.throughput.length ? samples.throughput[samples.throughput.length - 1] : 0;
    fill(figures,
      figure('agents', number(summary.total_agents), { 'data-figure': 'agents' }),
      figure('available', number(summary.agents_available)),
      figure('busy', number(summary.agents_busy)),
      figure('waiting claims', number(summary.waiting_claims)),
      figure('queued', number(summary.queued_jobs), { 'data-figure': 'queued' }),
      figure('active', number(summary.active_jobs)),
      figure('completed', number(summary.completed_jobs), { 'data-figure': 'completed' }),
      figure('failed', number(summary.failed_jobs)),
      figure('tasks/s', number(rate, 1)),
    );
    fill(sparks,
      h('div', {}, h('div', { class: 'muted', text: `finished tasks/s (now ${number(rate, 1)})` }), sparkline(samples.throughput, 'finished tasks per second')),
      h('div', {}, h('div', { class: 'muted', text: `claim wait p50, ms (now ${number(samples.wait.at(-1), 1)})` }), sparkline(samples.wait, 'claim wait p50')),
      h('div', {}, h('div', { class: 'muted', text: `queued (now ${number(summary.queued_jobs)})` }), sparkline(samples.queued, 'queued tasks')),
    );
  }

  function showEvents() {
    const rows = stream.recent.slice(-40).reverse().map((e) =>
      h('tr', {}, h('td', { class: 'mono', text: clock(e.time) }), h('td', {}, badge(e.type, e.type.replace(/^task_/, ''))),
        h('td', {}, e.task_id ? taskLink(e.task_id) : '—'), h('td', { class: 'mono', text: e.agent_id || '—' })));
    fill(events, ...rows);
  }

  async function loadViolations() {
    const answer = await api('/policies/violations?limit=20');
    const list = answer.violations || [];
    fill(violations, ...(list.length ? list.map((v) =>
      h('tr', {}, h('td', { class: 'mono', text: clock(v.time) }), h('td', { text: v.policy }), h('td', {}, badge(v.decision)),
        h('td', { text: v.reason }), h('td', {}, v.task_id ? taskLink(v.task_id) : h('span', { class: 'mono', text: v.agent_id || '—' }))))
      : [h('tr', {}, h('td', { colspan: 5, class: 'muted', text: 'No violations.' }))]));
  }

  const sampleLater = throttle(() => sample().catch((e) => toast(`Live: ${e.message}`, 'error')), 1000);
  const eventsLater = throttle(showEvents, 300);
  const violationsLater = throttle(() => loadViolations().catch(() => {}), 1000);
  const refresh = () => {
    sampleLater();
    violationsLater();
  };
  const timer = setInterval(sampleLater, 2000);
  refresh();
  showEvents();
  return {
    refresh,
    onEvent(event) {
      eventsLater();
      if (event.type === 'policy_violation') violationsLater();
    },
    stop() {
      clearInterval(timer);
      sampleLater.cancel();
      eventsLater.cancel();
      violationsLater.cancel();
    },
  };
}

// Fleet: every agent with its status, health, breaker and load; filters; pause, resume and remove.
function FleetPage(root) {
  let agents = [];
  let health = Object.create(null);
  const filters = { capability: '', provider: '', status: '' };
  const provider = h('select', { 'aria-label': 'provider', onchange: () => { filters.provider = provider.value; show(); } });
  const status = h('select', { 'aria-label': 'status', onchange: () => { filters.status = status.value; show(); } },
    ['', 'ready', 'busy', 'starting', 'draining', 'paused', 'offline', 'failed'].map((s) => h('option', { value: s, text: s || 'any status' })));
  const capability = h('input', { type: 'search', placeholder: 'capability', 'aria-label': 'capability',
    oninput: () => { filters.capability = capability.value.trim(); page.refresh(); } });
  const count = h('span', { class: 'count' });
  const list = new VirtualList([
    { title: 'Agent', width: 'minmax(140px, 1.4fr)', render: (a) => h('span', { role: 'cell', class: 'mono', title: a.agent_id, text: a.agent_id }) },
    { title: 'Status', width: '150px', render: (a) => h('span', { role: 'cell' }, badge(a.status), a.paused ? [' ', badge('paused')] : null) },
    { title: 'Health', width: '95px', render: (a) => badge((health[a.agent_id] || {}).status || 'unknown') },
    { title: 'Breaker', width: '90px', render: (a) => badge((health[a.agent_id] || {}).breaker || 'closed') },
    { title: 'Load', width: '60px', render: (a) => `${a.in_flight}/${a.max_concurrent_tasks}` },
    { title: 'Done / failed', width: '100px', render: (a) => `${number(a.tasks_completed)} / ${number(a.tasks_failed)}` },
    { title: 'Latency', width: '80px', render: (a) => `${number(a.avg_latency_ms, 1)} ms` },
    { title: 'Model / provider', width: 'minmax(120px, 1fr)', render: (a) => `${a.model || '—'} / ${a.provider || '—'}` },
    { title: 'Capabilities', width: 'minmax(120px, 1fr)', render: (a) => (a.capabilities || []).join(', ') || '—' },
    { title: 'Heartbeat', width: '80px', live: true, render: (a) => ageOf(a.last_heartbeat) },
    { title: '', width: '150px', render: (a) => h('span', { role: 'cell' },
      a.paused
        ? action('Resume', `resume ${a.agent_id}`, () => api(`/agents/${encodeURIComponent(a.agent_id)}/resume`, { method: 'POST' }))
        : action('Pause', `pause ${a.agent_id}`, () => api(`/agents/${encodeURIComponent(a.agent_id)}/pause`, { method: 'POST' })),
      ' ',
      action('Remove', `remove ${a.agent_id}`, () => api(`/agents/${encodeURIComponent(a.agent_id)}`, { method: 'DELETE' }),
        { danger: true, confirmText: `Unregister ${a.agent_id}? The tasks it holds go back to pending.` })) },
  ], {
    empty: 'No agents match.',
    // Everything a row shows but the heartbeat's age (a live cell): a heartbeat alone does not rebuild the row.
    signature: (a) => {
      const probe = health[a.agent_id] || {};
      return [a.status, a.paused, a.in_flight, a.max_concurrent_tasks, a.tasks_completed, a.tasks_failed,
        a.avg_latency_ms, a.model, a.provider, (a.capabilities || []).join(','), probe.status, probe.breaker].join('|');
    },
  });
  list.el.id = 'agents';
  root.append(
    h('h1', { text: 'Fleet' }),
    h('p', { class: 'muted', text: 'Pause drains an agent: it finishes what it holds and takes nothing new until resumed.' }),
    h('div', { class: 'toolbar' }, capability, provider, status, count),
    list.el,
  );

  function show() {
    const providers = [...new Set(agents.map((a) => a.provider).filter(Boolean))].sort();
    // Rebuilt only when the set changes, so an open drop-down is not closed by a reload.
    if (providers.join('\u0000') !== [...provider.options].slice(1).map((o) => o.value).join('\u0000')) {
      fill(provider, h('option', { value: '', text: 'any provider' }), ...providers.map((p) => h('option', { value: p, text: p })));
      provider.value = providers.includes(filters.provider) ? filters.provider : '';
      filters.provider = provider.value;
    }
    const shown = agents.filter((a) =>
      (!filters.provider || a.provider === filters.provider) &&
      (!filters.status || (filters.status === 'paused' ? a.paused : a.status === filters.status)));
    count.textContent = shown.length === agents.length ? `${number(agents.length)} agents` : `${number(shown.length)} of ${number(agents.length)} agents`;
    list.setRows(shown.map((a) => ({ ...a, key: a.agent_id })));
  }

  async function load() {
    const query = filters.capability ? `?capability=${encodeURIComponent(filters.capability)}` : '';
    const [found, healthPages] = await Promise.all([allPages(`/agents${query}`, 'agents'), allPages('/health', 'agents', 10000)]);
    agents = found;
    health = healthPages || Object.create(null);
    show();
  }

  const ages = setInterval(() => list.render(), 2000);
  // A large fleet is read less often: a burst of events costs one read of every agent.
  const page = reloading(
    () => load().catch((e) => toast(`Fleet: ${e.message}`, 'error')),
    () => (agents.length > 300 ? 3000 : 1000),
    (event) => /^(agent_|breaker_|health_|task_(claimed|completed|failed|released|timeout|cancelled|retried))/.test(event.type),
    () => clearInterval(ages),
  );
  return page;
}

// Work: the queue's figures, what runs and waits, the pending tasks page by page, and what finished lately.
function WorkPage(root) {
  let pending = [];
  let pendingCursor = null;
  let pendingTotal = 0;
  // Bumped by every read of the pending list: an answer to an older read is dropped.
  let pendingRead = 0;
  const figures = h('div', { class: 'figures' });
  const byPriority = h('tbody');
  const bySignature = h('tbody');
  const running = new VirtualList([
    { title: 'Task', width: 'minmax(200px, 1.6fr)', render: (j) => taskLink(j.id) },
    { title: 'Name', width: 'minmax(100px, 1fr)', render: (j) => j.name },
    { title: 'Status', width: '90px', render: (j) => badge(j.status) },
    { title: 'Priority', width: '80px', render: (j) => j.priority },
    { title: 'Agent', width: 'minmax(100px, 1fr)', render: (j) => (j.agents_assigned || []).join(', ') || '—' },
    { title: 'Age', width: '70px', live: true, render: (j) => ageOf(j.started_at || j.created_at) },
  ], { height: '36vh', empty: 'Nothing claimed or running.', signature: (j) => `${j.status}|${(j.agents_assigned || []).join(',')}` });
  running.el.id = 'running';
  const waiting = new VirtualList([
    { title: 'Task', width: 'minmax(200px, 1.6fr)', render: (t) => taskLink(t.task_id) },
    { title: 'Type', width: 'minmax(100px, 1fr)', render: (t) => t.task_type },
    { title: 'Priority', width: '80px', render: (t) => t.priority },
    { title: 'Capabilities', width: 'minmax(120px, 1fr)', render: (t) => (t.required_capabilities || []).join(', ') || 'any' },
    { title: 'Waiting', width: '70px', live: true, render: (t) => ageOf(t.created_at) },
  ], { height: '36vh', empty: 'No task is pending.', signature: (t) => t.priority });
  waiting.el.id = 'pending';
  const more = h('button', { type: 'button', text: 'Load more', onclick: async () => {
    more.disabled = true;
    try {
      await loadPending(true);
    } catch (e) {
      toast(e.message, 'error');
    } finally {
      more.disabled = false;
    }
  } });
  const pendingCount = h('span', { class: 'count' });
  const history = new VirtualList([
    { title: 'Task', width: 'minmax(200px, 1.6fr)', render: (t) => taskLink(t.id) },
    { title: 'Type', width: 'minmax(100px, 1fr)', render: (t) => t.type },
    { title: 'Status', width: '90px', render: (t) => badge(t.status) },
    { title: 'Agent', width: 'minmax(100px, 1fr)', render: (t) => t.assigned_agent || '—' },
    { title: 'Duration', width: '90px', render: (t) => (t.duration_ms === null || t.duration_ms === undefined ? '—' : `${number(t.duration_ms)} ms`) },
    { title: 'Ended', width: '80px', live: true, render: (t) => ageOf(t.completed_at) },
  ], { height: '36vh', empty: 'Nothing finished yet.', signature: (t) => t.status });
  history.el.id = 'history';
  root.append(
    h('h1', { text: 'Work' }),
    figures,
    h('div', { class: 'grid' },
      h('div', { class: 'card' }, h('h2', { text: 'Pending by priority' }), h('table', { class: 'plain' }, byPriority)),
      h('div', { class: 'card' }, h('h2', { text: 'Claimable by capability signature' }),
        h('table', { class: 'plain' }, h('thead', {}, h('tr', {}, h('th', { text: 'Capabilities' }), h('th', { text: 'Ready' }))), bySignature))),
    h('div', { class: 'card' }, h('h2', { text: 'Claimed and running' }), running.el),
    h('div', { class: 'card' }, h('div', { class: 'toolbar' }, h('h2', { text: 'Pending, newest first' }), pendingCount, more), waiting.el),
    h('div', { class: 'card' }, h('h2', { text: 'Recently finished' }), history.el),
  );

  async function loadFigures() {
    const m = await api('/queue/metrics');
    pendingTotal = m.pending;
    showPendingCount();
    fill(figures,
      figure('pending', number(m.pending), { 'data-figure': 'pending' }),
      figure('in backoff', number(m.delayed)),
      figure('oldest pending', m.oldest_pending_age_ms ? `${number(m.oldest_pending_age_ms / 1000, 1)} s` : '—'),
      figure('claim wait p50', m.claim_wait ? `${number(m.claim_wait.p50_ms, 1)} ms` : '—'),
      figure('claim wait p99', m.claim_wait ? `${number(m.claim_wait.p99_ms, 1)} ms` : '—'),
      figure('waiting claims', number(m.waiting_claims)),
    );
    fill(byPriority, ...Object.entries(m.by_priority || {}).map(([level, n]) => h('tr', {}, h('td', { text: level }), h('td', { text: number(n) }))));
    const signatures = (m.by_signature || []).slice(0, 20);
    fill(bySignature, ...(signatures.length
      ? signatures.map((s) => h('tr', {}, h('td', { text: (s.capabilities || []).join(', ') || 'any agent' }), h('td', { text: number(s.ready) })))
      : [h('tr', {}, h('td', { colspan: 2, class: 'muted', text: 'Nothing claimable.' }))]));
  }

  function showPendingCount() {
    pendingCount.textContent = `${number(pending.length)} of ${number(Math.max(pendingTotal, pending.length))} shown`;
  }

  async function loadPending(next) {
    const read = ++pendingRead;
    const cursor = next && pendingCursor ? `&cursor=${encodeURIComponent(pendingCursor)}` : '';
    const page = await api(`/tasks?status=pending&limit=${PENDING_PAGE}${cursor}`);
    if (read !== pendingRead) return;
    pending = next ? pending.concat(page.tasks) : page.tasks;
    pendingCursor = page.next_cursor || null;
    more.hidden = !pendingCursor;
    showPendingCount();
    waiting.setRows(pending.map((t) => ({ ...t, key: t.task_id })));
  }

  async function load() {
    const [queue, done] = await Promise.all([api('/queue?limit=500'), api('/tasks/history?limit=200')]);
    running.setRows(queue.jobs.filter((j) => j.status !== 'pending').map((j) => ({ ...j, key: j.id })));
    history.setRows(done.history.map((t) => ({ ...t, key: t.id })));
    // Past the first page the operator is reading: keep the rows still until they ask again.
    await Promise.all([loadFigures(), pending.length <= PENDING_PAGE ? loadPending(false) : null]);
  }

  const ages = setInterval(() => { running.render(); waiting.render(); history.render(); }, 2000);
  return reloading(
    () => load().catch((e) => toast(`Work: ${e.message}`, 'error')),
    1000,
    (event) => event.type.startsWith('task_'),
    () => clearInterval(ages),
  );
}

// One task: its record, a timeline from the events this tab saw (and the record's own times for what happened
// before), the plugin decisions about it, payload, result or error, attempts; cancel and retry.
function TaskPage(root, id) {
  let task = null;
  let decisions = [];
  const decided = h('table', { class: 'plain', id: 'decisions' });
  const seen = () => stream.recent.filter((e) => e.task_id === id);
  const head = h('div', { class: 'toolbar' });
  const fields = h('dl', { class: 'fields' });
  const timeline = h('ul', { class: 'timeline', id: 'timeline' });
  const payload = h('pre', { class: 'json', id: 'payload' });
  const outcome = h('div');
  root.append(
    h('p', {}, h('a', { href: '#/work', text: '← Work' })),
    head,
    h('div', { class: 'grid' },
      h('div', { class: 'card' }, h('h2', { text: 'Task' }), fields),
      h('div', { class: 'card' }, h('h2', { text: 'Timeline' }), timeline)),
    h('div', { class: 'card' }, h('h2', { text: 'Decisions' }), decided),
    h('div', { class: 'grid' },
      h('div', { class: 'card' }, h('h2', { text: 'Payload' }), payload),
      h('div', { class: 'card' }, h('h2', { text: 'Outcome' }), outcome)),
  );

  // Why the task went where it went: each plugin decision, what the plugin answered and who answered.
  function showDecisions() {
    if (!decisions.length) {
      fill(decided, h('tbody', {}, h('tr', {}, h('td', { class: 'muted', text: 'No decisions recorded (a single waiting agent needs none; DECISION_SAMPLE may leave this task out).' }))));
      return;
    }
    const answer = (a) => a.agent_id ? `${a.agent_id} (#${a.index})` : a.verdict ? `${a.verdict}${a.reason ? `: ${a.reason}` : ''}` : a.health || a.error || '—';
    fill(decided,
      h('thead', {}, h('tr', {}, ['Time', 'Stage', 'Plugin', 'Version', 'Role', 'Candidates', 'Answer', 'Answered by', 'Fuel', 'Time (µs)'].map((t) => h('th', { text: t })))),
      h('tbody', {}, ...decisions.map((d) => h('tr', { 'data-role': d.role },
        h('td', { class: 'mono', text: new Date(d.at_ms).toISOString() }), h('td', { text: d.stage }), h('td', { class: 'mono', text: d.plugin }),
        h('td', { class: 'mono', title: d.version, text: d.version.slice(0, 12) }), h('td', {}, badge(d.role)),
        h('td', { text: d.input ? d.input.candidates.map((c) => `${c.agent_id} (${c.in_flight}/${c.max_concurrent})`).join(', ') : '—' }),
        h('td', { class: d.answer.error ? 'error' : '', text: answer(d.answer) }), h('td', { text: d.answered_by }),
        h('td', { text: number(d.fuel) }), h('td', { text: number(d.duration_us) })))));
  }

  // What the record says happened, for the steps whose events this tab did not see.
  function fromRecord(t, events) {
    const kinds = new Set(events.map((e) => e.type));
    const steps = [];
    if (t.created_at && !kinds.has('task_submitted')) steps.push({ time: t.created_at, type: 'task_submitted', note: 'from the record' });
    if (t.claimed_at && !kinds.has('task_claimed')) steps.push({ time: t.claimed_at, type: 'task_claimed', agent_id: t.assigned_agent, note: `attempt ${t.attempt}, from the record` });
    if (t.started_at && !kinds.has('task_started')) steps.push({ time: t.started_at, type: 'task_started', note: 'from the record' });
    if (t.completed_at && !kinds.has(`task_${t.status}`)) steps.push({ time: t.completed_at, type: `task_${t.status}`, note: 'from the record' });
    return steps;
  }

  function show() {
    if (!task) return;
    const t = task;
    const terminal = ['completed', 'failed', 'cancelled', 'timeout'].includes(t.status);
    fill(head,
      h('h1', { class: 'mono', text: t.task_id }),
      h('span', { id: 'task-status' }, badge(t.status)),
      h('span', { class: 'spacer' }),
      terminal ? null : action('Cancel', `cancel ${t.task_id}`, () => api(`/tasks/${id}/cancel`, { method: 'POST', body: {} }), { danger: true, confirmText: 'Cancel this task?' }),
      ['failed', 'timeout', 'cancelled'].includes(t.status) ? action('Retry', `retry ${t.task_id}`, () => api(`/tasks/${id}/retry`, { method: 'POST', body: {} })) : null,
    );
    const rows = [
      ['type', t.task_type], ['priority', t.priority], ['agent', t.assigned_agent || '—'],
      ['attempt', t.attempt], ['retries', `${t.retries} of ${t.max_retries} (manual ${t.manual_retries})`],
      ['capabilities', (t.required_capabilities || []).join(', ') || 'any'], ['strategy', t.strategy || 'server default'],
      ['submitted by', t.submitted_by], ['created', t.created_at], ['claimed', t.claimed_at || '—'],
      ['started', t.started_at || '—'], ['finished', t.completed_at || '—'], ['timeout', `${t.timeout_seconds} s per attempt`],
    ];
    if (t.progress) rows.push(['progress', JSON.stringify(t.progress)]);
    fill(fields, ...rows.flatMap(([k, v]) => [h('dt', { text: k }), h('dd', { text: String(v) })]));
    const events = seen();
    const steps = fromRecord(t, events).concat(events).sort((a, b) => Date.parse(a.time) - Date.parse(b.time));
    fill(timeline, ...steps.map((e) => h('li', { 'data-type': e.type },
      h('span', { class: 'mono', text: e.time ? new Date(e.time).toISOString() : '—' }), h('span', {}, badge(e.type, e.type.replace(/^task_/, ''))),
      h('span', { class: 'muted', text: [e.agent_id, e.note, e.data && Object.keys(e.data).length ? JSON.stringify(e.data) : null].filter(Boolean).join(' · ') }))));
    payload.textContent = JSON.stringify(t.payload, null, 2);
    fill(outcome,
      t.result !== null && t.result !== undefined ? h('pre', { class: 'json', id: 'result', text: JSON.stringify(t.result, null, 2) }) : null,
      t.error ? h('p', { class: 'error', text: t.error }) : null,
      t.last_error ? h('p', { class: 'muted', text: `last error: ${JSON.stringify(t.last_error)}` }) : null,
      !terminal ? h('p', { class: 'muted', text: 'Not finished.' }) : null,
    );
  }

  async function load() {
    const encoded = encodeURIComponent(id);
    [task, { decisions }] = await Promise.all([api(`/tasks/${encoded}`), api(`/tasks/${encoded}/decisions`)]);
    show();
    showDecisions();
  }

  const reportFailure = (e) => {
    fill(head, h('h1', { class: 'mono', text: id }));
    fill(outcome, h('p', { class: 'error', text: e.message }));
  };
  return reloading(() => load().catch(reportFailure), 200, (event) => event.task_id === id);
}

// Plugins: every strategy, policy and probe with its version, source, status and counters; upload, enable,
// disable, delete.
function PluginsPage(root) {
  const rows = h('tbody');
  const name = h('input', { name: 'name', placeholder: 'name', required: true, pattern: '[A-Za-z0-9_][A-Za-z0-9_\\-]{0,63}', 'aria-label': 'plugin name' });
  const component = h('input', { type: 'file', name: 'component', accept: '.wasm,application/wasm', required: true, 'aria-label': 'component' });
  const manifest = h('input', { type: 'file', name: 'manifest', accept: '.toml', 'aria-label': 'manifest' });
  const override = h('input', { type: 'checkbox', name: 'override_builtin', id: 'override-builtin' });
  const form = h('form', { class: 'toolbar', id: 'upload', onsubmit: upload },
    name, h('label', {}, 'component ', component), h('label', {}, 'manifest (optional) ', manifest),
    h('label', { for: 'override-builtin' }, override, ' replace a built-in'),
    h('button', { type: 'submit', class: 'primary', text: 'Upload' }));
  component.addEventListener('change', () => {
    const file = component.files[0];
    if (file && !name.value) name.value = file.name.replace(/(\.shadow)?\.wasm$/, '');
  });
  root.append(
    h('h1', { text: 'Plugins' }),
    h('div', { class: 'card' }, h('h2', { text: 'Upload a component' }), form,
      h('p', { class: 'muted', text: 'Checked before it takes traffic: a rejected component leaves the running version in place.' })),
    h('div', { class: 'card' }, h('table', { class: 'plain', id: 'plugins' },
      h('thead', {}, h('tr', {}, ['Name', 'Kind', 'Source', 'Version', 'Status', 'Calls', 'Failures', 'Fallbacks', 'Mean latency', 'Candidate', 'Last rejection', ''].map((t) => h('th', { text: t })))),
      rows)),
  );

  async function upload(event) {
    event.preventDefault();
    const data = new FormData();
    data.append('component', component.files[0]);
    if (manifest.files[0]) data.append('manifest', await manifest.files[0].text());
    const query = override.checked ? '?override_builtin=true' : '';
    try {
      await api(`/plugins/${encodeURIComponent(name.value)}${query}`, { method: 'PUT', form: data });
      toast(`uploaded ${name.value}`);
      form.reset();
      page.refresh();
    } catch (e) {
      toast(`upload refused: ${e.message}${e.code ? ` (${e.code})` : ''}`, 'error');
    }
  }

  async function load() {
    const answer = await api('/plugins');
    fill(rows, ...answer.plugins.map((p) => {
      const active = p.active || {};
      const stats = p.totals || {};
      const encoded = encodeURIComponent(p.name);
      return h('tr', { 'data-plugin': p.name },
        h('td', { class: 'mono', text: p.name }), h('td', { text: active.kind || '—' }), h('td', { text: active.source || '—' }),
        h('td', { class: 'mono', title: active.sha256 || '', text: active.sha256 ? active.sha256.slice(0, 12) : '—' }),
        h('td', {}, badge(p.status)),
        h('td', { text: number(stats.calls) }), h('td', { text: number(stats.failures) }), h('td', { text: number(stats.fallbacks) }),
        h('td', { text: stats.calls ? `${number(stats.latency_us_mean, 1)} µs` : '—' }),
        h('td', { class: 'candidate', title: p.rollout ? p.rollout.candidate.sha256 : '', text: candidate(p.rollout) }),
        h('td', { class: 'error', text: p.last_rejection ? `${p.last_rejection.error} (${p.last_rejection.at})` : '' }),
        h('td', { class: 'actions' },
          ...(p.rollout ? [
            action('Promote', `promote the ${p.rollout.mode} of ${p.name}`, () => api(`/plugins/${encoded}/promote`, { method: 'POST', body: { sha256: p.rollout.candidate.sha256 } }), { confirmText: `Make the ${p.rollout.mode} of ${p.name} active on every server?` }),
            ' ',
            action('Roll back', `roll back the ${p.rollout.mode} of ${p.name}`, () => api(`/plugins/${encoded}/rollback`, { method: 'POST' })),
            ' ',
          ] : []),
          p.status === 'disabled'
            ? action('Enable', `enable ${p.name}`, () => api(`/plugins/${encoded}/enable`, { method: 'POST' }))
            : action('Disable', `disable ${p.name}`, () => api(`/plugins/${encoded}/disable`, { method: 'POST' })),
          ' ',
          action('Delete', `delete ${p.name}`, () => api(`/plugins/${encoded}`, { method: 'DELETE' }), { danger: true, confirmText: `Delete ${p.name} on every server?` })));
    }));
  }

  // A shadow's agreement on this server, or a canary's share and its own failures.
  function candidate(rollout) {
    if (!rollout) return '';
    const version = rollout.candidate.sha256.slice(0, 12);
    if (rollout.mode === 'shadow') {
      const s = rollout.shadow || {};
      const differ = (s.different_agent || 0) + (s.different_verdict || 0);
      return `shadow ${version}: ${number(s.compared)} compared, ${number(differ)} differ, ${number(s.errors)} errors`;
    }
    const c = rollout.candidate;
    return `canary ${rollout.percent} % ${version}: ${number(c.calls)} calls, ${number(c.failures)} failed, ${number(c.fallbacks)} fell back`;
  }

  const page = reloading(
    () => load().catch((e) => toast(`Plugins: ${e.message}`, 'error')),
    500,
    (event) => event.type.startsWith('plugin_'),
  );
  return page;
}

// ---------------------------------------------------------------------------------------------------------------
// Sign-in and the router.

const pages = { live: LivePage, fleet: FleetPage, work: WorkPage, plugins: PluginsPage, task: TaskPage };
let current = null;
let started = false;

function route() {
  if (!started) return;
  const [, name = 'live', ...rest] = (location.hash || '#/live').split('/');
  const page = pages[name] || LivePage;
  if (current) current.stop();
  const root = document.getElementById('view');
  fill(root);
  for (const link of document.querySelectorAll('#nav a')) link.classList.toggle('active', link.dataset.view === name);
  current = page(root, decodeURIComponent(rest.join('/')));
}

function onEvent(event) {
  if (current && current.onEvent) current.onEvent(event);
}

function showSignIn(message) {
  started = false;
  if (current) current.stop();
  current = null;
  stream.stop();
  fill(document.getElementById('view'));
  document.getElementById('nav').hidden = true;
  document.getElementById('sign-out').hidden = true;
  document.getElementById('stream-state').hidden = true;
  document.getElementById('sign-in').hidden = false;
  document.getElementById('sign-in-error').textContent = message || '';
}

function signOut(message) {
  session.token = null;
  stream.forget();
  showSignIn(message);
}

async function signIn(token) {
  session.token = token;
  try {
    // The fleet summary takes `read` and refuses agent tokens: the least a dashboard needs.
    await api('/metrics');
  } catch (e) {
    const refused = e.status === 401 || e.status === 403;
    // A server that is down or restarting has not refused the token: keep it for the next try.
    if (refused) session.token = null;
    showSignIn(refused ? `This token cannot read the fleet: ${e.message}` : `${e.message}; sign in again when it answers`);
    return;
  }
  started = true;
  document.getElementById('sign-in').hidden = true;
  document.getElementById('nav').hidden = false;
  document.getElementById('sign-out').hidden = false;
  stream.listeners.add(onEvent);
  stream.start();
  route();
}

document.addEventListener('DOMContentLoaded', () => {
  document.getElementById('sign-in-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const field = document.getElementById('token');
    const token = field.value.trim().replace(/^Bearer\s+/i, '');
    field.value = '';
    if (token) signIn(token);
  });
  document.getElementById('sign-out').addEventListener('click', () => signOut());
  window.addEventListener('hashchange', route);
  if (session.token) signIn(session.token);
  else showSignIn();
});
