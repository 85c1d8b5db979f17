// The upload page. Plain script, no build step, no dependencies. The page's CSP requires
// Trusted Types with no policy, so the DOM is built with createElement and textContent only:
// no server or file data is ever parsed as HTML.
'use strict';

(() => {
  const TOKEN_KEY = 'converter.token';
  const TERMINAL = new Set(['succeeded', 'failed', 'canceled']);
  // Rows shown per report table: the rest is in the report's JSON, which the card links.
  const MAX_ROWS = 1000;
  // Uploads sent at once; more wait their turn (the server answers 429 beyond its own limit).
  const MAX_PARALLEL_UPLOADS = 3;
  const MAX_UPLOAD_RETRIES = 5;

  const $ = (id) => document.getElementById(id);

  // el builds an element: attributes (class, text, boolean true, null skipped) and children.
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'text') e.textContent = v;
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  }

  function token() { return sessionStorage.getItem(TOKEN_KEY) || ''; }

  function headers(extra) {
    const h = Object.assign({ Accept: 'application/json' }, extra);
    const t = token();
    if (t) h.Authorization = 'Bearer ' + t;
    return h;
  }

  class HTTPError extends Error {
    constructor(status, detail) { super(detail); this.status = status; }
  }

  // problemDetail returns what an RFC 9457 problem body says, or '' when it is not one.
  function problemDetail(text) {
    try {
      const p = JSON.parse(text);
      return p.detail || p.title || '';
    } catch (_) {
      return '';
    }
  }

  async function getJSON(url) {
    const resp = await fetch(url, { headers: headers(), cache: 'no-store' });
    if (!resp.ok) {
      throw new HTTPError(resp.status, problemDetail(await resp.text()) || `${resp.status} ${resp.statusText}`);
    }
    return { body: await resp.json(), resp };
  }

  function formatBytes(n) {
    if (!Number.isFinite(n)) return '';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? String(n) : n.toFixed(1)) + ' ' + units[i];
  }

  function plural(n, noun) { return `${n} ${noun}${n === 1 ? '' : 's'}`; }

  function wait(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }

  // announce tells screen readers about a change through the page's one polite live region.
  function announce(message) { $('announce').textContent = message; }

  function badge(state) { return el('span', { class: `badge state-${state.replace(/\s+/g, '-')}`, text: state }); }

  // download saves url as name. Without a token a link's own navigation streams the file to
  // disk; with one, the file is fetched with the token (a link cannot send a header) and saved
  // from a blob.
  async function download(url, name, status) {
    if (!token()) {
      const a = el('a', { href: url, download: name });
      document.body.append(a);
      a.click();
      a.remove();
      return;
    }
    status.textContent = `Downloading ${name}…`;
    try {
      const resp = await fetch(url, { headers: headers({ Accept: '*/*' }) });
      if (!resp.ok) throw new HTTPError(resp.status, problemDetail(await resp.text()) || resp.statusText);
      const href = URL.createObjectURL(await resp.blob());
      const a = el('a', { href, download: name });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(href), 60000);
      status.textContent = '';
    } catch (e) {
      status.textContent = `Download failed: ${e.message}`;
    }
  }

  // table renders rows (at most MAX_ROWS of total) under a caption, or says there are none.
  function table(caption, columns, rows, total) {
    if (!rows.length) return el('p', { class: 'meta', text: `${caption}: none` });
    const head = el('tr', {}, ...columns.map((c) => el('th', { scope: 'col', class: c.num ? 'num' : null, text: c.title })));
    const body = el('tbody', {}, ...rows.slice(0, MAX_ROWS).map((r) =>
      el('tr', {}, ...columns.map((c) => el('td', { class: c.num ? 'num' : null }, c.cell(r))))));
    const shown = Math.min(rows.length, MAX_ROWS);
    const count = total > shown ? `${shown} of ${total}` : String(total);
    return el('div', { class: 'scroll' },
      el('table', {}, el('caption', { text: `${caption} (${count})` }), el('thead', {}, head), body));
  }

  function code(text) { return el('code', { text }); }

  let cardCount = 0;
  const cards = new Map(); // job id -> Card

  // Card is one job in the page's list: its upload, its state, its report.
  class Card {
    // constructor adds a card for a file; uploaded is false for a job the page did not upload.
    constructor(name, size, uploaded) {
      const n = ++cardCount;
      this.name = name;
      this.state = '';
      this.job = null;
      this.title = el('h3', { id: `job-${n}-h`, tabindex: '-1', text: name });
      this.badge = badge('waiting');
      this.meta = el('p', { class: 'meta', text: formatBytes(size) });
      this.uploadLabel = el('span', { id: `job-${n}-up`, class: 'progress-label', text: 'Upload' });
      this.uploadBar = el('progress', { max: '100', value: '0', 'aria-labelledby': `job-${n}-up` });
      this.uploadText = el('span', { class: 'progress-text', text: 'waiting' });
      this.upload = el('div', { class: 'progress-row', hidden: !uploaded }, this.uploadLabel, this.uploadBar, this.uploadText);
      this.convLabel = el('span', { id: `job-${n}-cv`, class: 'progress-label', text: 'Conversion' });
      this.convBar = el('progress', { max: '100', 'aria-labelledby': `job-${n}-cv` });
      this.convText = el('span', { class: 'progress-text' });
      this.conv = el('div', { class: 'progress-row', hidden: true }, this.convLabel, this.convBar, this.convText);
      this.refusal = el('div', { class: 'refusal', hidden: true });
      this.facts = el('dl', { class: 'facts', hidden: true });
      this.actions = el('p', { class: 'actions', hidden: true });
      this.status = el('p', { class: 'help', role: 'status' });
      this.report = el('details', { class: 'report', hidden: true });
      this.root = el('li', { class: 'job', 'data-state': 'waiting', 'aria-labelledby': this.title.id },
        el('div', { class: 'job-head' }, this.title, this.badge),
        this.meta, this.upload, this.conv, this.refusal, this.facts, this.actions, this.status, this.report);
      $('jobs-h').hidden = false;
      $('jobs').prepend(this.root);
    }

    // setBadge shows state, and keeps it in data-state for styles and tests.
    setBadge(state) {
      this.badge.replaceWith(this.badge = badge(state));
      this.root.dataset.state = state;
    }

    uploading(loaded, total) {
      const pct = total > 0 ? Math.floor((loaded / total) * 100) : 0;
      this.setBadge('uploading');
      this.uploadBar.value = pct;
      this.uploadText.textContent = `${pct}% of ${formatBytes(total)}`;
    }

    uploadFailed(message) {
      this.setBadge('not uploaded');
      this.uploadText.textContent = 'failed';
      this.showRefusal('Upload refused', message, []);
      announce(`${this.name}: upload failed: ${message}`);
    }

    // update shows a job as the API returned it.
    update(job) {
      this.job = job;
      this.root.dataset.job = job.id;
      cards.set(job.id, this);
      if (this.state !== job.state) {
        this.state = job.state;
        this.setBadge(job.state);
        announce(job.error ? `${this.name}: ${job.state}, ${job.error.type}` : `${this.name}: ${job.state}`);
      }
      this.meta.textContent = `${formatBytes(job.input.size)} · job ${job.id}`;
      this.conv.hidden = TERMINAL.has(job.state);
      this.showProgress(job);
      this.showFacts(job);
      if (job.error) this.showError();
      if (job.output) this.showActions(job);
    }

    showProgress(job) {
      const p = job.progress;
      if (p && p.bytes_total > 0) {
        const pct = Math.floor((p.bytes_done / p.bytes_total) * 100);
        this.convBar.value = pct;
        const tensors = p.tensors_total > 0 ? ` · ${p.tensors_done} of ${p.tensors_total} tensors` : '';
        this.convText.textContent = `${p.phase || job.state} ${pct}%${tensors}`;
      } else {
        this.convBar.removeAttribute('value'); // indeterminate
        this.convText.textContent = job.state;
      }
    }

    showFacts(job) {
      const rows = [['Input SHA-256', job.input.sha256]];
      if (job.output) rows.push(['Output SHA-256', job.output.sha256]);
      this.facts.replaceChildren(...rows.flatMap(([k, v]) => [el('dt', { text: k }), el('dd', {}, el('code', { class: 'digest', text: v }))]));
      this.facts.hidden = false;
    }

    // jobURL is the URL of one of the job's resources: its link, from a server that gives links
    // (one links only what exists: '' then), else the path.
    jobURL(rel) {
      const links = this.job.links;
      if (links && rel !== 'manifest') return links[rel] || '';
      return `/v1/jobs/${encodeURIComponent(this.job.id)}${rel === 'self' ? '' : '/' + rel}`;
    }

    showActions(job) {
      const name = job.output.filename;
      const link = el('a', { class: 'button primary download', href: this.jobURL('output'), download: name,
        text: `Download ${name}` });
      link.addEventListener('click', (e) => {
        if (!token()) return; // the link itself streams the file
        e.preventDefault();
        download(link.href, name, this.status);
      });
      this.actions.replaceChildren(link, ` ${formatBytes(job.output.size)}`);
      this.actions.hidden = false;
    }

    // showError shows the job's error with the globals its report names as the reason.
    showError() {
      const err = this.job.error;
      const title = err.type === 'unsafe' ? 'Refused as unsafe' : `Failed: ${err.type}`;
      this.showRefusal(title, err.detail, this.offenders || []);
    }

    showRefusal(title, detail, offenders) {
      const list = offenders.length ? el('ul', { class: 'offenders' }, ...offenders.map((g) =>
        el('li', {}, code(`${g.module}.${g.name}`), ` ${g.class}, in ${g.entry} at byte ${g.offset}`))) : null;
      this.refusal.replaceChildren(el('p', { class: 'refusal-title', text: title }),
        el('p', { class: 'problem-detail', text: detail }));
      if (list) this.refusal.append(list);
      this.refusal.hidden = false;
    }

    // showReport renders a scan report or manifest (the manifest schema; see api/openapi.yaml).
    showReport(rep, url) {
      const globals = rep.globals || [];
      const tensors = rep.tensors || [];
      const aliases = Object.entries(rep.aliases || {});
      const dropped = rep.dropped || [];
      this.offenders = globals.filter((g) => g.class === 'dangerous' || g.class === 'unknown');
      if (this.job.error) {
        this.showError();
      } else if (rep.verdict && rep.verdict !== 'safe') {
        // A scan-only job succeeds whatever the verdict: the report is where a refusal shows.
        this.showRefusal(`Verdict: ${rep.verdict}`, rep.error ? rep.error.detail : '', this.offenders);
      }
      const src = rep.source || {};
      const parts = [
        el('summary', {}, 'Scan report: ', badge(rep.verdict || 'unknown'),
          ` ${plural(tensors.length, 'tensor')}, ${plural(globals.length, 'global')}`),
        el('p', { class: 'meta', text: [src.container && `container ${src.container}`,
          src.pickle_protocol !== undefined && `pickle protocol ${src.pickle_protocol}`,
          rep.converter_version && `converter ${rep.converter_version}`].filter(Boolean).join(' · ') }),
      ];
      parts.push(table('Globals', [
        { title: 'Global', cell: (g) => code(`${g.module}.${g.name}`) },
        { title: 'Class', cell: (g) => el('span', { class: `class-${g.class}`, text: g.class }) },
        { title: 'Entry', cell: (g) => g.entry },
        { title: 'Byte offset', num: true, cell: (g) => String(g.offset) },
      ], globals, globals.length));
      parts.push(table('Tensors', [
        { title: 'Name', cell: (t) => code(t.name) },
        { title: 'dtype', cell: (t) => t.dtype },
        { title: 'Shape', cell: (t) => `[${(t.shape || []).join(', ')}]` },
        { title: 'Size', num: true, cell: (t) => formatBytes(t.bytes) },
      ], tensors, tensors.length));
      if (aliases.length) {
        parts.push(table('Aliases', [
          { title: 'Alias', cell: ([a]) => code(a) },
          { title: 'Written as', cell: ([, kept]) => code(kept) },
        ], aliases, aliases.length));
      }
      if (dropped.length) {
        parts.push(table('Dropped entries', [
          { title: 'Path', cell: (d) => code(d.path) },
          { title: 'Type', cell: (d) => d.type },
        ], dropped, dropped.length + (rep.dropped_more || 0)));
      }
      const json = el('button', { type: 'button', text: 'Save the report as JSON' });
      json.addEventListener('click', () => download(url, `${this.name}.report.json`, this.status));
      parts.push(el('p', {}, json));
      this.report.replaceChildren(...parts);
      this.report.open = rep.verdict !== 'safe';
      this.report.hidden = false;
    }

    // loadReport fetches the report of a finished job: its report link (or path), or, from a
    // server without reports, a succeeded job's manifest; a failed job then keeps its error.
    async loadReport() {
      let url = this.jobURL('report');
      try {
        if (!url) throw new Error('no report');
        this.showReport((await getJSON(url)).body, url);
      } catch (e) {
        if (this.job.state !== 'succeeded') return;
        url = this.jobURL('manifest');
        try {
          this.showReport((await getJSON(url)).body, url);
        } catch (e2) {
          this.status.textContent = `Could not load the manifest: ${e2.message}`;
        }
      }
    }

    // track polls the job until it is finished, then shows its report.
    async track() {
      for (;;) {
        let res;
        try {
          res = await getJSON(this.jobURL('self'));
        } catch (e) {
          this.status.textContent = `Could not get the job: ${e.message}`;
          if (e.status === 401 || e.status === 404) return;
          await wait(3000);
          continue;
        }
        this.status.textContent = '';
        this.update(res.body);
        if (TERMINAL.has(res.body.state)) break;
        const after = Number(res.resp.headers.get('Retry-After')) || 1;
        await wait(Math.min(Math.max(after, 1), 10) * 1000);
      }
      await this.loadReport();
      loadRecent(false);
    }
  }

  // xhrUpload sends one file as the raw body; XMLHttpRequest, unlike fetch, reports upload
  // progress.
  function xhrUpload(card, file, query) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open('POST', '/v1/jobs?' + query);
      for (const [k, v] of Object.entries(headers({ 'Content-Type': 'application/octet-stream' }))) xhr.setRequestHeader(k, v);
      xhr.upload.addEventListener('progress', (e) => card.uploading(e.loaded, e.lengthComputable ? e.total : file.size));
      xhr.addEventListener('load', () => resolve(xhr));
      xhr.addEventListener('error', () => reject(new Error('the connection failed')));
      xhr.addEventListener('abort', () => reject(new Error('the upload was aborted')));
      xhr.send(file);
    });
  }

  let active = 0;
  const queued = [];

  // withSlot runs fn when fewer than MAX_PARALLEL_UPLOADS uploads are running.
  function withSlot(fn) {
    return new Promise((resolve, reject) => {
      const run = () => {
        active++;
        fn().then(resolve, reject).finally(() => {
          active--;
          const next = queued.shift();
          if (next) next();
        });
      };
      if (active < MAX_PARALLEL_UPLOADS) run(); else queued.push(run);
    });
  }

  async function upload(card, file, query) {
    for (let attempt = 1; ; attempt++) {
      const xhr = await xhrUpload(card, file, query);
      if (xhr.status === 202) return JSON.parse(xhr.responseText);
      const detail = problemDetail(xhr.responseText) || `${xhr.status} ${xhr.statusText}`;
      if ((xhr.status === 429 || xhr.status === 503) && attempt < MAX_UPLOAD_RETRIES) {
        const after = Number(xhr.getResponseHeader('Retry-After')) || 5;
        card.uploadText.textContent = `server busy, retrying in ${after} s`;
        await wait(after * 1000);
        continue;
      }
      throw new HTTPError(xhr.status, detail);
    }
  }

  async function submitFile(file, query) {
    query.set('filename', file.name);
    const q = query.toString();
    const card = new Card(file.name, file.size, true);
    let job;
    try {
      job = await withSlot(() => upload(card, file, q));
    } catch (e) {
      card.uploadFailed(e.message);
      return;
    }
    card.update(job);
    await card.track();
  }

  function uploadQuery(scan) {
    const q = new URLSearchParams();
    const sel = $('select').value.trim();
    if (sel) q.set('select', sel);
    if (scan) q.set('mode', 'scan');
    for (const g of $('allow').value.split(/\s+/)) if (g) q.append('allow_global', g);
    return q;
  }

  function setupUpload() {
    const form = $('upload');
    const input = $('file');
    const drop = $('drop');
    input.multiple = true;
    drop.querySelector('.drop-title').textContent = 'Choose checkpoints';
    $('drop-hint').hidden = false;
    $('options').hidden = false;
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      const files = [...input.files];
      const scan = e.submitter && e.submitter.id === 'scan-btn';
      input.value = '';
      announce(`Uploading ${plural(files.length, 'file')}`);
      for (const f of files) submitFile(f, uploadQuery(scan));
    });
    // Dropping files chooses them, as the file picker does; the buttons then start the work.
    drop.addEventListener('dragover', (e) => {
      e.preventDefault();
      drop.classList.add('over');
    });
    drop.addEventListener('dragleave', () => drop.classList.remove('over'));
    drop.addEventListener('drop', (e) => {
      e.preventDefault();
      drop.classList.remove('over');
      if (!e.dataTransfer || !e.dataTransfer.files.length) return;
      input.files = e.dataTransfer.files;
      const n = input.files.length;
      announce(`${plural(n, 'file')} chosen: press Convert or Scan only`);
      $('convert-btn').focus();
    });
  }

  let nextPage = '';

  // loadRecent lists the tenant's jobs, newest first, filtered by state; more appends the next
  // page.
  async function loadRecent(more) {
    const status = $('recent-status');
    const body = $('recent').tBodies[0];
    const q = new URLSearchParams({ page_size: '20' });
    const state = $('state-filter').value;
    if (state) q.set('state', state);
    if (more && nextPage) q.set('page_token', nextPage);
    try {
      const { body: page } = await getJSON('/v1/jobs?' + q);
      if (!more) body.replaceChildren();
      for (const job of page.jobs) body.append(recentRow(job));
      nextPage = page.next_page_token || '';
      $('recent-more').hidden = !nextPage;
      const n = body.rows.length;
      $('recent').hidden = n === 0;
      status.textContent = n ? `${plural(n, 'job')}${state ? ' ' + state : ''}${nextPage ? ', more below' : ''}`
        : `No ${state || ''} jobs yet`.replace('  ', ' ');
    } catch (e) {
      body.replaceChildren();
      $('recent').hidden = true;
      $('recent-more').hidden = true;
      status.textContent = e.status === 401 ? 'Enter your token above to list your jobs.' : `Could not list jobs: ${e.message}`;
    }
  }

  function recentRow(job) {
    const show = el('button', { type: 'button', class: 'small', text: 'Show' });
    show.setAttribute('aria-label', `Show ${job.input.filename}`);
    show.addEventListener('click', () => {
      let card = cards.get(job.id);
      if (!card) {
        card = new Card(job.input.filename, job.input.size, false);
        card.update(job);
        card.track();
      }
      card.title.focus();
    });
    const created = new Date(job.created_at);
    return el('tr', {},
      el('td', {}, job.input.filename),
      el('td', {}, badge(job.state)),
      el('td', {}, el('time', { datetime: job.created_at, text: created.toLocaleString() })),
      el('td', { class: 'num', text: formatBytes(job.input.size) }),
      el('td', {}, show));
  }

  function setupRecent() {
    $('recent-section').hidden = false;
    $('recent-form').addEventListener('submit', (e) => {
      e.preventDefault();
      loadRecent(false);
    });
    $('state-filter').addEventListener('change', () => loadRecent(false));
    $('recent-more').addEventListener('click', () => loadRecent(true));
    loadRecent(false);
  }

  function setupToken() {
    const section = $('token-section');
    if (!section) return; // an open server needs no token
    section.hidden = false;
    const input = $('token');
    const state = $('token-state');
    input.value = token();
    state.textContent = token() ? 'A token is set for this tab.' : '';
    $('token-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const t = input.value.trim();
      if (t) sessionStorage.setItem(TOKEN_KEY, t); else sessionStorage.removeItem(TOKEN_KEY);
      state.textContent = t ? 'Token set for this tab.' : 'No token set.';
      loadRecent(false);
    });
    $('token-forget').addEventListener('click', () => {
      sessionStorage.removeItem(TOKEN_KEY);
      input.value = '';
      state.textContent = 'Token forgotten.';
      loadRecent(false);
    });
  }

  setupToken();
  setupUpload();
  setupRecent();
})();
