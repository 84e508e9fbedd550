"""VAD framing and detection crops on real model outputs (Silero VAD; the smart-city SSDlite and MobileNetV3)."""

from __future__ import annotations

import numpy as np
import pytest

from examples_support import load_example_module
from tierplan import transforms as T


def test_audio_frames_layout():
    """audio_frames makes N//512 windows of 576 samples, each with the 64 samples before it, and zero state."""
    audio = np.arange(8192 + 100, dtype=np.float32)[None]
    req = T.audio_frames({"audio": audio})[0]
    assert req["input"].shape == (16, 576) and req["input"].dtype == np.float32
    np.testing.assert_array_equal(req["input"][0, :64], 0)
    np.testing.assert_array_equal(req["input"][0, 64:], np.arange(512))
    np.testing.assert_array_equal(req["input"][3], np.arange(3 * 512 - 64, 4 * 512))
    assert req["h"].shape == req["c"].shape == (1, 1, 128) and not req["h"].any()


def test_audio_frames_refuses_short_chunk():
    """A chunk shorter than one VAD window is an error naming the transform."""
    with pytest.raises(ValueError, match="audio_frames: need at least 512 samples"):
        T.audio_frames({"audio": np.zeros((1, 100), np.float32)})


def test_real_vad_hears_the_voiced_half(ocr_sessions):
    """On the sample chunk (quiet first half, voiced second half) Silero VAD scores the voiced half higher."""
    inputs = load_example_module("read-text")
    for seed in range(3):
        req = T.audio_frames({"audio": inputs.make_audio(seed)})[0]
        probs = ocr_sessions["vad"].run(["speech_probs"], req)[0]
        assert probs.shape == (16,)
        assert probs[8:].mean() > probs[:8].mean() + 0.2, probs


def test_real_detector_fans_out_to_classifier_crops(city_sessions):
    """The smart-city detector's boxes and scores give DET_MAX_CROPS normalised 224x224 crops the classifier takes."""
    frame = load_example_module("smart-city").make_frame(0)
    before = frame.copy()
    boxes, scores = city_sessions["detector"].run(["boxes", "scores"], {"frame": frame})
    assert boxes.shape == (1, 3234, 4) and scores.shape == (1, 3234, 91)
    crops = T.crop_detections({"frame": frame, "boxes": boxes, "scores": scores})
    assert len(crops) == T.DET_MAX_CROPS
    for c in crops:
        assert c["crop"].shape == (1, 3, 224, 224) and c["crop"].dtype == np.float32
        probs = city_sessions["classifier"].run(["class_probs"], c)[0]
        assert probs.shape == (1, 8) and abs(float(probs.sum()) - 1.0) < 1e-4
    np.testing.assert_array_equal(frame, before)


def test_crop_detections_suppresses_overlaps_and_ranks_by_score():
    """NMS keeps the best of two overlapping boxes, drops background-only and empty boxes, best first."""
    frame = np.zeros((1, 100, 100, 3), np.uint8)
    frame[0, 60:90, 60:90] = 200            # the third box's content: bright
    boxes = np.array([[[10, 10, 50, 50], [12, 12, 52, 52], [60, 60, 90, 90], [5, 5, 5, 40], [0, 0, 20, 20]]],
                     np.float32)
    scores = np.zeros((1, 5, 3), np.float32)
    scores[0, :, 0] = 1.0
    scores[0, 0] = [0.2, 0.8, 0.0]          # best
    scores[0, 1] = [0.3, 0.7, 0.0]          # overlaps the best: suppressed
    scores[0, 2] = [0.4, 0.0, 0.6]          # second
    scores[0, 3] = [0.1, 0.9, 0.0]          # zero width: dropped
    crops = T.crop_detections({"frame": frame, "boxes": boxes, "scores": scores})
    assert len(crops) == 2
    bright = (200 / 255.0 - T.IMAGENET_MEAN) / T.IMAGENET_STD
    np.testing.assert_allclose(crops[1]["crop"][0, :, 112, 112], bright, rtol=1e-5)
    assert crops[0]["crop"][0, 0].mean() < crops[1]["crop"][0, 0].mean()


def test_crop_detections_rejects_mismatched_outputs():
    """Boxes and score rows of different counts are an error naming the transform."""
    with pytest.raises(ValueError, match="crop_detections: 3 boxes but 2 score rows"):
        T.crop_detections({"frame": np.zeros((32, 32, 3), np.uint8), "boxes": np.zeros((1, 3, 4), np.float32),
                           "scores": np.zeros((1, 2, 5), np.float32)})
