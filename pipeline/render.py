"""Pictures a person looks at: the heatmap PNG and the three-panel figure (image | heatmap | overlay) with
numbered boxes and their malignancy. OpenCV's built-in Hershey font: nothing to download."""
from __future__ import annotations

import cv2
import numpy as np

PANEL_HEIGHT = 1024  # panels are drawn at this height; a full-size scan would make a 100 MB PNG


def _to_bgr(grey: np.ndarray) -> np.ndarray:
    g = np.round(np.clip(grey, 0, 1) * 255).astype(np.uint8)
    return cv2.cvtColor(g, cv2.COLOR_GRAY2BGR)


def colorize(heat: np.ndarray) -> np.ndarray:
    return cv2.applyColorMap(np.round(np.clip(heat, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)


def three_panels(image: np.ndarray, heat: np.ndarray, boxes, labels, threshold_text: str = "") -> np.ndarray:
    """image: original grid float [0,1]; heat: any grid of the same aspect, [0,1]; boxes in original pixels."""
    h, w = image.shape[:2]
    s = PANEL_HEIGHT / h
    size = (max(1, round(w * s)), PANEL_HEIGHT)
    base = _to_bgr(cv2.resize(image, size, interpolation=cv2.INTER_AREA))
    heat_small = cv2.resize(heat.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
    heat_bgr = colorize(heat_small)
    # Blend only where the map says something, so the anatomy stays readable elsewhere.
    alpha = (0.55 * np.clip(heat_small, 0, 1))[..., None]
    overlay = (base * (1 - alpha) + heat_bgr * alpha).astype(np.uint8)
    for i, (box, label) in enumerate(zip(boxes, labels), start=1):
        x1, y1, x2, y2 = (int(round(v * s)) for v in box)
        cv2.rectangle(overlay, (x1, y1), (x2, y2), (255, 255, 255), 2)
        text = f"{i}: {label}"
        cv2.putText(overlay, text, (x1, max(18, y1 - 6)), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 4, cv2.LINE_AA)
        cv2.putText(overlay, text, (x1, max(18, y1 - 6)), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1,
                    cv2.LINE_AA)
    panels = [base, heat_bgr, overlay]
    for panel, title in zip(panels, ("image", "Grad-CAM", "overlay " + threshold_text)):
        cv2.putText(panel, title, (10, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 0, 0), 4, cv2.LINE_AA)
        cv2.putText(panel, title, (10, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 1, cv2.LINE_AA)
    gap = np.full((PANEL_HEIGHT, 8, 3), 255, np.uint8)
    return np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)
