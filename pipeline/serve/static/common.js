// The threshold control in the header: shared by every page through localStorage, so a threshold moved in the
// viewer recolours the worklist too. Pages listen to the 'thresholdchange' event on document.
(function () {
  const shipped = parseFloat(document.body.dataset.shippedThreshold);
  const slider = document.getElementById('threshold');
  const shown = document.getElementById('threshold-value');
  const stored = parseFloat(localStorage.getItem('mammo.threshold'));
  window.mammoThreshold = () => parseFloat(slider.value);
  function set(value, save) {
    slider.value = value;
    shown.textContent = parseFloat(slider.value).toFixed(3);
    if (save) localStorage.setItem('mammo.threshold', slider.value);
    document.dispatchEvent(new CustomEvent('thresholdchange', {detail: parseFloat(slider.value)}));
  }
  slider.addEventListener('input', () => set(slider.value, true));
  document.getElementById('threshold-reset').addEventListener('click', () => set(shipped, true));
  document.addEventListener('DOMContentLoaded', () => set(isNaN(stored) ? shipped : stored, false));
})();

function decisionFor(score) {
  return score >= window.mammoThreshold() ? 'malignant' : 'not malignant';
}
