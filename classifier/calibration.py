"""Probability calibration fitted on validation predictions, stored with the model as calibration.json.

- 'temperature': p' = sigmoid(logit(p) / T), one parameter; strictly increasing, so the ranking (auROC, auPR)
  is unchanged. It corrects over- or under-confidence but not a shifted base rate.
- 'platt': p' = sigmoid(a * logit(p) + b) with a > 0: also corrects the base rate that class weights shift.
  Still strictly increasing.
- 'isotonic': a monotone step function (pool adjacent violators). Non-decreasing only: ties it creates can
  change auROC slightly, and it needs more validation crops than a few dozen to be trustworthy.
- 'none': identity, reported as uncalibrated.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.optimize import minimize, minimize_scalar

from mammo.atomic import atomic_write_text
from mammo.config import CALIBRATIONS as METHODS
_EPS = 1e-6
# Temperatures searched. Scores with no signal on validation drive the likelihood's optimum to T -> infinity
# (every probability 0.5); an unbounded search once reached T = 2e21, where float64 rounds every probability to
# exactly 0.5 and the ranking the map promises to keep is lost. Within these bounds logit / T keeps every order.
MAX_TEMPERATURE = 100.0


def _logit(p) -> np.ndarray:
    """Only exact 0 and 1 are moved (to the nearest float64 inside): a coarser clip would tie saturated
    scores that the model still ranks, and change auROC."""
    p = np.clip(np.asarray(p, dtype=np.float64), np.finfo(np.float64).tiny, np.nextafter(1.0, 0.0))
    return np.log(p) - np.log1p(-p)


def _sigmoid(z) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def _nll(y, p) -> float:
    p = np.clip(p, _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


@dataclass
class Calibrator:
    method: str = "none"
    params: dict = field(default_factory=dict)
    fitted_on: str = ""  # what it was fitted on, for the report (e.g. 'val truth crops, n=19')

    @property
    def calibrated(self) -> bool:
        return self.method != "none" and bool(self.params)

    def fit(self, p, y, fitted_on: str = "") -> "Calibrator":
        p, y = np.asarray(p, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
        if self.method not in METHODS:
            raise ValueError(f"calibration must be one of {METHODS}, got {self.method!r}")
        self.fitted_on = fitted_on
        if self.method == "none" or len(np.unique(y)) < 2:
            # with one class only there is nothing to fit: stay uncalibrated and say so
            self.params = {}
            if self.method != "none":
                self.fitted_on = f"not fitted: validation has one class only ({fitted_on})"
            return self
        z = _logit(p)
        if self.method == "temperature":
            # optimise log T (so that T stays positive) within [1 / MAX, MAX]
            bound = np.log(MAX_TEMPERATURE)
            res = minimize_scalar(lambda v: _nll(y, _sigmoid(z / np.exp(v))), bounds=(-bound, bound),
                                  method="bounded", options={"xatol": 1e-6})
            t = float(np.exp(res.x))
            self.params = {"temperature": t}
            if t > MAX_TEMPERATURE / 1.01 or t < 1.01 / MAX_TEMPERATURE:
                self.fitted_on = f"{fitted_on}; temperature at its bound {t:.3g}: the scores carry little signal there"
        elif self.method == "platt":
            res = minimize(lambda v: _nll(y, _sigmoid(np.exp(v[0]) * z + v[1])), x0=[0.0, 0.0],
                           method="Nelder-Mead")
            self.params = {"a": float(np.exp(res.x[0])), "b": float(res.x[1])}
        else:
            from sklearn.isotonic import IsotonicRegression

            iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
            self.params = {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}
        return self

    def __call__(self, p) -> np.ndarray:
        p = np.asarray(p, dtype=np.float64)
        if not self.calibrated:
            return p
        if self.method == "temperature":
            return _sigmoid(_logit(p) / self.params["temperature"])
        if self.method == "platt":
            return _sigmoid(self.params["a"] * _logit(p) + self.params["b"])
        return np.interp(p, self.params["x"], self.params["y"])

    def to_dict(self) -> dict:
        return {"method": self.method, "calibrated": self.calibrated, "params": self.params,
                "fitted_on": self.fitted_on}

    @classmethod
    def from_dict(cls, d: dict) -> "Calibrator":
        return cls(d.get("method", "none"), dict(d.get("params", {})), d.get("fitted_on", ""))

    def save(self, path, **extra) -> Path:
        """Write calibration.json; `extra` (e.g. the operating threshold) is stored beside it."""
        return atomic_write_text(path, json.dumps({**self.to_dict(), **extra}, indent=2))

    @classmethod
    def load(cls, path) -> "Calibrator":
        return cls.from_dict(json.loads(Path(path).read_text()))


def negative_log_likelihood(p, y) -> float:
    return _nll(np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64))
