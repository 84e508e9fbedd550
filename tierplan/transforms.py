"""Host-side transforms between models: pure functions from named tensors to a list of requests.

Every transform has the signature ``fn(inputs: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]``.
``inputs`` holds the tensors its incoming edges deliver. Each transform documents the names it
reads (``frame``, ``prob_map``, ...); under other names (the producer's output name or the
producer node's name, as a plan may carry them) it recognises each input by dtype and shape, and
refuses ambiguity. Each element of the returned list is one downstream request (a list of length
k is a fan-out of k; an empty list ends that request's branch), keyed by the names of the
consumer's inputs, its main tensor first. A transform never mutates its inputs.

They are named in app.yaml as ``tierplan.transforms:<function>``:

- PP-OCR (examples/read-text): `ocr_normalize` (camera frame -> detector input),
  `crop_text_boxes` (DB post-processing of the detector's probability map; one request per text
  box), `orientation_crop` (the classifier's 48x192 view of a crop), `rotate_upside_down`
  (apply the orientation classifier's verdict to a crop), `ctc_greedy_decode` (recogniser
  probabilities -> character ids), plus `ppocr_charset` and `decode_text` to turn ids into a
  string on the host.
- Silero VAD (examples/read-text): `audio_frames` (a 16 kHz chunk -> the VAD's windows + state).
- Detection (examples/smart-city): `crop_detections` (top boxes after NMS, cropped and resized for
  a classifier; one request per box).

The numeric settings below are the published defaults of the models they serve (PP-OCR's
rapidocr config.yaml, Silero VAD's 16 kHz framing, torchvision's detection post-processing).
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

__all__ = [
    "ocr_normalize", "crop_text_boxes", "orientation_crop", "rotate_upside_down", "ctc_greedy_decode", "ppocr_charset",
    "decode_text", "audio_frames", "crop_detections", "find_text_boxes",
]

Request = dict[str, np.ndarray]

# ----------------------------------------------------------------------------- PP-OCR settings
# rapidocr_onnxruntime/config.yaml (PP-OCRv4 defaults): Det.thresh, box_thresh, unclip_ratio,
# max_candidates, use_dilation; Cls.cls_image_shape, cls_thresh, label_list; Rec.rec_img_shape.
DB_BINARY_THRESHOLD = 0.3      # pixel is text when prob > this
DB_BOX_THRESHOLD = 0.5         # keep a box when its mean prob >= this
DB_UNCLIP_RATIO = 1.6          # grow a shrunk text kernel back to the text's extent
DB_MAX_CANDIDATES = 1000       # contours examined per frame
DB_MIN_BOX_SIDE_PX = 3         # PP-OCR's min_size: drop slivers
TEXT_HEIGHT_PX = 48            # classifier and recogniser input height
CLS_WIDTH_PX = 192             # classifier input width
REC_WIDTH_PX = 320             # recogniser input width
CLS_THRESHOLD = 0.9            # rotate a crop when P(180 degrees) >= this
VERTICAL_ASPECT = 1.5          # crops this much taller than wide are read rotated by 90 degrees
PPOCR_MEAN, PPOCR_STD = 0.5, 0.5   # PP-OCR normalisation: (x / 255 - mean) / std, BGR order

# ----------------------------------------------------------------------------- Silero VAD settings
VAD_WINDOW_SAMPLES = 512       # 32 ms at 16 kHz: one VAD decision per window
VAD_CONTEXT_SAMPLES = 64       # samples of the previous window prepended to each (576 in total)
VAD_STATE_SHAPE = (1, 1, 128)  # LSTM h and c of silero_vad_16k_sequence.onnx

# ----------------------------------------------------------------------------- detection settings
# torchvision SSDlite320: box_score_thresh 0.001, nms_thresh 0.55, detections_per_img 300;
# a classifier behind it wants few, distinct crops, so keep only the best few.
DET_SCORE_MIN = 0.001
DET_NMS_IOU = 0.55
DET_MAX_CROPS = 4
CROP_SIZE_PX = 224                                      # MobileNetV3 input side
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
_CROP_SCALE = (1.0 / (255.0 * IMAGENET_STD)).reshape(3, 1, 1).astype(np.float32)
_CROP_SHIFT = (IMAGENET_MEAN / IMAGENET_STD).reshape(3, 1, 1).astype(np.float32)


def _take(inputs: dict[str, np.ndarray], name: str, fn: str,
          role: Callable[[np.ndarray], bool] = lambda a: True, what: str = "") -> np.ndarray:
    """The input called `name`; failing that, the only input that fits its role.

    Producers and edges may name a tensor by the producer's output (``sigmoid_0.tmp_0``), by the
    producing node (``camera``) or by the consumer's input (``prob_map``); a transform takes its
    documented name first and otherwise recognises each input by its dtype and shape.
    """
    if name in inputs:
        return np.asarray(inputs[name])
    fits = [k for k, v in inputs.items() if role(np.asarray(v))]
    if len(fits) == 1:
        return np.asarray(inputs[fits[0]])
    got = ", ".join(f"{k} {np.asarray(v).dtype}{list(np.shape(v))}" for k, v in inputs.items()) or "nothing"
    raise ValueError(f"transform {fn}: missing input {name!r}{f' ({what})' if what else ''}; got {got}. "
                     f"To fix: map a producer's output to {name!r} in the edge's `tensors`")


FRAME = "HxWx3 uint8 RGB frame"


def _is_frame(a: np.ndarray) -> bool:
    return a.dtype == np.uint8 and a.shape[-1:] == (3,) and (a.ndim == 3 or (a.ndim == 4 and a.shape[0] == 1))


def _is_float(a: np.ndarray) -> bool:
    return np.issubdtype(a.dtype, np.floating)


def _is_chw_batch(a: np.ndarray, channels: int) -> bool:
    return _is_float(a) and a.ndim == 4 and a.shape[0] == 1 and a.shape[1] == channels


def _frame_hwc(frame: np.ndarray, fn: str) -> np.ndarray:
    """An RGB uint8 frame as HxWx3 (a leading batch of 1 is accepted)."""
    if frame.ndim == 4 and frame.shape[0] == 1:
        frame = frame[0]
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"transform {fn}: frame must be HxWx3 (RGB), got shape {frame.shape}")
    return frame


# ============================================================================= PP-OCR
def ocr_normalize(inputs: dict[str, np.ndarray]) -> list[Request]:
    """Camera frame (``frame``: HxWx3 RGB uint8) -> PP-OCR detector input ``x`` (1x3xHxW float32)."""
    frame = _frame_hwc(_take(inputs, "frame", "ocr_normalize", _is_frame, what=FRAME), "ocr_normalize")
    return [{"x": _ppocr_chw(frame[:, :, ::-1])[None]}]


def _ppocr_chw(bgr: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 BGR -> 3xHxW float32 normalised as PP-OCR was trained."""
    x = np.ascontiguousarray(bgr.transpose(2, 0, 1), dtype=np.float32)
    x *= 1.0 / (255.0 * PPOCR_STD)
    x -= PPOCR_MEAN / PPOCR_STD
    return x


def find_text_boxes(prob_map: np.ndarray, out_hw: tuple[int, int]) -> list[np.ndarray]:
    """DB post-processing: text quadrilaterals (4x2 float32, frame pixels) in reading order.

    Threshold the probability map, dilate, take each connected contour's minimum-area rectangle,
    keep it when its mean probability reaches DB_BOX_THRESHOLD, grow it by the unclip ratio
    (offset = area * ratio / perimeter, as PP-OCR's polygon offset does for a rectangle), and scale
    it to the frame's size.
    """
    map_h, map_w = prob_map.shape[-2], prob_map.shape[-1]
    pred = np.asarray(prob_map, dtype=np.float32).reshape(map_h, map_w)
    bitmap = cv2.dilate((pred > DB_BINARY_THRESHOLD).astype(np.uint8), np.ones((2, 2), np.uint8))
    contours, _ = cv2.findContours(bitmap, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    sx, sy = out_hw[1] / map_w, out_hw[0] / map_h
    boxes = []
    for contour in contours[:DB_MAX_CANDIDATES]:
        (cx, cy), (w, h), angle = cv2.minAreaRect(contour)
        if min(w, h) < DB_MIN_BOX_SIDE_PX:
            continue
        if _box_score(pred, cv2.boxPoints(((cx, cy), (w, h), angle))) < DB_BOX_THRESHOLD:
            continue
        offset = w * h * DB_UNCLIP_RATIO / (2 * (w + h))
        w, h = w + 2 * offset, h + 2 * offset
        if min(w, h) < DB_MIN_BOX_SIDE_PX + 2:
            continue
        pts = _order_points(cv2.boxPoints(((cx, cy), (w, h), angle)))
        pts[:, 0] = np.clip(pts[:, 0] * sx, 0, out_hw[1] - 1)
        pts[:, 1] = np.clip(pts[:, 1] * sy, 0, out_hw[0] - 1)
        boxes.append(pts.astype(np.float32))
    boxes.sort(key=lambda b: (round(float(b[0, 1]) / 10), float(b[0, 0])))
    return boxes


def _box_score(pred: np.ndarray, pts: np.ndarray) -> float:
    """Mean probability inside a quadrilateral (PP-OCR's "fast" score mode uses the same mask)."""
    h, w = pred.shape
    x0, x1 = (int(np.clip(f(pts[:, 0]), 0, w - 1)) for f in (lambda v: np.floor(v.min()), lambda v: np.ceil(v.max())))
    y0, y1 = (int(np.clip(f(pts[:, 1]), 0, h - 1)) for f in (lambda v: np.floor(v.min()), lambda v: np.ceil(v.max())))
    mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.uint8)
    cv2.fillPoly(mask, [(pts - [x0, y0]).astype(np.int32)], 1)
    return float(cv2.mean(pred[y0:y1 + 1, x0:x1 + 1], mask)[0])


def _order_points(pts: np.ndarray) -> np.ndarray:
    """Four points as top-left, top-right, bottom-right, bottom-left."""
    pts = pts[np.argsort(pts[:, 0])]
    left, right = pts[:2], pts[2:]
    tl, bl = left[np.argsort(left[:, 1])]
    tr, br = right[np.argsort(right[:, 1])]
    return np.array([tl, tr, br, bl], np.float32)


def _warp_crop(image: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """The quadrilateral `pts` of `image`, rectified to an upright rectangle (PP-OCR's crop)."""
    width = max(1, int(max(np.linalg.norm(pts[0] - pts[1]), np.linalg.norm(pts[2] - pts[3]))))
    height = max(1, int(max(np.linalg.norm(pts[0] - pts[3]), np.linalg.norm(pts[1] - pts[2]))))
    dst = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float32)
    m = cv2.getPerspectiveTransform(pts.astype(np.float32), dst)
    crop = cv2.warpPerspective(image, m, (width, height), borderMode=cv2.BORDER_REPLICATE,
                               flags=cv2.INTER_CUBIC)
    if crop.shape[0] / crop.shape[1] >= VERTICAL_ASPECT:
        crop = np.rot90(crop)
    return crop


def _resize_pad(crop_bgr: np.ndarray, width_px: int) -> np.ndarray:
    """PP-OCR's resize_norm_img: height 48, width by aspect ratio up to `width_px`, zero padding right."""
    h, w = crop_bgr.shape[:2]
    resized_w = min(width_px, int(math.ceil(TEXT_HEIGHT_PX * w / float(h))))
    resized = cv2.resize(crop_bgr, (resized_w, TEXT_HEIGHT_PX))
    out = np.zeros((3, TEXT_HEIGHT_PX, width_px), np.float32)
    out[:, :, :resized_w] = _ppocr_chw(resized)
    return out[None]


def crop_text_boxes(inputs: dict[str, np.ndarray]) -> list[Request]:
    """One request per text box the detector found: ``rec_input``, the crop as the recogniser takes it (1x3x48x320).

    Inputs: ``frame`` (HxWx3 RGB uint8, the camera frame) and ``prob_map`` (1x1xhxw float32,
    the PP-OCR detector's output). Boxes come in reading order (top to bottom, left to right).
    Each crop is rectified, resized to height 48 keeping its aspect ratio (at most 320 wide),
    normalised, and zero-padded on the right; `orientation_crop` derives the classifier's view.
    """
    frame = _frame_hwc(_take(inputs, "frame", "crop_text_boxes", _is_frame, what=FRAME), "crop_text_boxes")
    prob_map = _take(inputs, "prob_map", "crop_text_boxes", lambda a: _is_chw_batch(a, 1),
                     what="1x1xHxW float text probability")
    bgr = np.ascontiguousarray(frame[:, :, ::-1])
    return [{"rec_input": _resize_pad(_warp_crop(bgr, pts), REC_WIDTH_PX)}
            for pts in find_text_boxes(prob_map, frame.shape[:2])]


def _content_width(crop: np.ndarray) -> int:
    """Columns of a padded PP-OCR crop (1x3x48xW) that hold pixels: padding is exactly 0.0, and no
    uint8 value normalises to exactly 0.0 ((v / 255 - 0.5) / 0.5 == 0 has no integer solution)."""
    filled = np.flatnonzero(np.any(crop[0] != 0.0, axis=(0, 1)))
    return int(filled[-1]) + 1 if filled.size else crop.shape[-1]


def orientation_crop(inputs: dict[str, np.ndarray]) -> list[Request]:
    """A recogniser crop ``rec_input`` (1x3x48x320) -> the orientation classifier's input ``x`` (1x3x48x192).

    PP-OCR resizes each text crop to height 48 for both models, up to 192 wide for the classifier
    and 320 for the recogniser. A line up to 192 wide is copied as is; a wider one is squeezed to 192.
    """
    crop = _take(inputs, "rec_input", "orientation_crop", lambda a: _is_chw_batch(a, 3),
                 what="1x3x48xW float crop").astype(np.float32)
    width = _content_width(crop)
    out = np.zeros((1, 3, TEXT_HEIGHT_PX, CLS_WIDTH_PX), np.float32)
    if width <= CLS_WIDTH_PX:
        out[..., :width] = crop[..., :width]
    else:
        hwc = np.ascontiguousarray(crop[0, :, :, :width].transpose(1, 2, 0))
        out[0] = cv2.resize(hwc, (CLS_WIDTH_PX, TEXT_HEIGHT_PX)).transpose(2, 0, 1)
    return [{"x": out}]


def rotate_upside_down(inputs: dict[str, np.ndarray]) -> list[Request]:
    """Turn a recogniser crop by 180 degrees when the orientation classifier says so.

    Inputs: ``rec_input`` (1x3x48xW from `crop_text_boxes`) and ``cls_probs`` (1x2: P(0), P(180)).
    The zero padding on the right stays on the right: only the text's columns are turned.
    Output: ``x``, the recogniser's input.
    """
    crop = _take(inputs, "rec_input", "rotate_upside_down", lambda a: _is_chw_batch(a, 3),
                 what="1x3x48xW float crop")
    probs = _take(inputs, "cls_probs", "rotate_upside_down", lambda a: a.size == 2,
                  what="1x2 orientation probabilities").reshape(-1)
    if probs.size != 2:
        raise ValueError(f"transform rotate_upside_down: cls_probs must hold 2 values, got shape {probs.shape}")
    out = np.array(crop, dtype=np.float32, copy=True)
    if int(np.argmax(probs)) == 1 and float(probs[1]) >= CLS_THRESHOLD:
        width = _content_width(out)
        out[..., :width] = out[..., :width][..., ::-1, ::-1]
    return [{"x": out}]


def ctc_greedy_decode(inputs: dict[str, np.ndarray]) -> list[Request]:
    """Recogniser probabilities ``probs`` (1xTxC) -> ``text_ids`` (1xT int32) and ``text_score`` (1, float32).

    Greedy CTC: best class per step, repeats merged, blanks (id 0) dropped; the ids are packed to
    the left and padded with 0. `decode_text` turns them into a string.
    """
    probs = _take(inputs, "probs", "ctc_greedy_decode", lambda a: _is_float(a) and a.ndim == 3,
                  what="1xTxC float CTC probabilities")
    if probs.ndim != 3 or probs.shape[0] != 1:
        raise ValueError(f"transform ctc_greedy_decode: probs must be 1xTxC, got shape {probs.shape}")
    best = probs[0].argmax(axis=1)
    keep = best != 0
    keep[1:] &= best[1:] != best[:-1]
    ids = np.zeros((1, best.size), np.int32)
    ids[0, :int(keep.sum())] = best[keep]
    conf = probs[0].max(axis=1)[keep]
    score = np.array([conf.mean() if conf.size else 0.0], np.float32)
    return [{"text_ids": ids, "text_score": score}]


@lru_cache(maxsize=4)
def ppocr_charset(model_path: str) -> tuple[str, ...]:
    """The recogniser's classes: 'blank', the dictionary stored in the ONNX metadata, then ' '."""
    import onnx
    model = onnx.load(str(Path(model_path)), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    if "character" not in meta:
        raise ValueError(f"{model_path}: no 'character' metadata; not a PP-OCR recogniser")
    return ("blank", *meta["character"].splitlines(), " ")


def decode_text(text_ids: np.ndarray, charset: tuple[str, ...]) -> str:
    """Character ids from `ctc_greedy_decode` as a string (0 = padding)."""
    return "".join(charset[i] for i in np.asarray(text_ids).reshape(-1) if 0 < i < len(charset))


# ============================================================================= Silero VAD
def audio_frames(inputs: dict[str, np.ndarray]) -> list[Request]:
    """A 16 kHz mono chunk ``audio`` (1xN float32) -> Silero VAD's ``input`` (Wx576) and zero ``h``, ``c``.

    Each row is one 512-sample window with the 64 samples before it prepended (zeros before the
    chunk), as silero_vad_16k_sequence.onnx expects; W = N // 512 (a trailing partial window is
    dropped). The LSTM state starts at zero for every chunk, so chunks are independent requests.
    """
    audio = _take(inputs, "audio", "audio_frames", _is_float, what="1xN float32 samples")
    audio = audio.astype(np.float32).reshape(-1)
    windows = audio.size // VAD_WINDOW_SAMPLES
    if windows == 0:
        raise ValueError(f"transform audio_frames: need at least {VAD_WINDOW_SAMPLES} samples, got {audio.size}")
    padded = np.concatenate([np.zeros(VAD_CONTEXT_SAMPLES, np.float32), audio[:windows * VAD_WINDOW_SAMPLES]])
    starts = np.arange(windows) * VAD_WINDOW_SAMPLES
    idx = starts[:, None] + np.arange(VAD_WINDOW_SAMPLES + VAD_CONTEXT_SAMPLES)[None, :]
    state = np.zeros(VAD_STATE_SHAPE, np.float32)
    return [{"input": np.ascontiguousarray(padded[idx]), "h": state, "c": state.copy()}]


# ============================================================================= detection
def crop_detections(inputs: dict[str, np.ndarray]) -> list[Request]:
    """One request per kept detection: ``crop`` (1x3x224x224, ImageNet-normalised) for a classifier.

    Inputs: ``frame`` (HxWx3 RGB uint8), ``boxes`` (1xAx4 x1,y1,x2,y2 in frame pixels) and
    ``scores`` (1xAxK class probabilities, class 0 = background), as the smart-city detector
    exports them. Each anchor's best foreground class scores it; boxes under DET_SCORE_MIN or of
    zero area are dropped; greedy NMS at DET_NMS_IOU; the best DET_MAX_CROPS are cropped.
    """
    frame = _frame_hwc(_take(inputs, "frame", "crop_detections", _is_frame, what=FRAME), "crop_detections")
    boxes = _take(inputs, "boxes", "crop_detections", lambda a: _is_float(a) and a.ndim == 3 and a.shape[-1] == 4,
                  what="1xAx4 boxes").reshape(-1, 4).astype(np.float32)
    scores = _take(inputs, "scores", "crop_detections", lambda a: _is_float(a) and a.ndim == 3 and a.shape[-1] > 4,
                   what="1xAxK class probabilities")
    scores = scores.reshape(-1, scores.shape[-1])
    if scores.shape[0] != boxes.shape[0]:
        raise ValueError(f"transform crop_detections: {boxes.shape[0]} boxes but {scores.shape[0]} score rows")
    h, w = frame.shape[:2]
    clipped = np.stack([np.clip(boxes[:, 0], 0, w), np.clip(boxes[:, 1], 0, h),
                        np.clip(boxes[:, 2], 0, w), np.clip(boxes[:, 3], 0, h)], axis=1)
    best = scores[:, 1:].max(axis=1)
    ok = (best >= DET_SCORE_MIN) & (clipped[:, 2] - clipped[:, 0] >= 1) & (clipped[:, 3] - clipped[:, 1] >= 1)
    cand = np.flatnonzero(ok)
    cand = cand[np.argsort(-best[cand], kind="stable")]
    kept = _nms(clipped[cand], DET_NMS_IOU, DET_MAX_CROPS)
    out = []
    for i in cand[kept]:
        x0, y0, x1, y1 = clipped[i]
        rows = slice(int(y0), max(int(y0) + 1, int(math.ceil(y1))))
        cols = slice(int(x0), max(int(x0) + 1, int(math.ceil(x1))))
        patch = frame[rows, cols]
        patch = cv2.resize(patch, (CROP_SIZE_PX, CROP_SIZE_PX), interpolation=cv2.INTER_LINEAR)
        chw = np.ascontiguousarray(patch.transpose(2, 0, 1), dtype=np.float32)  # (x/255 - mean)/std = x*a - b
        chw *= _CROP_SCALE
        chw -= _CROP_SHIFT
        out.append({"crop": chw[None]})
    return out


def _nms(boxes: np.ndarray, iou_max: float, keep_max: int) -> list[int]:
    """Greedy non-maximum suppression over boxes sorted best first; indices of at most keep_max kept."""
    kept: list[int] = []
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    suppressed = np.zeros(len(boxes), bool)
    for i in range(len(boxes)):
        if suppressed[i]:
            continue
        kept.append(i)
        if len(kept) == keep_max:
            break
        xx0 = np.maximum(boxes[i, 0], boxes[:, 0])
        yy0 = np.maximum(boxes[i, 1], boxes[:, 1])
        xx1 = np.minimum(boxes[i, 2], boxes[:, 2])
        yy1 = np.minimum(boxes[i, 3], boxes[:, 3])
        inter = np.clip(xx1 - xx0, 0, None) * np.clip(yy1 - yy0, 0, None)
        iou = inter / np.maximum(area[i] + area - inter, 1e-9)
        suppressed |= iou > iou_max
    return kept
