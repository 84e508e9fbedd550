"""Sample inputs for examples/read-text: a camera frame with rendered text and a 16 kHz audio chunk.

`make_inputs(seed)` returns one request's worth of data per source of app.yaml, with the shapes and
dtypes the sources declare, made locally (no downloads): `tierplan run examples/read-text` calls it
to have something real to send.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["make_inputs", "make_frame", "make_audio", "sample_lines", "render_text_frame", "FRAME_HW", "AUDIO_SAMPLES", "SAMPLE_RATE_HZ"]

FRAME_HW = (480, 480)          # sources.camera.shape[:2] in app.yaml
AUDIO_SAMPLES = 8192           # sources.microphone.shape[1]: 512 ms at 16 kHz
SAMPLE_RATE_HZ = 16_000
TEXT_LINES = 4                 # transforms.text_boxes.fanout: about four boxes per frame
FONT_SIZE_PX = 30
WORDS = ("STOP", "EXIT", "PLATFORM", "OPEN", "CAFE", "TICKETS", "GATE", "NORTH", "SOUTH", "LIFT",
         "TAXI", "HOTEL", "PARKING", "MUSEUM", "BANK", "PHARMACY", "BUS", "TRAIN", "LEVEL", "ROOM")


def sample_lines(seed: int = 0) -> list[str]:
    """The four lines of text `make_frame(seed)` renders: one or two sign words and a number."""
    rng = np.random.default_rng(seed)
    return [" ".join(str(w) for w in rng.choice(WORDS, size=int(rng.integers(1, 3)), replace=False))
            + f" {int(rng.integers(1, 99))}" for _ in range(TEXT_LINES)]


def render_text_frame(lines: list[str], seed: int = 0) -> np.ndarray:
    """A 480x480x3 RGB uint8 frame: a light, slightly noisy background with `lines` in dark text."""
    rng = np.random.default_rng(seed + 1)
    h, w = FRAME_HW
    background = tuple(int(v) for v in rng.integers(200, 250, size=3))
    img = Image.new("RGB", (w, h), background)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=FONT_SIZE_PX)
    step = h // (len(lines) + 1)
    for i, line in enumerate(lines):
        colour = tuple(int(v) for v in rng.integers(0, 60, size=3))
        x = int(rng.integers(20, 80))
        y = step // 2 + i * step + int(rng.integers(-8, 8))
        draw.text((x, y), line, fill=colour, font=font)
    frame = np.asarray(img, dtype=np.int16) + rng.integers(-6, 7, size=(h, w, 3))
    return np.clip(frame, 0, 255).astype(np.uint8)


def make_frame(seed: int = 0) -> np.ndarray:
    """The camera frame of request `seed`: `sample_lines(seed)` rendered by `render_text_frame`."""
    return render_text_frame(sample_lines(seed), seed)


def make_audio(seed: int = 0) -> np.ndarray:
    """A 1x8192 float32 chunk at 16 kHz: half silence-level noise, half a voiced, vowel-like sound."""
    rng = np.random.default_rng(seed)
    t = np.arange(AUDIO_SAMPLES) / SAMPLE_RATE_HZ
    pitch_hz = float(rng.uniform(100, 220))
    voiced = sum(np.sin(2 * np.pi * k * pitch_hz * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 12))
    envelope = np.clip((t - t[-1] / 2) * 40, 0, 1) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    audio = 0.3 * voiced * envelope / 3 + rng.normal(0, 0.003, AUDIO_SAMPLES)
    return audio.astype(np.float32)[None]


def make_inputs(seed: int = 0) -> dict[str, np.ndarray]:
    """One request per source of examples/read-text/app.yaml: {"camera": frame, "microphone": audio}."""
    return {"camera": make_frame(seed), "microphone": make_audio(seed)}
