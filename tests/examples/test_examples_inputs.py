"""The examples' sample-input generators give one request per source, shaped as the sources declare."""

from __future__ import annotations

import numpy as np
import pytest

from examples_support import EXAMPLES, load_example_module
from tierplan.loader import load_app


@pytest.mark.parametrize("name", ["read-text", "smart-city"])
def test_make_inputs_matches_sources(name):
    """make_inputs(seed) returns exactly the app's sources, each with the declared shape and dtype."""
    app = load_app(EXAMPLES / name / "app.yaml")
    got = load_example_module(name).make_inputs(0)
    assert set(got) == set(app.sources)
    for src, spec in app.sources.items():
        assert got[src].shape == tuple(spec.shape), src
        assert got[src].dtype == np.dtype(spec.dtype), src


@pytest.mark.parametrize("name", ["read-text", "smart-city"])
def test_make_inputs_is_deterministic_per_seed(name):
    """The same seed gives the same arrays; another seed gives different ones."""
    mod = load_example_module(name)
    a, b, c = mod.make_inputs(4), mod.make_inputs(4), mod.make_inputs(5)
    for src in a:
        np.testing.assert_array_equal(a[src], b[src])
        assert not np.array_equal(a[src], c[src])


def test_read_text_frame_has_dark_text_on_light_background():
    """The read-text frame is mostly light with some dark (text) pixels; the audio stays within [-1, 1]."""
    got = load_example_module("read-text").make_inputs(0)
    grey = got["camera"].mean(axis=2)
    assert np.median(grey) > 180 and 0.005 < (grey < 100).mean() < 0.2
    assert np.abs(got["microphone"]).max() <= 1.0
