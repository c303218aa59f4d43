"""Pictures a person looks at: the heatmap PNG and the three-panel figure (image | Grad-CAM over the image with a
colour bar | overlay with numbered boxes and their malignancy). OpenCV's built-in Hershey font: nothing to
download.

Titles sit in a band of their own above the panels, each over its panel, scaled to the panel's width and wrapped
when even the smallest legible size does not fit: a scan's aspect ratio decides the panel width, and a fixed-size
title used to run into the next panel (unreadable on narrow and on wide figures alike).
"""
from __future__ import annotations

import cv2
import numpy as np

PANEL_HEIGHT = 1024  # panels are drawn at this height; a full-size scan would make a 100 MB PNG
FONT = cv2.FONT_HERSHEY_SIMPLEX
TITLE_SCALE = (0.9, 0.45)  # largest and smallest font scale of a title line (0.45 is ~10 px capitals)
GAP = 8  # white columns between panels
MARGIN = 6  # around title text
HEAT_ALPHA = 0.5  # Grad-CAM panel: colour over anatomy, both readable
BAR_WIDTH = 56  # the colour bar beside the Grad-CAM panel, with its end values


def _to_bgr(grey: np.ndarray) -> np.ndarray:
    g = np.round(np.clip(grey, 0, 1) * 255).astype(np.uint8)
    return cv2.cvtColor(g, cv2.COLOR_GRAY2BGR)


def colorize(heat: np.ndarray) -> np.ndarray:
    return cv2.applyColorMap(np.round(np.clip(heat, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)


def _thickness(scale: float) -> int:
    return max(1, round(2 * scale))


def _text_size(text: str, scale: float) -> tuple[int, int, int]:
    (w, h), base = cv2.getTextSize(text, FONT, scale, _thickness(scale))
    return w, h, base


def fit_lines(text: str, width: int, top: float = TITLE_SCALE[0]) -> tuple[list[str], float]:
    """Lines and font scale so that every line fits `width` pixels: the largest scale up to `top` that fits one
    line, else words wrapped at the smallest scale (a word wider than that alone is left as it is)."""
    low = TITLE_SCALE[1]
    scale = top
    while scale > low and _text_size(text, scale)[0] > width:
        scale = round(scale - 0.05, 2)
    scale = max(scale, low)
    if _text_size(text, scale)[0] <= width:
        return [text], scale
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if line and _text_size(candidate, scale)[0] > width:
            lines.append(line)
            line = word
        else:
            line = candidate
    return lines + [line], scale


def title_layout(titles, panel_widths, gap: int = GAP) -> tuple[int, list[dict]]:
    """(band height, one box per text line: x, y (baseline), w, top, bottom, text, scale), each line centred over its
    panel. Used to draw the band and by the tests, which check that no two boxes meet and each fits its panel."""
    widths = [max(1, w - 2 * MARGIN) for w in panel_widths]
    common = min(fit_lines(t, w)[1] for t, w in zip(titles, widths))  # one size for all titles of a figure
    fitted = [fit_lines(t, w, common) for t, w in zip(titles, widths)]
    line_h = max(_text_size("Ag", s)[1] + _text_size("Ag", s)[2] for _, s in fitted) + MARGIN
    band = MARGIN + line_h * max(len(lines) for lines, _ in fitted)
    boxes, x0 = [], 0
    for (lines, scale), pw in zip(fitted, panel_widths):
        for k, line in enumerate(lines):
            w, h, base = _text_size(line, scale)
            x = x0 + max(0, (pw - w) // 2)
            y = MARGIN + k * line_h + h
            boxes.append({"x": x, "y": y, "w": w, "top": y - h, "bottom": y + base, "text": line, "scale": scale})
        x0 += pw + gap
    return band, boxes


def colour_bar(height: int) -> np.ndarray:
    """A vertical JET bar (1 at the top, 0 at the bottom) with its two end values, as a panel of its own."""
    bar_w, pad = 16, 24
    out = np.full((height, BAR_WIDTH, 3), 255, np.uint8)
    ramp = np.linspace(1, 0, height - 2 * pad, dtype=np.float32)[:, None].repeat(bar_w, axis=1)
    out[pad:height - pad, 6:6 + bar_w] = colorize(ramp)
    for text, y in (("1", pad + 10), ("0", height - pad)):
        cv2.putText(out, text, (6 + bar_w + 6, y), FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def _label(img, text: str, org, scale: float) -> None:
    cv2.putText(img, text, org, FONT, scale, (0, 0, 0), _thickness(scale) + 3, cv2.LINE_AA)
    cv2.putText(img, text, org, FONT, scale, (255, 255, 255), _thickness(scale), cv2.LINE_AA)


DASH = 10  # pixels of a dashed box's dash and gap (panel pixels)
LEGEND = "solid box: scores the image, dashed: other finding"


def dashed_rectangle(img: np.ndarray, p1, p2, colour, thickness: int) -> None:
    """A rectangle outlined in dashes (OpenCV draws only solid ones): a finding that does not score the image."""
    (x1, y1), (x2, y2) = p1, p2
    for a, b, fixed, horizontal in ((x1, x2, y1, True), (x1, x2, y2, True), (y1, y2, x1, False), (y1, y2, x2, False)):
        for start in range(a, b, 2 * DASH):
            end = min(start + DASH, b)
            cv2.line(img, (start, fixed) if horizontal else (fixed, start), (end, fixed) if horizontal else (fixed, end),
                     colour, thickness)


def three_panels(image: np.ndarray, heat: np.ndarray, boxes, labels, threshold_text: str = "",
                 dashed=None) -> np.ndarray:
    """image: original grid float [0,1]; heat: any grid of the same aspect, [0,1]; boxes in original pixels.
    `dashed`: per box, True for a finding that does not score the image (drawn dashed; the overlay's title then
    carries the legend)."""
    dashed = list(dashed) if dashed is not None else [False] * len(boxes)
    h, w = image.shape[:2]
    s = PANEL_HEIGHT / h
    size = (max(1, round(w * s)), PANEL_HEIGHT)
    base = _to_bgr(cv2.resize(image, size, interpolation=cv2.INTER_AREA))
    heat_small = np.clip(cv2.resize(heat.astype(np.float32), size, interpolation=cv2.INTER_LINEAR), 0, 1)
    heat_bgr = colorize(heat_small)
    cam = cv2.addWeighted(base, 1 - HEAT_ALPHA, heat_bgr, HEAT_ALPHA, 0)  # the anatomy under the whole map
    # Overlay: blend only where the map says something, so the anatomy stays readable elsewhere.
    # Where the map is 0 the blend is the image itself, exactly: blended only in the box around the map's nonzero
    # pixels (a lesion's footprint: the float64 blend of the whole panel was a fifth of the figure's rendering).
    overlay = base.copy()
    rows, cols = np.flatnonzero(heat_small.any(axis=1)), np.flatnonzero(heat_small.any(axis=0))
    if len(rows):
        window = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        alpha = (0.55 * heat_small[window])[..., None]
        overlay[window] = (base[window] * (1 - alpha) + heat_bgr[window] * alpha).astype(np.uint8)
    for i, (box, label) in enumerate(zip(boxes, labels), start=1):
        x1, y1, x2, y2 = (int(round(v * s)) for v in box)
        (dashed_rectangle if dashed[i - 1] else cv2.rectangle)(overlay, (x1, y1), (x2, y2), (255, 255, 255), 2)
        _label(overlay, f"{i}: {label}", (x1, max(18, y1 - 6)), 0.6)
    cam = np.concatenate([cam, colour_bar(PANEL_HEIGHT)], axis=1)
    panels = [base, cam, overlay]
    legend = f"; {LEGEND}" if any(dashed) else ""
    titles = ["image", "Grad-CAM (malignant evidence, 0-1)", f"overlay {threshold_text}".strip() + legend]
    band_h, text_boxes = title_layout(titles, [p.shape[1] for p in panels])
    gap = np.full((PANEL_HEIGHT, GAP, 3), 255, np.uint8)
    body = np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)
    band = np.full((band_h, body.shape[1], 3), 255, np.uint8)
    for b in text_boxes:
        cv2.putText(band, b["text"], (b["x"], b["y"]), FONT, b["scale"], (0, 0, 0), _thickness(b["scale"]),
                    cv2.LINE_AA)
    return np.concatenate([band, body], axis=0)


def overlay_panel(figure: np.ndarray) -> np.ndarray:
    """The overlay (last) panel of a `three_panels` figure: below the title band, right of the other two."""
    body = figure[-PANEL_HEIGHT:]
    width = (body.shape[1] - 2 * GAP - BAR_WIDTH) // 3
    return body[:, body.shape[1] - width:]
