"""PP-OCR transforms on real model outputs: boxes from the real detector, crops the real classifier
and recogniser read, greedy CTC decoding with the recogniser's own dictionary."""

from __future__ import annotations

import numpy as np
import pytest

from examples_support import load_example_module
from tierplan import transforms as T


@pytest.fixture(scope="module")
def inputs_mod():
    """examples/read-text/inputs.py."""
    return load_example_module("read-text")


@pytest.fixture(scope="module")
def charset(read_text_app):
    """The recogniser's classes, read from its ONNX metadata."""
    return T.ppocr_charset(str(read_text_app.resolve_path(read_text_app.models["recogniser"].onnx)))


def _detect(ocr_sessions, frame):
    x = T.ocr_normalize({"frame": frame})[0]["x"]
    return ocr_sessions["detector"].run(None, {"x": x})[0]


def _read(ocr_sessions, rec_input):
    """Classifier -> upright -> recogniser -> CTC on one crop; returns (ids request, cls probs)."""
    cls_x = T.orientation_crop({"rec_input": rec_input})[0]["x"]
    probs = ocr_sessions["orientation"].run(None, {"x": cls_x})[0]
    upright = T.rotate_upside_down({"rec_input": rec_input, "cls_probs": probs})[0]["x"]
    out = ocr_sessions["recogniser"].run(None, {"x": upright})[0]
    return T.ctc_greedy_decode({"probs": out})[0], probs


def test_ocr_normalize_layout_and_range(inputs_mod):
    """ocr_normalize gives 1x3xHxW float32 in [-1, 1], BGR channel order, leaving the frame untouched."""
    frame = inputs_mod.make_frame(0)
    before = frame.copy()
    x = T.ocr_normalize({"frame": frame})[0]["x"]
    assert x.shape == (1, 3, 480, 480) and x.dtype == np.float32
    assert x.min() >= -1.0 and x.max() <= 1.0
    np.testing.assert_allclose(x[0, 0, 5, 7], (frame[5, 7, 2] / 255.0 - 0.5) / 0.5, rtol=1e-6)
    np.testing.assert_array_equal(frame, before)


def test_real_detector_finds_every_rendered_line(ocr_sessions, inputs_mod):
    """On a frame with four rendered lines the real PP-OCRv4 detector + crop_text_boxes yields four crops."""
    frame = inputs_mod.make_frame(0)
    prob_map = _detect(ocr_sessions, frame)
    assert prob_map.shape == (1, 1, 480, 480)
    crops = T.crop_text_boxes({"frame": frame, "prob_map": prob_map})
    assert len(crops) == len(inputs_mod.sample_lines(0))
    for c in crops:
        assert set(c) == {"rec_input"}
        assert c["rec_input"].shape == (1, 3, 48, 320) and c["rec_input"].dtype == np.float32
    boxes = T.find_text_boxes(prob_map, frame.shape[:2])
    tops = [float(b[:, 1].min()) for b in boxes]
    assert tops == sorted(tops), "boxes come in reading order"


def test_real_pipeline_reads_the_rendered_text(ocr_sessions, inputs_mod, charset):
    """detector -> crops -> classifier -> recogniser -> CTC reads back the rendered words, line by line."""
    for seed in (0, 1):
        lines = inputs_mod.sample_lines(seed)
        crops = T.crop_text_boxes({"frame": inputs_mod.make_frame(seed),
                                   "prob_map": _detect(ocr_sessions, inputs_mod.make_frame(seed))})
        read = []
        for c in crops:
            req, probs = _read(ocr_sessions, c["rec_input"])
            assert req["text_ids"].shape == (1, 40) and req["text_ids"].dtype == np.int32
            assert np.argmax(probs) == 0, "upright text is classified as 0 degrees"
            read.append(T.decode_text(req["text_ids"], charset))
        words = {w for line in lines for w in line.split() if w.isalpha()}
        matched = sum(any(w in text.replace(" ", "") for w in words) for text in read)
        assert matched >= len(lines) - 1, (lines, read)


def test_upside_down_crop_is_detected_and_turned(ocr_sessions, inputs_mod, charset):
    """A crop turned 180 degrees is classified as upside down and rotate_upside_down restores its reading."""
    frame = inputs_mod.render_text_frame(["PLATFORM 42"], seed=3)
    crop = T.crop_text_boxes({"frame": frame, "prob_map": _detect(ocr_sessions, frame)})[0]["rec_input"]
    width = int(np.flatnonzero(np.any(crop[0] != 0, axis=(0, 1)))[-1]) + 1
    flipped = crop.copy()
    flipped[..., :width] = crop[..., :width][..., ::-1, ::-1]
    req, probs = _read(ocr_sessions, flipped)
    assert np.argmax(probs) == 1 and probs[0, 1] >= T.CLS_THRESHOLD
    assert "PLATFORM" in T.decode_text(req["text_ids"], charset)
    restored = T.rotate_upside_down({"rec_input": flipped, "cls_probs": probs})[0]["x"]
    np.testing.assert_array_equal(restored, crop)


def test_rotate_keeps_crop_when_classifier_is_unsure():
    """rotate_upside_down returns an equal copy when P(180) is below the threshold, never the input itself."""
    crop = np.random.default_rng(0).uniform(-1, 1, (1, 3, 48, 320)).astype(np.float32)
    out = T.rotate_upside_down({"rec_input": crop, "cls_probs": np.array([[0.2, 0.8]], np.float32)})[0]["x"]
    np.testing.assert_array_equal(out, crop)
    assert out is not crop


def test_orientation_crop_copies_narrow_and_squeezes_wide_lines():
    """orientation_crop copies a crop up to 192 wide and resizes a wider one to 192, padding with zeros."""
    narrow = np.zeros((1, 3, 48, 320), np.float32)
    narrow[..., :100] = 0.5
    out = T.orientation_crop({"rec_input": narrow})[0]["x"]
    assert out.shape == (1, 3, 48, 192)
    assert np.all(out[..., :100] == 0.5) and np.all(out[..., 100:] == 0)
    wide = np.full((1, 3, 48, 320), -0.25, np.float32)
    out = T.orientation_crop({"rec_input": wide})[0]["x"]
    np.testing.assert_allclose(out, -0.25, atol=1e-6)


def test_ctc_greedy_decode_merges_repeats_and_drops_blanks():
    """Greedy CTC: [blank, a, a, blank, a, b, b] decodes to [a, a, b], left-packed and zero-padded."""
    steps = [0, 5, 5, 0, 5, 7, 7]
    probs = np.full((1, len(steps), 10), 0.01, np.float32)
    probs[0, np.arange(len(steps)), steps] = 0.9
    out = T.ctc_greedy_decode({"probs": probs})[0]
    np.testing.assert_array_equal(out["text_ids"], [[5, 5, 7, 0, 0, 0, 0]])
    np.testing.assert_allclose(out["text_score"], [0.9])
    assert T.decode_text(out["text_ids"], ("blank", "a", "b", "c", "d", "x", "y", "z", "w", " ")) == "xxz"


def test_empty_frame_fans_out_to_nothing(ocr_sessions):
    """A blank frame gives no text boxes: the branch ends with an empty fan-out, not an error."""
    frame = np.full((480, 480, 3), 230, np.uint8)
    assert T.crop_text_boxes({"frame": frame, "prob_map": _detect(ocr_sessions, frame)}) == []


def test_missing_input_names_the_transform_and_the_fix():
    """A transform called without its input raises ValueError naming the transform, the input and the fix."""
    with pytest.raises(ValueError, match=r"crop_text_boxes: missing input 'prob_map'.*To fix"):
        T.crop_text_boxes({"frame": np.zeros((8, 8, 3), np.uint8)})


def test_inputs_named_by_producers_are_recognised(ocr_sessions, inputs_mod):
    """Tensors delivered under producer names (camera, sigmoid_0.tmp_0) give the same crops as the documented names."""
    frame = inputs_mod.make_frame(2)
    prob_map = _detect(ocr_sessions, frame)
    named = T.crop_text_boxes({"frame": frame, "prob_map": prob_map})
    by_producer = T.crop_text_boxes({"sigmoid_0.tmp_0": prob_map, "camera": frame})
    assert len(named) == len(by_producer) > 0
    for a, b in zip(named, by_producer):
        np.testing.assert_array_equal(a["rec_input"], b["rec_input"])


def test_ambiguous_unnamed_inputs_are_refused():
    """Two unnamed tensors that both fit one role are an error, never a guess."""
    crop = np.zeros((1, 3, 48, 320), np.float32)
    with pytest.raises(ValueError, match="rotate_upside_down: missing input 'rec_input'"):
        T.rotate_upside_down({"a": crop, "b": crop, "orientation": np.array([[1.0, 0.0]], np.float32)})
