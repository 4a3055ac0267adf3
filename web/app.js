// sae serve's page: every piece of model text goes into the DOM with
// textContent (never innerHTML), so tokens like "<script>" stay text.
'use strict';

const token = new URLSearchParams(location.hash.slice(1)).get('token');
const $ = (id) => document.getElementById(id);
let info = null;

async function api(path, body) {
  const opts = { headers: {} };
  if (token) opts.headers['Authorization'] = 'Bearer ' + token;
  if (body !== undefined) {
    opts.method = 'POST';
    opts.headers['Content-Type'] = 'application/json';
    opts.body = JSON.stringify(body);
  }
  const res = await fetch(path, opts);
  const data = await res.json();
  if (!res.ok) throw new Error((data.field ? data.field + ': ' : '') + data.error);
  return data;
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c != null) e.append(c);  // strings become text nodes
  return e;
}
const svgEl = (tag, attrs) => {
  const e = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
};

function heat(v) {  // 0..1 -> background colour
  const x = Math.max(0, Math.min(1, v));
  return x <= 0 ? 'transparent' : `rgba(230, 90, 20, ${0.12 + 0.78 * x})`;
}

function tokenSpan(piece, value, title) {
  const s = el('span', { class: 'tok', text: piece === null ? '' : piece });
  s.style.background = heat(value);
  if (title) s.title = title;
  return s;
}

function fmt(x) { return Math.abs(x) >= 100 || x === 0 ? x.toFixed(0) : x.toPrecision(3); }

function latentLink(j) {
  return el('a', { class: 'latent', text: '#' + j, onclick: () => openFeature(j) });
}

// ---- tabs ----
for (const b of document.querySelectorAll('.tab')) {
  b.addEventListener('click', () => showTab(b.dataset.tab));
}
function showTab(name) {
  for (const b of document.querySelectorAll('.tab')) b.classList.toggle('active', b.dataset.tab === name);
  for (const p of document.querySelectorAll('.pane')) p.classList.toggle('active', p.id === 'pane-' + name);
}

// ---- feature browser ----
function contextRow(ctx, max) {
  const row = el('div', { class: 'ctx' }, el('span', { class: 'act', text: fmt(ctx.act) }));
  ctx.tokens.forEach((t, i) => {
    if (t === null) return;
    const s = tokenSpan(t, max > 0 ? ctx.acts[i] / max : 0, 'activation ' + fmt(ctx.acts[i]));
    if (i === ctx.center) s.classList.add('center');
    row.append(s);
  });
  return row;
}

function histogram(d) {
  const bins = [];
  d.hist.forEach((c, i) => { if (c > 0) bins.push(i); });
  const W = 520, H = 150, pad = 30;
  const svg = svgEl('svg', { width: W, height: H + 30, id: 'hist' });
  if (!bins.length) { svg.append(svgEl('text', { x: 10, y: 20 })); svg.lastChild.textContent = 'never fired'; return svg; }
  const lo = bins[0], hi = bins[bins.length - 1], n = hi - lo + 1;
  const peak = Math.max(...d.hist);
  const bw = (W - pad) / n;
  for (let i = lo; i <= hi; i++) {
    const h = (H - 10) * d.hist[i] / peak;
    const r = svgEl('rect', { x: pad + (i - lo) * bw, y: H - h, width: Math.max(1, bw - 1), height: h, fill: '#e65a14' });
    const t = svgEl('title'); t.textContent = `${fmt(d.hist_edges[i])}–${fmt(d.hist_edges[i + 1])}: ${d.hist[i]} tokens`;
    r.append(t);
    svg.append(r);
  }
  const axis = (x, label) => { const t = svgEl('text', { x, y: H + 14 }); t.textContent = label; svg.append(t); };
  axis(pad, fmt(d.hist_edges[lo]));
  axis(W - 40, fmt(d.hist_edges[hi + 1]));
  axis(W / 2 - 90, 'activation (log-spaced bins)');
  const y = svgEl('text', { x: 0, y: 12 }); y.textContent = peak + ' tokens'; svg.append(y);
  return svg;
}

function logitTable(title, rows) {
  const t = el('table', {}, el('tr', {}, el('th', { text: title }), el('th', { text: 'W_U·W_dec' })));
  for (const r of rows) t.append(el('tr', {}, el('td', {}, el('code', { text: JSON.stringify(r.piece) })), el('td', { text: r.value.toFixed(3) })));
  return t;
}

async function openFeature(j) {
  showTab('features');
  $('feature-query').value = String(j);
  const box = $('dashboard');
  box.replaceChildren(el('p', { class: 'muted', text: 'loading…' }));
  try {
    const d = await api('/api/feature?latent=' + encodeURIComponent(j));
    const stats = el('div', { class: 'stats' },
      el('span', { text: `density ${(100 * d.density).toPrecision(3)}% (${d.count} of ${d.tokens} tokens)` }),
      el('span', { text: `mean ${fmt(d.mean)}` }), el('span', { text: `max ${fmt(d.max)}` }));
    const cof = el('div', {}, 'co-fires with: ');
    for (const c of d.cofire) cof.append(latentLink(c.latent), ` (r=${c.corr.toFixed(2)})  `);
    const top = el('div', { class: 'card' }, el('h3', { text: `top ${d.top.length} contexts` }));
    for (const c of d.top) top.append(contextRow(c, d.max));
    const ivs = el('div', { class: 'card' }, el('h3', { text: 'activation intervals (quantile groups), sampled contexts' }));
    for (const iv of d.intervals) {
      ivs.append(el('div', { class: 'muted', text: `[${fmt(iv.lo)}, ${fmt(iv.hi)}]: ${iv.count} tokens` }));
      for (const c of iv.samples) ivs.append(contextRow(c, d.max));
    }
    box.replaceChildren(el('div', { class: 'card', id: 'dashboard-card' }, el('h2', { text: 'latent #' + d.latent }), stats,
      el('div', { class: 'grid2' }, histogram(d),
        el('div', { class: 'grid2' }, logitTable('promoted', d.logit_top), logitTable('suppressed', d.logit_bottom))),
      cof), top, ivs);
  } catch (e) {
    box.replaceChildren(el('p', { class: 'error', text: e.message }));
  }
}

$('feature-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const q = $('feature-query').value.trim();
  const out = $('feature-results');
  if (/^\d+$/.test(q)) { out.replaceChildren(); return openFeature(Number(q)); }
  try {
    const r = await api('/api/search?q=' + encodeURIComponent(q));
    const t = el('div', { class: 'card' }, el('h3', { text: `${r.results.length} latents with "${q}" in their top contexts` }));
    for (const h of r.results) {
      const row = el('div', {}, latentLink(h.latent), ` ${h.matching_contexts} contexts, max ${fmt(h.max)} `);
      if (h.top) row.append(contextRow(h.top, h.max));
      t.append(row);
    }
    out.replaceChildren(t);
  } catch (e) { out.replaceChildren(el('p', { class: 'error', text: e.message })); }
});

// ---- live activations ----
let liveTimer = null, liveSeq = 0, liveData = null;
function renderLive() {
  const box = $('live-tokens');
  box.replaceChildren();
  if (!liveData) return;
  const max = liveData.max > 0 ? liveData.max : Math.max(1e-9, ...liveData.acts);
  liveData.tokens.forEach((t, i) => {
    const s = tokenSpan(t.piece, liveData.acts[i] / max, `#${liveData.latent}: ${fmt(liveData.acts[i])}`);
    s.dataset.index = i;
    const show = () => {
      for (const o of box.querySelectorAll('.sel')) o.classList.remove('sel');
      s.classList.add('sel');
      const d = el('div', { class: 'card' }, el('b', { text: JSON.stringify(t.piece) }), ' top latents: ');
      const tb = el('table', { id: 'live-top' });
      for (const [l, a] of t.top) {
        tb.append(el('tr', {}, el('td', {}, el('a', { class: 'latent', text: '#' + l, onclick: () => { $('live-latent').value = l; refreshLive(); } })),
          el('td', { text: fmt(a) }), el('td', {}, el('a', { class: 'latent', text: 'dashboard', onclick: () => openFeature(l) }))));
      }
      d.append(tb);
      $('live-detail').replaceChildren(d);
    };
    s.addEventListener('mouseenter', show);
    s.addEventListener('click', show);
    box.append(s);
  });
}
async function refreshLive() {
  const text = $('live-text').value;
  const seq = ++liveSeq;
  if (!text.trim()) { liveData = null; renderLive(); return; }
  try {
    const r = await api('/api/activations', { text, latent: Number($('live-latent').value) });
    if (seq === liveSeq) { liveData = r; renderLive(); }
  } catch (e) { if (seq === liveSeq) $('live-tokens').replaceChildren(el('span', { class: 'error', text: e.message })); }
}
$('live-text').addEventListener('input', () => { clearTimeout(liveTimer); liveTimer = setTimeout(refreshLive, 120); });
$('live-latent').addEventListener('change', refreshLive);

// ---- steering ----
function addTerm(latent, scale) {
  const row = el('div', { class: 'term' },
    el('label', {}, 'latent ', el('input', { type: 'number', class: 'term-latent', value: latent, min: 0 })),
    el('label', {}, 'scale ', el('input', { type: 'number', class: 'term-scale', value: scale, step: 0.5 })));
  row.append(el('button', { type: 'button', text: '×', onclick: () => row.remove() }));
  $('gen-terms').append(row);
}
addTerm(0, 4);
$('gen-add-term').addEventListener('click', () => addTerm(0, 1));
function genText(side) {
  const box = el('div');
  side.pieces.forEach((p, i) => box.append(el('span', { class: i + 1 < side.prompt_tokens ? 'prompt' : '', text: p })));
  return box;
}
$('gen-run').addEventListener('click', async () => {
  const steer = [...document.querySelectorAll('.term')].map((r) => ({
    latent: Number(r.querySelector('.term-latent').value), scale: Number(r.querySelector('.term-scale').value) }));
  $('gen-status').textContent = 'generating…';
  try {
    const r = await api('/api/generate', {
      prompt: $('gen-prompt').value, steps: Number($('gen-steps').value), seed: Number($('gen-seed').value),
      temperature: Number($('gen-temp').value), mode: $('gen-mode').value, on: $('gen-on').value,
      units: $('gen-units').value, steer });
    $('gen-unsteered').replaceChildren(genText(r.unsteered));
    $('gen-steered').replaceChildren(genText(r.steered));
    $('gen-status').textContent = `seed ${r.seed}, ${r.mode} on ${r.on} positions`;
  } catch (e) { $('gen-status').replaceChildren(el('span', { class: 'error', text: e.message })); }
});

// ---- concepts ----
$('concept-run').addEventListener('click', async () => {
  const lines = (id) => $(id).value.split('\n').map((s) => s.trim()).filter((s) => s);
  $('concept-status').textContent = 'searching…';
  try {
    const r = await api('/api/concepts', { texts: lines('concept-texts'), contrast: lines('concept-contrast'),
      threshold: Number($('concept-threshold').value), top: Number($('concept-top').value) });
    $('concept-status').textContent = `${r.texts.length} texts against ${r.contrast_count} contrast texts (${r.contrast_source}); normalised by ${r.normaliser} maxima`;
    const out = el('div');
    const table = el('table', { id: 'concept-table' }, el('tr', {}, ...['latent', 'score', 'f texts', 'f contrast', 'mean norm.'].map((h) => el('th', { text: h }))));
    for (const h of r.hits) {
      table.append(el('tr', {}, el('td', {}, latentLink(h.latent)), el('td', { text: h.score.toFixed(3) }),
        el('td', { text: h.f_texts.toFixed(2) }), el('td', { text: h.f_contrast.toFixed(2) }), el('td', { text: h.mean_norm.toFixed(3) })));
    }
    out.append(table);
    for (const h of r.hits.slice(0, 5)) {
      const card = el('div', { class: 'card' }, el('b', {}, 'latent ', latentLink(h.latent)), ` score ${h.score.toFixed(3)}`);
      h.heat.forEach((row, t) => {
        const line = el('div', { class: 'heat' });
        r.texts[t].forEach((p, i) => line.append(tokenSpan(p, row[i], fmt(row[i]))));
        card.append(line);
      });
      out.append(card);
    }
    $('concept-results').replaceChildren(out);
  } catch (e) { $('concept-status').replaceChildren(el('span', { class: 'error', text: e.message })); }
});

api('/api/info').then((i) => {
  info = i;
  $('info').textContent = `${i.model} · SAE ${i.sae} · layer ${i.layer} ${i.hook} · ${i.latents} latents, k ${i.k}` +
    (i.features ? ` · dashboards over ${i.feature_tokens} tokens` : ' · no dashboards');
  $('live-latent').max = i.latents - 1;
}).catch((e) => { $('info').textContent = 'API: ' + e.message; });
