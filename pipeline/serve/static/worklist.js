// Worklist: sort, filter, live threshold, keyboard navigation, uploads. The rows come rendered from the server;
// this only reorders, hides and recolours them.
const tbody = document.querySelector('#worklist tbody');
const allRows = Array.from(tbody.querySelectorAll('tr'));
let cursor = 0;

function visibleRows() { return allRows.filter(r => !r.hidden); }

function recolour() {
  for (const r of allRows) {
    const d = decisionFor(parseFloat(r.dataset.value));
    r.dataset.decision = d;
    const cell = r.querySelector('.decision');
    cell.textContent = d;
    cell.className = 'decision ' + (d === 'malignant' ? 'pos' : 'neg');
  }
  applyFilters();
}

function applyFilters() {
  const decision = document.getElementById('f-decision').value;
  const reviewed = document.getElementById('f-reviewed').value;
  const lo = parseFloat(document.getElementById('f-min').value || '0');
  const hi = parseFloat(document.getElementById('f-max').value || '1');
  const sort = document.getElementById('f-sort').value;
  const key = {
    'score-desc': r => -parseFloat(r.dataset.value), 'score-asc': r => parseFloat(r.dataset.value),
    'boxes-desc': r => -parseInt(r.dataset.boxes), 'id': r => r.dataset.id,
    'unreviewed': r => (r.dataset.reviewed === 'yes' ? 1 : 0) - parseFloat(r.dataset.value) / 2,
  }[sort];
  allRows.sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0));
  for (const r of allRows) {
    const s = parseFloat(r.dataset.value);
    r.hidden = (decision && r.dataset.decision !== decision) || (reviewed && r.dataset.reviewed !== reviewed)
      || s < lo || s > hi;
    tbody.appendChild(r);
  }
  const shown = visibleRows();
  document.getElementById('count').textContent = `${shown.length} of ${allRows.length} images`;
  // the viewer's next/previous follow this order
  sessionStorage.setItem('mammo.order', JSON.stringify(shown.map(r => r.dataset.href)));
  move(0);
}

function move(delta) {
  const shown = visibleRows();
  allRows.forEach(r => r.classList.remove('current'));
  if (!shown.length) return;
  cursor = Math.max(0, Math.min(shown.length - 1, cursor + delta));
  shown[cursor].classList.add('current');
  if (delta) shown[cursor].scrollIntoView({block: 'nearest'});
}

document.addEventListener('keydown', e => {
  if (e.target.matches('input, select, textarea')) return;
  if (e.key === 'j' || e.key === 'ArrowDown') { move(1); e.preventDefault(); }
  else if (e.key === 'k' || e.key === 'ArrowUp') { move(-1); e.preventDefault(); }
  else if (e.key === 'Enter') {
    const row = visibleRows()[cursor];
    if (row) location.href = row.dataset.href;
  }
});
for (const id of ['f-decision', 'f-reviewed', 'f-min', 'f-max', 'f-sort']) {
  document.getElementById(id).addEventListener('input', () => { cursor = 0; applyFilters(); });
}
tbody.addEventListener('click', e => {
  const row = e.target.closest('tr');
  if (row && !e.target.closest('a')) location.href = row.dataset.href;
});
document.addEventListener('thresholdchange', recolour);

const form = document.getElementById('upload-form');
if (form) {
  const status = document.getElementById('upload-status');
  const bar = document.getElementById('upload-progress');
  form.addEventListener('submit', async e => {
    e.preventDefault();
    if (!document.getElementById('upload-file').files.length) { status.textContent = 'choose a file first'; return; }
    status.textContent = 'uploading...';
    bar.hidden = false; bar.value = 0;
    const response = await fetch('/api/upload', {method: 'POST', body: new FormData(form)});
    const body = await response.json();
    if (!response.ok) { status.textContent = 'refused: ' + body.detail; bar.hidden = true; return; }
    poll(body.id);
  });
  async function poll(jobId) {
    const job = await (await fetch('/api/jobs/' + jobId)).json();
    bar.value = job.progress;
    if (job.status === 'done') {
      status.innerHTML = '';
      const link = document.createElement('a');
      link.href = `/view/${job.run}/${job.image_id}`;
      link.textContent = `done in ${job.seconds.toFixed(1)} s: open ${job.image_id}`;
      status.appendChild(link);
      status.dataset.done = job.image_id;
    } else if (job.status === 'failed') {
      status.textContent = 'failed: ' + job.error;
    } else {
      status.textContent = `${job.status}${job.step ? ': ' + job.step : ''}`;
      setTimeout(() => poll(jobId), 300);
    }
  }
}
