// The fastworker dashboard: loads the overview and recent tasks from /api/,
// then follows /api/events (server-sent events) to stay live. No libraries.
'use strict';

const $ = (selector) => document.querySelector(selector);
const MAX_TASKS = 600;
const SHOWN_ROWS = 200;
const CHART_SECONDS = 300;
const FINAL = new Set(['succeeded', 'failed', 'timed_out', 'cancelled']);

const tasks = new Map(); // task id -> summary
const workflows = new Map(); // workflow id -> summary (the newest, from /api/workflows and events)
const MAX_WORKFLOWS = 200;
let workflowsLoaded = false;
let selectedWorkflow = null;
const workers = new Map(); // worker id -> worker
const history = new Map(); // second -> {finished, failed, duration_sum_ms, duration_max_ms}
let overview = null;
let selected = null;
let renderPending = false;
// What the server keeps of the tasks the filters match (live and recently
// finished), as /api/tasks last counted it; null before the first answer.
let kept = null;
// Read by the browser test: how many events arrived, and whether the stream is open.
window.fastworker = { events: 0, live: false };

// ---- helpers ----
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === 'class') node.className = value;
    else if (key.startsWith('data-')) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child ?? ''));
  return node;
}
// An id as the tables show it: its time prefix and its last, random,
// characters, which tell ids of the same moment apart (the full id is in
// the title, in the detail and copied by its button).
function shortId(id) { return id.slice(0, 8) + '…' + id.slice(-6); }
function stateBadge(state) { return el('span', { class: 'state ' + state }, state.replace('_', ' ')); }
function clock(ms) { return ms ? new Date(ms).toLocaleTimeString() : '—'; }
function ago(ms) {
  if (!ms) return '—';
  const s = Math.max(0, (Date.now() - ms) / 1000);
  return s < 60 ? s.toFixed(0) + ' s ago' : s < 3600 ? (s / 60).toFixed(0) + ' min ago' : (s / 3600).toFixed(1) + ' h ago';
}
function duration(ms) {
  if (ms == null) return '—';
  return ms < 1000 ? ms + ' ms' : ms < 60000 ? (ms / 1000).toFixed(2) + ' s' : (ms / 60000).toFixed(1) + ' min';
}
function uptime(s) {
  const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
  return (d ? d + 'd ' : '') + (d || h ? h + 'h ' : '') + m + 'm ' + Math.floor(s % 60) + 's';
}
function pretty(value) { return value === null || value === undefined ? '—' : JSON.stringify(value, null, 2); }

async function api(path, options) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(body.message || response.statusText);
    error.status = response.status;
    throw error;
  }
  return body;
}

// ---- tasks ----
function upsert(task) {
  const old = tasks.get(task.task_id);
  // A late event never takes a finished task back to an earlier state.
  if (old && FINAL.has(old.state) && !FINAL.has(task.state)) return;
  tasks.set(task.task_id, task);
  if (tasks.size > MAX_TASKS) {
    const oldest = [...tasks.values()].filter((t) => FINAL.has(t.state)).sort((a, b) => a.created_ms - b.created_ms);
    for (const t of oldest.slice(0, tasks.size - MAX_TASKS)) tasks.delete(t.task_id);
  }
}

function scheduleRender() {
  if (renderPending) return;
  renderPending = true;
  setTimeout(() => { renderPending = false; renderTasks(); }, 100);
}

function renderTasks() {
  const state = $('#state-filter').value;
  const name = $('#name-filter').value;
  const needle = $('#search').value.trim().toLowerCase();
  const rows = [...tasks.values()]
    .filter((t) => (!state || t.state === state) && (!name || t.task_name === name) && (!needle || t.task_id.includes(needle)))
    .sort((a, b) => b.created_ms - a.created_ms);
  const body = $('#tasks tbody');
  body.replaceChildren(...rows.slice(0, SHOWN_ROWS).map((t) => {
    const row = el('tr', { 'data-task-id': t.task_id, 'data-state': t.state },
      el('td', {}, stateBadge(t.state)),
      el('td', {}, t.task_name),
      el('td', { class: 'id', title: t.task_id }, shortId(t.task_id)),
      el('td', {}, t.priority),
      el('td', {}, t.worker || '—'),
      el('td', {}, t.attempts),
      el('td', { title: new Date(t.created_ms).toISOString() }, clock(t.created_ms)),
      el('td', {}, duration(t.duration_ms)));
    row.addEventListener('click', () => openTask(t.task_id));
    return row;
  }));
  const shown = Math.min(rows.length, SHOWN_ROWS);
  const parts = [`${shown} shown`];
  if (kept !== null) parts.push(`${kept} kept`);
  if (overview) parts.push(`${overview.totals.submitted} submitted since start`);
  $('#tasks-count').textContent = '(' + parts.join(' · ') + ')';
  $('#tasks-count').dataset.shown = shown;
  // Said only once the server has answered: no empty list before the data.
  $('#no-tasks').hidden = rows.length > 0 || kept === null;
}

// The filters as /api/tasks takes them.
function taskQuery() {
  const state = $('#state-filter').value;
  const name = $('#name-filter').value;
  const q = $('#search').value.trim();
  return (state ? '&state=' + encodeURIComponent(state) : '') + (name ? '&task=' + encodeURIComponent(name) : '') +
    (q ? '&q=' + encodeURIComponent(q) : '');
}

async function loadTasks(query) {
  try {
    const body = await api('/api/tasks?limit=200' + (query || ''));
    body.tasks.forEach(upsert);
    if ((query || '') === taskQuery()) kept = body.total;
    scheduleRender();
  } catch (error) { console.warn('loading tasks', error); }
}

// How many tasks the server keeps for the filters, with each overview.
async function countKept() {
  const query = taskQuery();
  try {
    const body = await api('/api/tasks?limit=0' + query);
    if (query === taskQuery()) { kept = body.total; scheduleRender(); }
  } catch (error) { console.warn('counting tasks', error); }
}

// ---- overview ----
function applyOverview(o) {
  overview = o;
  if (o.task_limits) renderLimits(o.task_limits);
  const cp = o.control_plane;
  $('#cp-id').textContent = cp.worker_id;
  document.title = 'fastworker · ' + cp.worker_id;
  const facts = [
    ['Id', cp.worker_id],
    ['Base address', cp.base_address],
    ['Results', cp.addresses.results],
    ['Subworkers', cp.addresses.subworkers || '—'],
    ['Discovery', cp.addresses.discovery || 'off'],
    ['Up', uptime(cp.uptime_s)],
    ['Threads', cp.concurrency],
    ['Plugins', cp.plugins.map((p) => `${p.name} ${p.version}`).join(', ') || 'none'],
    ['Tasks', cp.tasks.join(', ') || 'none'],
  ];
  $('#cp').replaceChildren(...facts.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, v)]));
  $('#key-box').hidden = !cp.actions_need_key;

  const priorities = ['critical', 'high', 'normal', 'low'];
  const all = { queued: 0, running: 0, prefetched: 0, later: 0 };
  const queueRow = (priority, q) => el('tr', { 'data-priority': priority }, el('td', {}, priority),
    el('td', { 'data-col': 'queued' }, q.queued), el('td', { 'data-col': 'running' }, q.running),
    el('td', { 'data-col': 'prefetched' }, q.prefetched), el('td', { 'data-col': 'later' }, q.later));
  const rows = priorities.map((priority) => {
    const q = o.queues[priority];
    const row = { queued: q.queued, running: q.running, prefetched: q.prefetched || 0, later: q.scheduled + q.retrying };
    for (const key of Object.keys(all)) all[key] += row[key];
    return queueRow(priority, row);
  });
  const total = queueRow('all', all);
  total.className = 'total';
  $('#queues tbody').replaceChildren(...rows, total);
  const t = o.totals;
  $('#totals').textContent = `Since start: ${t.submitted} submitted · ${t.succeeded} succeeded · ${t.failed} failed · ` +
    `${t.retried} retried · ${t.timed_out} timed out · ${t.cancelled} cancelled`;

  const c = o.cache;
  const used = c.capacity ? Math.min(100, (100 * c.size) / c.capacity) : 0;
  const bar = el('div', { class: 'bar' }, el('span', {}));
  bar.firstChild.style.width = used.toFixed(1) + '%';
  $('#cache').replaceChildren(
    el('div', {}, `${c.size} of ${c.capacity} results`), bar,
    el('dl', { class: 'facts' },
      el('dt', {}, 'TTL'), el('dd', {}, c.ttl_s == null ? 'none (kept until evicted)' : c.ttl_s + ' s'),
      el('dt', {}, 'Hit rate'), el('dd', {}, c.hit_rate == null ? '—' : (100 * c.hit_rate).toFixed(1) + ` % of ${c.hits + c.misses} lookups`)));

  workers.clear();
  for (const w of o.workers.subworkers) workers.set(w.worker_id, w);
  workersLoaded = true;
  renderWorkers();
  fillNames(cp.tasks.concat(...o.workers.subworkers.map((w) => w.tasks || [])));
  countKept();
  loadSchedules();
  for (const s of o.history) history.set(s.t, s);
  drawCharts();
}

let workersLoaded = false;

// Runs started on a subworker, of its threads, and those it holds
// prefetched, from the overview that also fills the Queues card.
function renderWorkers() {
  const list = [...workers.values()].sort((a, b) => a.worker_id.localeCompare(b.worker_id));
  $('#workers tbody').replaceChildren(...list.map((w) => {
    const running = w.running ?? 0;
    const bar = el('div', { class: 'bar' }, el('span', {}));
    bar.firstChild.style.width = Math.min(100, (100 * running) / Math.max(1, w.concurrency)) + '%';
    return el('tr', { 'data-worker-id': w.worker_id, 'data-status': w.status },
      el('td', {}, w.worker_id),
      el('td', {}, stateBadge(w.status)),
      el('td', { 'data-col': 'running', 'data-value': running }, el('div', {}, `${running} of ${w.concurrency} threads`), bar),
      el('td', { 'data-col': 'prefetched', 'data-value': w.prefetched ?? 0 }, w.prefetched ?? 0),
      el('td', { class: 'id' }, w.address),
      el('td', { title: new Date(w.last_seen_ms).toISOString() }, ago(w.last_seen_ms)),
      el('td', {}, w.dispatched ?? '—'),
      el('td', { class: 'wrap' }, (w.tasks || []).join(', ')));
  }));
  const active = list.filter((w) => w.status === 'active').length;
  $('#workers-count').textContent = list.length ? `(${active} active of ${list.length})` : '';
  $('#no-workers').hidden = list.length > 0 || !workersLoaded;
}

// The task names of the name filter: those provided, and any already listed.
function fillNames(names) {
  const select = $('#name-filter');
  const known = new Set([...select.options].map((o) => o.value));
  for (const name of [...new Set(names)].sort()) {
    if (!known.has(name)) select.append(el('option', { value: name }, name));
  }
}

// ---- schedules (docs/periodic.md) ----
async function loadSchedules() {
  let rows;
  try { rows = await api('/api/schedules'); } catch (error) { return console.warn('loading the schedules', error); }
  $('#schedules tbody').replaceChildren(...rows.map((s) => el('tr', { 'data-task': s.task_name },
    el('td', {}, s.task_name),
    el('td', {}, s.schedule),
    el('td', {}, s.paused ? 'paused' : s.next_ms ? 'on' : 'over'),
    el('td', { title: s.next_ms ? new Date(s.next_ms).toISOString() : '' }, clock(s.next_ms)),
    el('td', {}, s.runs),
    el('td', {}, s.skipped),
    el('td', { title: s.last_task_id || '' }, clock(s.last_run_ms)),
    el('td', { class: 'wrap' }, s.last_outcome || '—'))));
  $('#no-schedules').hidden = rows.length > 0;
}

// ---- charts (hand-drawn SVG) ----
function series(pick) {
  const now = Math.floor(Date.now() / 1000);
  const out = [];
  for (let t = now - CHART_SECONDS + 1; t <= now; t++) {
    const s = history.get(t);
    out.push(s ? pick(s) : 0);
  }
  for (const t of history.keys()) if (t < now - CHART_SECONDS) history.delete(t);
  return out;
}
function path(values, top) {
  const step = 300 / (values.length - 1);
  return values.map((v, i) => `${i ? 'L' : 'M'}${(i * step).toFixed(1)},${(100 - (95 * v) / top).toFixed(1)}`).join('');
}
function draw(svg, lines) {
  const top = Math.max(1, ...lines.flatMap((l) => l.values));
  const ns = 'http://www.w3.org/2000/svg';
  const nodes = [25, 50, 75].map((y) => {
    const g = document.createElementNS(ns, 'line');
    for (const [k, v] of Object.entries({ x1: 0, x2: 300, y1: y, y2: y, class: 'grid' })) g.setAttribute(k, v);
    return g;
  });
  for (const line of lines) {
    if (line.area) {
      const a = document.createElementNS(ns, 'path');
      a.setAttribute('d', path(line.values, top) + 'L300,100L0,100Z');
      a.setAttribute('class', 'area');
      nodes.push(a);
    }
    const p = document.createElementNS(ns, 'path');
    p.setAttribute('d', path(line.values, top));
    p.setAttribute('class', line.class);
    nodes.push(p);
  }
  svg.replaceChildren(...nodes);
  return top;
}
function drawCharts() {
  const finished = series((s) => s.finished);
  const failed = series((s) => s.failed);
  const peak = draw($('#chart-throughput'), [{ values: finished, class: 'ok', area: true }, { values: failed, class: 'bad' }]);
  const lastMinute = finished.slice(-60).reduce((a, b) => a + b, 0);
  $('#tp-peak').textContent = `· peak ${peak}/s · ${(lastMinute / 60).toFixed(1)}/s over the last minute`;
  const mean = series((s) => (s.finished ? Math.round(s.duration_sum_ms / s.finished) : 0));
  const max = series((s) => s.duration_max_ms);
  const top = draw($('#chart-latency'), [{ values: mean, class: 'ok' }, { values: max, class: 'warn' }]);
  $('#lat-peak').textContent = `· top ${duration(top)}`;
}

// ---- one task ----
async function openTask(taskId) {
  selected = taskId;
  const dialog = $('#detail');
  $('#detail-message').hidden = true;
  await showTask(taskId);
  if (!dialog.open) dialog.showModal();
}

async function showTask(taskId) {
  let task;
  try { task = await api('/api/tasks/' + taskId, { headers: keyHeaders() }); } catch (error) {
    if (error.status === 401) { $('#key-box').hidden = false; $('#api-key').focus(); }
    return message(error.message, true);
  }
  if (selected !== taskId) return;
  $('#detail-title').replaceChildren(task.task_name + ' ', stateBadge(task.state));
  const facts = [
    ['Id', task.task_id], ['Priority', task.priority], ['Worker', task.worker || '—'], ['Runs', task.attempts],
    ['Created', clock(task.created_ms)], ['Started', clock(task.started_ms)], ['Finished', clock(task.finished_ms)],
    ['Run time', duration(task.duration_ms)],
  ];
  $('#detail-facts').replaceChildren(...facts.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, v)]));
  $('#detail-facts dd').id = 'detail-id';
  const parts = [el('h3', { class: 'small muted' }, 'Arguments'), el('pre', { id: 'detail-args' }, pretty(task.args))];
  if (task.state === 'succeeded') {
    parts.push(el('h3', { class: 'small muted' }, 'Result'),
      el('pre', { id: 'detail-result' }, task.result_kept === false ? 'no longer kept in the result cache' : pretty(task.result)));
  }
  if (task.error) {
    const text = typeof task.error === 'string' ? task.error : `${task.error.kind}: ${task.error.message}`;
    parts.push(el('h3', { class: 'small muted' }, 'Error'), el('pre', { id: 'detail-error' }, text));
  }
  $('#detail-body').replaceChildren(...parts);
  $('#cancel-task').hidden = FINAL.has(task.state);
  $('#retry-task').hidden = !task.retryable;
}

function message(text, isError) {
  const box = $('#detail-message');
  box.textContent = text;
  box.className = 'message' + (isError ? ' error' : '');
  box.hidden = false;
}

// The dashboard's API key, as typed or kept for this tab.
function keyHeaders() {
  const key = $('#api-key').value || sessionStorage.getItem('fastworker-key');
  return key ? { Authorization: 'Bearer ' + key } : {};
}

async function act(action) {
  const taskId = selected;
  const headers = keyHeaders();
  const key = headers.Authorization;
  try {
    const body = await api(`/api/tasks/${taskId}/${action}`, { method: 'POST', headers });
    if (key) sessionStorage.setItem('fastworker-key', $('#api-key').value || sessionStorage.getItem('fastworker-key'));
    if (action === 'retry') {
      message(`Submitted again as ${body.task_id}.`);
      setTimeout(() => { if ($('#detail').open && selected === taskId) openTask(body.task_id); }, 600);
    } else {
      message(body.cancelled ? 'Cancelled: it will not run.' : 'Asked to stop: it ends when it next checks its context.');
      showTask(taskId);
    }
  } catch (error) {
    if (error.status === 401) { $('#key-box').hidden = false; $('#api-key').focus(); }
    message(error.message, true);
  }
}

// ---- run a task (the HTTP API, docs/http-api.md) ----
const registered = new Map(); // task name -> {doc, args_schema, …}
let running = null; // the id of the task the form submitted last

// A call of /api/v1/, whose errors are {"error": {"kind", "message"}}.
async function apiV1(path, options) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error((body.error && body.error.message) || response.statusText);
    error.status = response.status;
    error.kind = body.error && body.error.kind;
    throw error;
  }
  return body;
}

function runMessage(text, isError) {
  const box = $('#run-message');
  box.textContent = text;
  box.className = 'message' + (isError ? ' error' : '');
  box.hidden = !text;
}

// The schema a property refers to, one `$ref` into `$defs` deep.
function resolve(schema, root) {
  const ref = schema && schema.$ref;
  if (ref && ref.startsWith('#/$defs/')) return (root.$defs || {})[ref.slice(8)] || schema;
  return schema || {};
}

// One input per parameter, in positional order: numbers, text and
// booleans as such, anything else as JSON.
function renderRunFields() {
  const task = registered.get($('#run-task').value);
  const fields = $('#run-fields');
  fields.replaceChildren();
  $('#run-doc').textContent = task ? task.doc || '' : '';
  if (!task) return;
  const schema = task.args_schema;
  if (!schema) {
    fields.append(el('label', { htmlFor: 'run-raw' }, 'arguments'),
      el('textarea', { id: 'run-raw', placeholder: 'a JSON array or object (this task has no schema)', value: '[]' }));
    return;
  }
  for (const name of schema.required || []) {
    const property = resolve((schema.properties || {})[name], schema);
    const type = Array.isArray(property.type) ? property.type.find((t) => t !== 'null') : property.type;
    const id = 'run-arg-' + name;
    let input;
    if (type === 'integer' || type === 'number') {
      input = el('input', { id, type: 'number', step: type === 'integer' ? '1' : 'any', required: true });
    } else if (type === 'string' && !property.enum) {
      input = el('input', { id, type: 'text' });
    } else if (type === 'boolean') {
      input = el('input', { id, type: 'checkbox' });
    } else {
      input = el('textarea', { id, placeholder: 'JSON' + (property.title ? ': ' + property.title : '') });
    }
    input.dataset.param = name;
    input.dataset.kind = input.type === 'number' ? type : input.type === 'checkbox' ? 'boolean' : input.tagName === 'TEXTAREA' ? 'json' : 'string';
    fields.append(el('label', { htmlFor: id, title: property.description || '' }, name), input);
  }
}

// The arguments the fields hold, or an error naming the field.
function runArgs() {
  const raw = $('#run-raw');
  if (raw) return JSON.parse(raw.value || '[]');
  const args = {};
  for (const input of document.querySelectorAll('#run-fields [data-param]')) {
    const name = input.dataset.param;
    const kind = input.dataset.kind;
    if (kind === 'integer' || kind === 'number') args[name] = input.value === '' ? null : Number(input.value);
    else if (kind === 'boolean') args[name] = input.checked;
    else if (kind === 'string') args[name] = input.value;
    else {
      try { args[name] = JSON.parse(input.value); } catch (error) { throw new Error(`${name}: not JSON (${error.message})`); }
    }
  }
  return args;
}

function showRun(report) {
  if (report.task_id !== running) return;
  $('#run-outcome').hidden = false;
  $('#run-id').textContent = report.task_id;
  $('#run-state').replaceChildren(stateBadge(report.state));
  $('#run-result').textContent = report.failure ? report.failure.message : report.finished ? pretty(report.result) : '…';
}

async function runTask(event) {
  event.preventDefault();
  runMessage('');
  $('#run-outcome').hidden = true;
  running = null;
  let args;
  try { args = runArgs(); } catch (error) { return runMessage(error.message, true); }
  const submission = { task: $('#run-task').value, args };
  if ($('#run-priority').value) submission.priority = $('#run-priority').value;
  const headers = { 'Content-Type': 'application/json', ...keyHeaders() };
  try {
    let report = await apiV1('/api/v1/tasks', { method: 'POST', headers, body: JSON.stringify(submission) });
    running = report.task_id;
    showRun(report);
    // Follow it (the event stream shows its changes meanwhile) until it ends.
    while (!report.finished && running === report.task_id) {
      report = await apiV1(`/api/v1/tasks/${report.task_id}/wait?timeout_ms=20000`, { headers: keyHeaders() });
      showRun(report);
    }
  } catch (error) {
    if (error.status === 401) { $('#key-box').hidden = false; $('#api-key').focus(); }
    runMessage((error.kind ? error.kind + ': ' : '') + error.message, true);
  }
}

async function loadRegistered() {
  try {
    const body = await apiV1('/api/v1/registered-tasks');
    const select = $('#run-task');
    const chosen = select.value;
    registered.clear();
    select.replaceChildren();
    for (const task of body.tasks) {
      registered.set(task.task, task);
      select.append(el('option', { value: task.task }, task.task));
    }
    if (registered.has(chosen)) select.value = chosen;
    $('#run-card').hidden = registered.size === 0;
    renderRunFields();
  } catch (error) { console.warn('loading the registered tasks', error); }
}

// ---- workflows (docs/workflows.md) ----
function upsertWorkflow(wf) {
  const old = workflows.get(wf.workflow_id);
  // A late event never takes an ended workflow back to running.
  if (old && old.state !== 'running' && wf.state === 'running') return;
  workflows.set(wf.workflow_id, wf);
  if (workflows.size > MAX_WORKFLOWS) {
    const oldest = [...workflows.values()].sort((a, b) => a.created_ms - b.created_ms);
    for (const w of oldest.slice(0, workflows.size - MAX_WORKFLOWS)) workflows.delete(w.workflow_id);
  }
}

function outcomeText(wf) {
  if (wf.failure) return `${wf.failure.task || 'workflow'}: ${wf.failure.message ?? '(hidden: open it with the API key)'}`;
  if (wf.state === 'succeeded') return wf.result ?? '(hidden: open it with the API key)';
  return '—';
}

function renderWorkflows() {
  const rows = [...workflows.values()].sort((a, b) => b.created_ms - a.created_ms);
  $('#workflows tbody').replaceChildren(...rows.map((wf) => {
    const bar = el('div', { class: 'bar' }, el('span', {}));
    bar.firstChild.style.width = (wf.total ? (100 * wf.done) / wf.total : 0).toFixed(1) + '%';
    const row = el('tr', { 'data-workflow-id': wf.workflow_id, 'data-state': wf.state },
      el('td', {}, stateBadge(wf.state)),
      el('td', { class: 'id', title: wf.workflow_id }, shortId(wf.workflow_id)),
      el('td', { class: 'members' }, el('div', {}, `${wf.done} / ${wf.total}`), bar),
      el('td', { title: new Date(wf.created_ms).toISOString() }, clock(wf.created_ms)),
      el('td', {}, wf.finished_ms ? duration(wf.finished_ms - wf.created_ms) : '—'),
      el('td', { class: 'wrap outcome' }, outcomeText(wf)));
    row.addEventListener('click', () => openWorkflow(wf.workflow_id));
    return row;
  }));
  $('#workflows-count').textContent = `(${rows.length} shown)`;
  $('#no-workflows').hidden = rows.length > 0 || !workflowsLoaded;
}

async function loadWorkflows() {
  try {
    const body = await api('/api/workflows?limit=' + MAX_WORKFLOWS);
    body.workflows.forEach(upsertWorkflow);
    workflowsLoaded = true;
    renderWorkflows();
  } catch (error) { console.warn('loading workflows', error); }
}

function wfMessage(text, isError) {
  const box = $('#wf-message');
  box.textContent = text;
  box.className = 'message' + (isError ? ' error' : '');
  box.hidden = !text;
}

async function openWorkflow(workflowId) {
  selectedWorkflow = workflowId;
  wfMessage('');
  await showWorkflow(workflowId);
  if (!$('#wf-detail').open) $('#wf-detail').showModal();
}

async function showWorkflow(workflowId) {
  let wf;
  try { wf = await api('/api/workflows/' + workflowId, { headers: keyHeaders() }); } catch (error) {
    if (error.status === 401) { $('#key-box').hidden = false; $('#api-key').focus(); }
    return wfMessage(error.message, true);
  }
  if (selectedWorkflow !== workflowId) return;
  $('#wf-title').replaceChildren('Workflow ', stateBadge(wf.state));
  const done = wf.members.filter((m) => !['pending', 'queued', 'running', 'retrying'].includes(m.state)).length;
  const facts = [
    ['Id', wf.workflow_id], ['Members', `${done} of ${wf.members.length} done`],
    ['Started', clock(wf.created_ms)], ['Finished', clock(wf.finished_ms)],
    ['Took', wf.finished_ms ? duration(wf.finished_ms - wf.created_ms) : '—'],
  ];
  $('#wf-facts').replaceChildren(...facts.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, v)]));
  $('#wf-members tbody').replaceChildren(...wf.members.map((m) => {
    const row = el('tr', { 'data-node': m.node, 'data-state': m.state },
      el('td', {}, m.node), el('td', {}, m.task), el('td', {}, stateBadge(m.state)),
      el('td', { class: 'id', title: m.task_id || '' }, m.task_id ? shortId(m.task_id) : '—'));
    if (m.task_id) row.addEventListener('click', () => openTask(m.task_id));
    return row;
  }));
  const parts = [];
  if (wf.state === 'succeeded') parts.push(el('h3', { class: 'small muted' }, 'Result'), el('pre', { id: 'wf-result' }, pretty(wf.result)));
  if (wf.failure) {
    const who = wf.failure.node == null ? 'the workflow' : `member ${wf.failure.node} (${wf.failure.task})`;
    parts.push(el('h3', { class: 'small muted' }, 'First failure'),
      el('pre', { id: 'wf-failure' }, `${who} ${wf.failure.state}: ${wf.failure.message}`));
  }
  $('#wf-body').replaceChildren(...parts);
  $('#cancel-workflow').hidden = wf.finished;
}

async function cancelWorkflow() {
  const workflowId = selectedWorkflow;
  const headers = keyHeaders();
  try {
    await api(`/api/workflows/${workflowId}/cancel`, { method: 'POST', headers });
    if (headers.Authorization) sessionStorage.setItem('fastworker-key', $('#api-key').value || sessionStorage.getItem('fastworker-key'));
    wfMessage('Cancelled: its pending members will not run.');
    showWorkflow(workflowId);
  } catch (error) {
    if (error.status === 401) { $('#key-box').hidden = false; $('#api-key').focus(); }
    wfMessage(error.message, true);
  }
}

// ---- live stream ----
function setLive(live) {
  window.fastworker.live = live;
  const badge = $('#live');
  badge.dataset.live = String(live);
  badge.textContent = live ? '● live' : 'reconnecting…';
}

function connect() {
  const source = new EventSource('/api/events');
  const seen = () => { window.fastworker.events += 1; };
  source.onopen = () => setLive(true);
  source.onerror = () => setLive(false); // EventSource reconnects by itself
  source.addEventListener('snapshot', (e) => { seen(); applyOverview(JSON.parse(e.data)); });
  source.addEventListener('task', (e) => {
    seen();
    const task = JSON.parse(e.data);
    upsert(task);
    scheduleRender();
    if (task.task_id === running) $('#run-state').replaceChildren(stateBadge(task.state));
    if (selected === task.task_id && $('#detail').open) showTask(task.task_id);
  });
  source.addEventListener('worker', (e) => {
    seen();
    const change = JSON.parse(e.data);
    // A status change keeps the run counts of the last overview until the next.
    if (change.change === 'left') workers.delete(change.worker_id);
    else workers.set(change.worker_id, { ...workers.get(change.worker_id), ...change });
    renderWorkers();
  });
  source.addEventListener('workflow', (e) => {
    seen();
    const wf = JSON.parse(e.data);
    upsertWorkflow(wf);
    renderWorkflows();
    if (selectedWorkflow === wf.workflow_id && $('#wf-detail').open) showWorkflow(wf.workflow_id);
  });
  source.addEventListener('resync', () => { loadTasks(); loadWorkflows(); });
}

// ---- task limits (docs/limits.md) ----
function limitMessage(text, isError) {
  const box = $('#limit-message');
  box.textContent = text;
  box.className = 'message' + (isError ? ' error' : '');
  box.hidden = false;
}

function rateText(row) {
  if (row.rate_per_second == null) return '—';
  const r = row.rate_per_second;
  const shown = r >= 1 ? `${+r.toFixed(3)}/s` : r * 60 >= 1 ? `${+(r * 60).toFixed(3)}/min` : `${+(r * 3600).toFixed(3)}/h`;
  return `${shown} (burst ${row.burst})`;
}

function renderLimits(limits) {
  $('#task-limits tbody').replaceChildren(...limits.map((row) => {
    const clear = row.source === 'run-time'
      ? el('button', { type: 'button', onclick: () => changeLimit(`/api/task-limits/${encodeURIComponent(row.task)}/clear`, null) }, 'Clear')
      : '';
    return el('tr', { 'data-task': row.task },
      el('td', {}, row.task),
      el('td', {}, rateText(row)),
      el('td', {}, row.max_running ?? '—'),
      el('td', {}, row.running),
      el('td', {}, row.held),
      el('td', {}, row.held_total),
      el('td', {}, row.source),
      el('td', {}, clear));
  }));
  $('#no-limits').hidden = limits.length > 0;
}

// After a change: at once, not at the next overview.
async function loadLimits() {
  try {
    renderLimits((await api('/api/task-limits')).limits);
  } catch (error) {
    console.warn('loading the task limits', error);
  }
}

async function changeLimit(path, limit) {
  const headers = { ...keyHeaders(), 'Content-Type': 'application/json' };
  const options = { method: 'POST', headers };
  if (limit !== null) options.body = JSON.stringify({ limit });
  try {
    await api(path, options);
    limitMessage(limit === null ? 'Cleared: the declared or --task-limit limit holds again.' : 'Limit set.');
    loadLimits();
  } catch (error) {
    if (error.status === 401) { $('#key-box').hidden = false; $('#api-key').focus(); }
    limitMessage(error.message, true);
  }
}

$('#limit-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const task = $('#limit-task').value.trim();
  const spec = $('#limit-spec').value.trim();
  if (!task || !spec) return limitMessage('Name a task and its limit (for example rate:20/s,max_running:2, or none).', true);
  changeLimit(`/api/task-limits/${encodeURIComponent(task)}`, spec);
});

// ---- start ----
let searchTimer = null;
function refilter() {
  kept = null;
  scheduleRender();
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => loadTasks(taskQuery()), 250);
}
$('#state-filter').addEventListener('change', refilter);
$('#name-filter').addEventListener('change', refilter);
$('#copy-id').addEventListener('click', () => {
  const id = $('#detail-id')?.textContent || '';
  const done = () => message('Copied ' + id + '.');
  if (navigator.clipboard && window.isSecureContext) navigator.clipboard.writeText(id).then(done, () => selectId());
  else selectId();
});
// Where the clipboard is not offered (plain HTTP beyond localhost): the id selected, to copy by hand.
function selectId() {
  const range = document.createRange();
  range.selectNodeContents($('#detail-id'));
  getSelection().removeAllRanges();
  getSelection().addRange(range);
  message('Id selected: copy it with Ctrl+C.');
}
$('#search').addEventListener('input', refilter);
$('#cancel-task').addEventListener('click', () => act('cancel'));
$('#retry-task').addEventListener('click', () => act('retry'));
$('#detail').addEventListener('close', () => { selected = null; });
$('#cancel-workflow').addEventListener('click', cancelWorkflow);
$('#wf-detail').addEventListener('close', () => { selectedWorkflow = null; });
$('#api-key').value = sessionStorage.getItem('fastworker-key') || '';
$('#run-task').addEventListener('change', renderRunFields);
$('#run-form').addEventListener('submit', runTask);

api('/api/status').then(applyOverview).catch((error) => console.warn('loading the overview', error));
api('/api/throughput?seconds=' + CHART_SECONDS)
  .then((body) => { for (const s of body.seconds) history.set(s.t, s); drawCharts(); })
  .catch((error) => console.warn('loading the history', error));
loadTasks();
loadWorkflows();
loadRegistered();
connect();
setInterval(drawCharts, 1000);

