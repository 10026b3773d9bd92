// Bunker's replication dashboard. Read-only: every figure comes from the same /v1/ endpoints a
// script would use (sys/seal-status, sys/leader, sys/replication/dr/status). Data is put into
// the page only through textContent and setAttribute, never as HTML.
'use strict';

(function () {
  const TOKEN_KEY = 'bunker.token';
  const POLL_MS = 3000;
  const WINDOW_MS = 15 * 60 * 1000;
  const COLORS = ['#1a73e8', '#e8710a', '#188038', '#a142f4', '#d93025', '#12b5cb'];

  // name -> [{t, v}], the lag points of the last 15 minutes, kept in memory only.
  let series = new Map();
  let seriesMode = '';
  let timer = null;

  const $ = (id) => document.getElementById(id);

  // A token passed as /ui/#token=... is taken once, kept in sessionStorage and removed from
  // the address bar (and so from history).
  function takeTokenFromFragment() {
    const hash = window.location.hash;
    if (hash.length < 2) return;
    const params = new URLSearchParams(hash.slice(1));
    const token = params.get('token');
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    history.replaceState(null, '', window.location.pathname + window.location.search);
  }

  async function api(path) {
    const token = sessionStorage.getItem(TOKEN_KEY) || '';
    const resp = await fetch('/v1/' + path, {
      headers: { 'X-Vault-Token': token },
      cache: 'no-store',
      credentials: 'omit',
    });
    let body = null;
    try {
      body = await resp.json();
    } catch (e) {
      body = null;
    }
    return { status: resp.status, body: body };
  }

  function apiError(path, r) {
    const errs = r.body && Array.isArray(r.body.errors) ? r.body.errors.join('; ') : '';
    return path + ': HTTP ' + r.status + (errs ? ' (' + errs + ')' : '');
  }

  function text(v) {
    if (v === undefined || v === null || v === '') return '—';
    if (typeof v === 'object') return JSON.stringify(v);
    return String(v);
  }

  // Replace the content of a <dl> with rows [label, field, value, cls?].
  function fillList(id, rows) {
    const dl = $(id);
    dl.replaceChildren();
    for (const [label, field, value, cls] of rows) {
      const dt = document.createElement('dt');
      dt.textContent = label;
      const dd = document.createElement('dd');
      dd.setAttribute('data-field', field);
      dd.textContent = text(value);
      if (cls) dd.className = cls;
      dl.append(dt, dd);
    }
  }

  function good(ok) {
    return ok ? 'ok' : 'bad';
  }

  function renderSeal(seal) {
    fillList('seal', [
      ['Status', 'sealed', seal.sealed ? 'sealed' : 'unsealed', good(!seal.sealed)],
      ['Initialized', 'initialized', seal.initialized ? 'yes' : 'no'],
      ['Seal type', 'type', seal.type],
      ['Threshold / shares', 'threshold', seal.t + ' of ' + seal.n],
      ['Unseal progress', 'progress', seal.progress],
      ['Version', 'version', seal.version],
      ['Cluster name', 'cluster_name', seal.cluster_name],
      ['Storage', 'storage_type', seal.storage_type],
    ]);
  }

  function renderLeader(r) {
    if (r.status !== 200 || !r.body) {
      fillList('ha', [['Status', 'ha_error', apiError('sys/leader', r), 'bad']]);
      return;
    }
    const l = r.body;
    let role = 'standalone';
    if (l.ha_enabled) role = l.is_self ? 'active' : 'standby';
    fillList('ha', [
      ['HA enabled', 'ha_enabled', l.ha_enabled ? 'yes' : 'no'],
      ['This node', 'ha_role', role, role === 'standby' ? 'warn' : 'ok'],
      ['Leader address', 'leader_address', l.leader_address],
      ['Leader cluster address', 'leader_cluster_address', l.leader_cluster_address],
      ['Active since', 'active_time', l.active_time],
    ]);
  }

  function renderDr(dr) {
    const rows = [
      ['Mode', 'mode', dr.mode],
      ['Cluster id', 'cluster_id', dr.cluster_id],
      ['Generation', 'generation', dr.generation],
      ['State', 'state', dr.state, dr.state === 'running' || dr.state === 'stream-wals' ? 'ok' : 'warn'],
    ];
    if (dr.mode === 'primary') {
      rows.push(['Last WAL', 'last_wal', dr.last_wal]);
      rows.push(['Known secondaries', 'known_secondaries', (dr.known_secondaries || []).join(', ')]);
    } else if (dr.mode === 'secondary') {
      rows.push(['Secondary id', 'secondary_id', dr.secondary_id]);
      rows.push(['Last remote WAL', 'last_remote_wal', dr.last_remote_wal]);
    }
    if (dr.mode !== 'disabled') {
      rows.push(['Merkle root', 'merkle_root', dr.merkle_root]);
      rows.push(['Merkle root at WAL', 'merkle_root_wal', dr.merkle_root_wal]);
    }
    fillList('dr', rows);
  }

  function cell(tr, field, value, cls) {
    const td = document.createElement('td');
    td.setAttribute('data-field', field);
    td.textContent = text(value);
    if (cls) td.className = cls;
    tr.append(td);
  }

  function renderSecondaries(dr) {
    const list = Array.isArray(dr.secondaries) ? dr.secondaries : [];
    const tbody = $('secondaries').tBodies[0];
    tbody.replaceChildren();
    for (const s of list) {
      const tr = document.createElement('tr');
      tr.setAttribute('data-secondary', String(s.node_id));
      cell(tr, 'node_id', s.node_id);
      cell(tr, 'connection_status', s.connection_status, good(s.connection_status === 'connected'));
      cell(tr, 'last_acked_wal', s.last_acked_wal);
      cell(tr, 'lag_wal_entries', s.lag_wal_entries);
      cell(tr, 'last_heartbeat', s.last_heartbeat);
      cell(tr, 'api_address', s.api_address);
      tbody.append(tr);
    }
    $('no-secondaries').hidden = list.length > 0;
  }

  function renderSecondarySide(dr) {
    const primary = Array.isArray(dr.primaries) && dr.primaries.length ? dr.primaries[0] : {};
    fillList('primary', [
      ['Primary cluster address', 'primary_cluster_addr', dr.primary_cluster_addr],
      ['Connection', 'connection_state', dr.connection_state, good(dr.connection_state === 'ready')],
      ['Last heartbeat', 'last_heartbeat', primary.last_heartbeat],
      ['Last primary WAL', 'last_primary_wal', dr.last_primary_wal],
      ['Last remote WAL', 'last_remote_wal', dr.last_remote_wal],
      ['Lag', 'lag_ms', dr.lag_ms + ' ms'],
      ['Lag (WAL entries)', 'lag_wal_entries', dr.lag_wal_entries],
      ['Consistent', 'consistent', dr.consistent ? 'yes' : 'no', good(dr.consistent)],
      ['Last error', 'last_error', dr.last_error, dr.last_error ? 'bad' : ''],
    ]);
    const sync = dr.sync || {};
    const last = sync.last_merkle_sync || {};
    fillList('sync', [
      ['Merkle syncs', 'merkle_syncs', sync.merkle_syncs],
      ['Last sync: buckets differing', 'last_buckets_differing', last.buckets_differing],
      ['Last sync: keys fetched', 'last_keys_fetched', last.keys_fetched],
      ['Last sync: keys deleted', 'last_keys_deleted', last.keys_deleted],
      ['Last sync: bytes fetched', 'last_bytes_fetched', last.bytes_fetched],
      ['Keys fetched, all syncs', 'merkle_keys_fetched_total', sync.merkle_keys_fetched_total],
      ['WAL entries streamed', 'wal_entries_streamed', sync.wal_entries_streamed],
      ['WAL bytes streamed', 'wal_bytes_streamed', sync.wal_bytes_streamed],
    ]);
  }

  // Lag points: per secondary in WAL entries on a primary, in ms on a secondary.
  function record(dr, now) {
    if (dr.mode !== seriesMode) {
      series = new Map();
      seriesMode = dr.mode;
    }
    const add = (name, v) => {
      const n = Number(v);
      if (!Number.isFinite(n)) return;
      if (!series.has(name)) series.set(name, []);
      series.get(name).push({ t: now, v: n });
    };
    if (dr.mode === 'primary') {
      for (const s of dr.secondaries || []) add(String(s.node_id), s.lag_wal_entries);
    } else if (dr.mode === 'secondary') {
      add('lag_ms', dr.lag_ms);
    }
    for (const [name, points] of series) {
      while (points.length && points[0].t < now - WINDOW_MS) points.shift();
      if (!points.length) series.delete(name);
    }
  }

  function drawChart(now) {
    const canvas = $('chart');
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 1200;
    const height = canvas.clientHeight || 260;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext('2d');
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const left = 56, right = 12, top = 10, bottom = 24;
    const plotW = width - left - right, plotH = height - top - bottom;
    let max = 1;
    for (const points of series.values()) for (const p of points) max = Math.max(max, p.v);
    // Four grid lines at whole numbers.
    max = Math.max(4, Math.ceil((max * 1.1) / 4) * 4);
    ctx.font = '11px system-ui, sans-serif';
    ctx.fillStyle = '#667085';
    ctx.strokeStyle = '#d9dde3';
    ctx.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const y = top + plotH - (plotH * i) / 4;
      ctx.beginPath();
      ctx.moveTo(left, y);
      ctx.lineTo(left + plotW, y);
      ctx.stroke();
      ctx.textAlign = 'right';
      ctx.fillText(String(Math.round((max * i) / 4)), left - 6, y + 4);
    }
    ctx.textAlign = 'center';
    for (let m = 15; m >= 0; m -= 5) {
      const x = left + plotW - (plotW * m * 60000) / WINDOW_MS;
      ctx.fillText(m === 0 ? 'now' : '-' + m + ' min', x, height - 6);
    }
    const legend = $('chart-legend');
    legend.replaceChildren();
    let i = 0;
    for (const [name, points] of series) {
      const color = COLORS[i % COLORS.length];
      ctx.strokeStyle = color;
      ctx.lineWidth = 2;
      ctx.beginPath();
      points.forEach((p, k) => {
        const x = left + plotW - (plotW * (now - p.t)) / WINDOW_MS;
        const y = top + plotH - (plotH * p.v) / max;
        if (k === 0) ctx.moveTo(x, y);
        else ctx.lineTo(x, y);
      });
      ctx.stroke();
      // The latest point as a dot, so a single sample shows too.
      const lastPoint = points[points.length - 1];
      ctx.fillStyle = color;
      ctx.beginPath();
      ctx.arc(left + plotW - (plotW * (now - lastPoint.t)) / WINDOW_MS,
        top + plotH - (plotH * lastPoint.v) / max, 3, 0, 2 * Math.PI);
      ctx.fill();
      const swatch = document.createElement('span');
      swatch.className = 'swatch c' + (i % COLORS.length);
      const label = document.createElement('span');
      label.textContent = name;
      legend.append(swatch, label);
      i += 1;
    }
    $('chart-unit').textContent = seriesMode === 'primary' ? '(WAL entries behind, per secondary)'
      : seriesMode === 'secondary' ? '(ms behind the primary)' : '';
  }

  function showError(message) {
    const el = $('error');
    el.textContent = message;
    el.hidden = !message;
  }

  async function refresh() {
    const path = 'sys/replication/dr/status';
    try {
      const [seal, leader, dr] = await Promise.all([
        api('sys/seal-status'),
        api('sys/leader'),
        api(path),
      ]);
      if (dr.status === 403) {
        signOut('Permission denied: sign in with a token that may read ' + path + '.');
        return;
      }
      if (seal.body) renderSeal(seal.body);
      renderLeader(leader);
      if (dr.status !== 200 || !dr.body || !dr.body.data) {
        showError(apiError(path, dr));
        return;
      }
      const data = dr.body.data;
      const now = Date.now();
      renderDr(data);
      $('secondaries-card').hidden = data.mode !== 'primary';
      $('secondary-cards').hidden = data.mode !== 'secondary';
      if (data.mode === 'primary') renderSecondaries(data);
      if (data.mode === 'secondary') renderSecondarySide(data);
      record(data, now);
      drawChart(now);
      showError('');
      $('updated').textContent = 'updated ' + new Date(now).toLocaleTimeString();
    } catch (e) {
      showError('Cannot reach the server: ' + e);
    }
  }

  function signIn(token) {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    if (!sessionStorage.getItem(TOKEN_KEY)) {
      $('sign-in').hidden = false;
      $('dashboard').hidden = true;
      $('sign-out').hidden = true;
      return;
    }
    $('sign-in').hidden = true;
    $('dashboard').hidden = false;
    $('sign-out').hidden = false;
    refresh();
    if (timer === null) timer = window.setInterval(refresh, POLL_MS);
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    if (timer !== null) window.clearInterval(timer);
    timer = null;
    series = new Map();
    $('updated').textContent = '';
    showError(message || '');
    signIn('');
  }

  document.addEventListener('DOMContentLoaded', () => {
    takeTokenFromFragment();
    $('sign-in').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const input = $('token');
      const token = input.value.trim();
      input.value = '';
      signIn(token);
    });
    $('sign-out').addEventListener('click', () => signOut(''));
    signIn('');
  });
})();
