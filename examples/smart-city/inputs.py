"""Sample inputs for examples/smart-city: a synthetic street scene as the camera's 320x320 stream.

`make_inputs(seed)` returns one request's worth of data per source of app.yaml, with the shape and
dtype the source declares, made locally (no downloads): `tierplan run examples/smart-city` calls it
to have something real to send.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["make_inputs", "make_frame", "FRAME_SIDE_PX"]

FRAME_SIDE_PX = 320            # sources.camera.shape[1:3] in app.yaml
VEHICLES = (3, 7)              # vehicles drawn per frame, at least and at most


def make_frame(seed: int = 0) -> np.ndarray:
    """A 1x320x320x3 RGB uint8 frame: sky, kerbs, a road with lane marks and a few boxy vehicles."""
    rng = np.random.default_rng(seed)
    side = FRAME_SIDE_PX
    img = Image.new("RGB", (side, side), (150, 185, 225))
    draw = ImageDraw.Draw(img)
    horizon = int(side * rng.uniform(0.3, 0.4))
    draw.rectangle([0, horizon, side, side], fill=(95, 95, 100))
    draw.rectangle([0, horizon, side, horizon + 12], fill=(170, 170, 160))
    for x in range(0, side, 40):
        draw.rectangle([x + int(rng.integers(0, 8)), (horizon + side) // 2 - 2, x + 22, (horizon + side) // 2 + 2],
                       fill=(235, 235, 225))
    for _ in range(int(rng.integers(*VEHICLES))):
        w = int(rng.integers(40, 110))
        h = int(w * rng.uniform(0.45, 0.8))
        x0 = int(rng.integers(0, side - w))
        y0 = int(rng.integers(horizon, side - h))
        body = tuple(int(v) for v in rng.integers(20, 240, size=3))
        draw.rounded_rectangle([x0, y0, x0 + w, y0 + h], radius=6, fill=body)
        draw.rectangle([x0 + w // 6, y0 + 4, x0 + 5 * w // 6, y0 + h // 3], fill=(40, 60, 80))
        for wx in (x0 + w // 5, x0 + 4 * w // 5):
            draw.ellipse([wx - 7, y0 + h - 7, wx + 7, y0 + h + 7], fill=(20, 20, 20))
    frame = np.asarray(img, dtype=np.int16) + rng.integers(-8, 9, size=(side, side, 3))
    return np.clip(frame, 0, 255).astype(np.uint8)[None]


def make_inputs(seed: int = 0) -> dict[str, np.ndarray]:
    """One request per source of examples/smart-city/app.yaml: {"camera": frame}."""
    return {"camera": make_frame(seed)}
