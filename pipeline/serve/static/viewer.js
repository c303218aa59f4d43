// Viewer: OpenSeadragon over the server's tile pyramid, boxes as overlays, the Grad-CAM as a second layer,
// window/level (new tile URLs), the shared threshold, and the verdict form (only changed fields are sent, so two
// tabs saving different boxes never undo each other).
const main = document.querySelector('main.viewer');
const run = main.dataset.run, imageId = main.dataset.id;
const $ = id => document.getElementById(id);
let info = null, viewer = null, heatItem = null;
const win = {c: 0.5, w: 1.0};
let pending = {boxes: {}, image: {}};

function tileSource() {
  return {
    width: info.width, height: info.height, tileSize: info.tile_size, tileOverlap: 0,
    minLevel: 0, maxLevel: info.max_level,
    getTileUrl: (level, x, y) => `/api/tiles/${run}/${imageId}/${level}/${x}_${y}.jpg?c=${win.c}&w=${win.w}`,
  };
}

// The box that scores the image is red when the image is called malignant at the slider's threshold; the other
// findings (shown by their own, lesion-level operating point) are dashed and never coloured by that call.
function boxClass(lesion) {
  return lesion.scores_image && decisionFor(info.value) === 'malignant' ? 'pos' : 'neg';
}

function boxKind(lesion) { return lesion.scores_image ? 'scoring' : 'finding-only'; }

// A box's numbers: its calibrated P(malignant lesion) and P(true lesion) when the models have those maps, else
// the crop classifier's malignancy and the detector's score.
function boxNumbers(l) {
  if (l.p_malignant !== null && l.p_malignant !== undefined) {
    return `P(malignant) ${l.p_malignant.toFixed(2)}` +
      (l.p_lesion !== null ? ` <small>P(lesion) ${l.p_lesion.toFixed(2)}</small>` : '');
  }
  return `${l.malignancy.toFixed(2)} <small>det ${l.detector_score.toFixed(2)}</small>`;
}

function drawBoxes() {
  viewer.clearOverlays();
  if (!$('show-boxes').checked) return;
  const item = viewer.world.getItemAt(0);
  info.lesions.forEach((l, i) => {
    const [x1, y1, x2, y2] = l.box;
    const el = document.createElement('div');
    el.className = `box ${boxKind(l)} ${boxClass(l)}` + (i % 2 ? ' below' : '');  // alternate: nested stay legible
    el.id = 'box-' + i;
    el.innerHTML = `<span>${i + 1}: ${boxNumbers(l)}</span>`;
    el.addEventListener('click', () => document.getElementById('verdict-box-' + i).scrollIntoView());
    viewer.addOverlay({element: el, location: item.imageToViewportRectangle(x1, y1, x2 - x1, y2 - y1)});
  });
}

// Zoom to a box with `margin` times its size around it (used by the README screenshot and the box list).
function zoomToBox(i, margin = 3) {
  const [x1, y1, x2, y2] = info.lesions[i].box;
  const w = (x2 - x1) * margin, h = (y2 - y1) * margin;
  const rect = viewer.world.getItemAt(0).imageToViewportRectangle((x1 + x2 - w) / 2, (y1 + y2 - h) / 2, w, h);
  viewer.viewport.fitBounds(rect, true);
}

function summarize() {
  const d = decisionFor(info.value);
  const number = info.probability !== null
    ? `P(malignant) <b>${info.probability.toFixed(3)}</b> <small>(score ${info.score.toFixed(4)})</small>`
    : `score <b>${info.score.toFixed(4)}</b>`;
  const scoring = info.lesions.filter(l => l.scores_image).length;
  $('summary').innerHTML = `${number} &middot; at threshold ${window.mammoFormat(window.mammoThreshold())}: ` +
    `<b class="${d === 'malignant' ? 'pos' : 'neg'}" id="decision">${d}</b>` +
    ` &middot; ${info.lesions.length} box${info.lesions.length === 1 ? '' : 'es'} &middot; ` +
    `${info.width} x ${info.height} px` +
    (info.threshold_source ? `<br><small>threshold ${info.threshold_source}</small>` : '') +
    (['film', 'digital'].includes(info.domain) ? `<br><small id="domain">treated as ${info.domain} ` +
      `(${info.domain_source === 'setting' ? 'by a setting' : 'by its DICOM header'})</small>` : '') +
    (info.lesions.length > scoring ? '<br><small class="legend"><span class="solid"></span> scores the image ' +
      '<span class="dashed"></span> other finding</small>' : '');
  document.querySelectorAll('.box').forEach((el, i) => {
    el.classList.toggle('pos', boxClass(info.lesions[i]) === 'pos');
    el.classList.toggle('neg', boxClass(info.lesions[i]) === 'neg');
  });
}

function setHeat() {
  if (heatItem) heatItem.setOpacity($('show-heatmap').checked ? parseFloat($('heat-opacity').value) : 0);
}

let windowTimer = null;
function setWindow() {
  win.c = parseFloat($('win-center').value);
  win.w = parseFloat($('win-width').value);
  clearTimeout(windowTimer);
  windowTimer = setTimeout(() => {
    viewer.addTiledImage({tileSource: tileSource(), index: 0, replace: true,
                          success: e => watchLoaded(e.item)});
  }, 150);
}

function watchLoaded(item) {
  delete document.body.dataset.tilesLoaded;
  item.addHandler('fully-loaded-change', e => {
    if (e.fullyLoaded) document.body.dataset.tilesLoaded = '1';
    else delete document.body.dataset.tilesLoaded;
  });
}

// ------------------------------------------------------------------------------------------------- verdicts
function radios(name, values, i) {
  return values.map(v => `<label><input type="radio" name="${name}-${i}" value="${v}" data-box="${i}" ` +
    `data-field="${name}"> ${v}</label>`).join(' ');
}

function buildVerdictForm() {
  $('boxes').innerHTML = info.lesions.length ? '' : '<p>no boxes on this image</p>';
  info.lesions.forEach((l, i) => {
    const div = document.createElement('div');
    div.className = 'box-verdict';
    div.id = 'verdict-box-' + i;
    div.innerHTML = `<b>box ${i + 1}</b> ${l.scores_image ? '(scores the image)' : '(finding)'} ` +
      `malignancy ${l.malignancy.toFixed(2)}, detector ${l.detector_score.toFixed(2)}` +
      (l.p_malignant !== null ? `, P(malignant) ${l.p_malignant.toFixed(2)}` : '') +
      (l.p_lesion !== null ? `, P(lesion) ${l.p_lesion.toFixed(2)}` : '') +
      `<br>${radios('lesion', ['true lesion', 'false positive', 'unsure'], i)}` +
      `<br>${radios('pathology', ['benign', 'malignant'], i)} <button type="button" class="zoom">zoom</button>`;
    div.querySelector('.zoom').addEventListener('click', () => zoomToBox(i));
    $('boxes').appendChild(div);
  });
  $('boxes').addEventListener('change', e => {
    const box = e.target.dataset.box;
    (pending.boxes[box] = pending.boxes[box] || {})[e.target.dataset.field] = e.target.value;
    $('save-status').textContent = 'not saved';
  });
  document.querySelectorAll('input[name=agreement]').forEach(r => r.addEventListener('change', () => {
    pending.image.agreement = r.value; $('save-status').textContent = 'not saved';
  }));
  $('comment').addEventListener('input', () => {
    pending.image.comment = $('comment').value; $('save-status').textContent = 'not saved';
  });
}

function fillVerdicts(verdicts) {
  const reader = $('reader').value.trim();
  document.querySelectorAll('#boxes input, input[name=agreement]').forEach(r => { r.checked = false; });
  $('comment').value = '';
  for (const v of verdicts.filter(v => v.reader === reader)) {
    if (v.box < 0) {
      const r = document.querySelector(`input[name=agreement][value="${v.agreement}"]`);
      if (r) r.checked = true;
      $('comment').value = v.comment;
      continue;
    }
    for (const field of ['lesion', 'pathology']) {
      const r = document.querySelector(`input[name="${field}-${v.box}"][value="${v[field]}"]`);
      if (r) r.checked = true;
    }
  }
}

async function save() {
  const reader = $('reader').value.trim();
  if (!reader) { $('save-status').textContent = 'enter your name first'; $('reader').focus(); return; }
  const response = await fetch(`/api/verdicts/${run}/${imageId}`, {
    method: 'POST', headers: {'Content-Type': 'application/json'},
    body: JSON.stringify({reader, boxes: pending.boxes, image: pending.image})});
  const body = await response.json();
  if (!response.ok) { $('save-status').textContent = 'not saved: ' + body.detail; return; }
  pending = {boxes: {}, image: {}};
  info.verdicts = body.verdicts;
  $('save-status').textContent = `saved (${body.saved} field${body.saved === 1 ? '' : 's'})`;
  $('save-status').dataset.saved = (parseInt($('save-status').dataset.saved || '0') + 1).toString();
}

// ----------------------------------------------------------------------------------------------- navigation
function neighbour(delta) {
  const order = JSON.parse(sessionStorage.getItem('mammo.order') || '[]');
  const here = order.indexOf(location.pathname);
  if (here >= 0 && order[here + delta]) location.href = order[here + delta];
}

async function start() {
  info = await (await fetch(`/api/images/${run}/${imageId}`)).json();
  viewer = OpenSeadragon({
    id: 'osd', drawer: 'canvas', showNavigationControl: false, tileSources: tileSource(),
    maxZoomPixelRatio: 4, visibilityRatio: 0.5, gestureSettingsMouse: {clickToZoom: false},
  });
  viewer.addOnceHandler('open', () => {
    watchLoaded(viewer.world.getItemAt(0));
    drawBoxes();
    if (info.has_heatmap) {
      viewer.addTiledImage({tileSource: {type: 'image', url: `/api/heatmap/${run}/${imageId}.png`},
                            x: 0, y: 0, width: 1, opacity: 0, index: 1,
                            success: e => { heatItem = e.item; setHeat(); document.body.dataset.heatmap = '1'; }});
    }
  });
  $('reader').value = localStorage.getItem('mammo.reader') || '';
  buildVerdictForm();
  fillVerdicts(info.verdicts);
  summarize();
}

$('show-heatmap').addEventListener('change', setHeat);
$('heat-opacity').addEventListener('input', setHeat);
$('show-boxes').addEventListener('change', drawBoxes);
$('win-center').addEventListener('input', setWindow);
$('win-width').addEventListener('input', setWindow);
$('win-reset').addEventListener('click', () => { $('win-center').value = 0.5; $('win-width').value = 1; setWindow(); });
$('zoom-home').addEventListener('click', () => viewer.viewport.goHome());
$('reader').addEventListener('change', () => {
  localStorage.setItem('mammo.reader', $('reader').value.trim());
  fillVerdicts(info.verdicts);
});
$('save').addEventListener('click', save);
$('prev').addEventListener('click', () => neighbour(-1));
$('next').addEventListener('click', () => neighbour(1));
document.addEventListener('thresholdchange', () => { if (info) summarize(); });
document.addEventListener('keydown', e => {
  if (e.target.matches('input[type=text], input:not([type]), textarea')) return;
  if (e.key === 'n' || e.key === 'ArrowRight') neighbour(1);
  else if (e.key === 'p' || e.key === 'ArrowLeft') neighbour(-1);
  else if (e.key === 'h') { $('show-heatmap').checked = !$('show-heatmap').checked; setHeat(); }
});
start();
