// The threshold control in the header, shared by every page through localStorage (a threshold moved in the viewer
// recolours the worklist too); pages listen to the 'thresholdchange' event on document.
// The slider's position is not the threshold itself: the server sends its scale as knots (value, position),
// interpolated linearly here (pipeline/serve/scale.py): the probability itself, or the image score with the
// shipped threshold at the middle. At each position the page shows the out-of-fold sensitivity and specificity
// of the models' operating curve, when the models have one.
(function () {
  const scale = JSON.parse(document.body.dataset.scale);
  const curve = JSON.parse(document.body.dataset.curve);
  const slider = document.getElementById('threshold');
  const shown = document.getElementById('threshold-value');
  const oof = document.getElementById('oof');
  // a position saved under another scale or shipped point would stand for another threshold
  const key = `mammo.threshold:${scale.kind}:${scale.shipped_value}`;
  const stored = parseFloat(localStorage.getItem(key));

  function interp(x, xs, ys) {
    if (x <= xs[0]) return ys[0];
    for (let i = 1; i < xs.length; i++) {
      if (x <= xs[i]) return ys[i - 1] + (ys[i] - ys[i - 1]) * (x - xs[i - 1]) / (xs[i] - xs[i - 1]);
    }
    return ys[ys.length - 1];
  }
  const digits = scale.kind === 'probability' ? 3 : 4;  // scores live near 0: one more digit
  window.mammoScale = scale;
  window.mammoThreshold = () => interp(parseFloat(slider.value), scale.positions, scale.values);
  window.mammoFormat = v => v.toFixed(digits);

  function showCurve(value) {
    if (!curve) { oof.textContent = oof.dataset.none; return; }
    let i = 0;  // the curve is measured at its own thresholds only: the nearest one, named
    curve.probability.forEach((p, j) => { if (Math.abs(p - value) < Math.abs(curve.probability[i] - value)) i = j; });
    const f = v => (v === null ? 'n/a' : v.toFixed(2));
    oof.textContent = `out of fold at ${curve.probability[i].toFixed(2)}: sensitivity ` +
      `${f(curve.sensitivity[i])}, specificity ${f(curve.specificity[i])}`;
    oof.dataset.sensitivity = curve.sensitivity[i];
    oof.dataset.specificity = curve.specificity[i];
  }
  function set(position, save) {
    slider.value = position;
    const value = window.mammoThreshold();
    shown.textContent = (scale.kind === 'probability' ? 'P \u2265 ' : 'score \u2265 ') + window.mammoFormat(value);
    showCurve(value);
    if (save) localStorage.setItem(key, slider.value);
    document.dispatchEvent(new CustomEvent('thresholdchange', {detail: value}));
  }
  slider.addEventListener('input', () => set(slider.value, true));
  document.getElementById('threshold-reset').addEventListener('click', () => set(scale.shipped_position, true));
  document.addEventListener('DOMContentLoaded', () => set(isNaN(stored) ? scale.shipped_position : stored, false));
})();

// an image's call at the slider's threshold: `value` is its probability or its score, as the scale says
function decisionFor(value) {
  return value >= window.mammoThreshold() ? 'malignant' : 'not malignant';
}
