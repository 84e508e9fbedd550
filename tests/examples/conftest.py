"""Session fixtures for the examples' tests: the example apps and onnxruntime sessions of their models."""

from __future__ import annotations

import pytest

from examples_support import EXAMPLES, session


@pytest.fixture(scope="session")
def read_text_app():
    """examples/read-text/app.yaml, loaded."""
    from tierplan.loader import load_app
    return load_app(EXAMPLES / "read-text" / "app.yaml")


@pytest.fixture(scope="session")
def smart_city_app():
    """examples/smart-city/app.yaml, loaded."""
    from tierplan.loader import load_app
    return load_app(EXAMPLES / "smart-city" / "app.yaml")


@pytest.fixture(scope="session")
def ocr_sessions(read_text_app):
    """onnxruntime sessions of the read-text models, by model name."""
    app = read_text_app
    return {name: session(app.resolve_path(m.onnx)) for name, m in app.models.items()}


@pytest.fixture(scope="session")
def city_sessions(smart_city_app):
    """onnxruntime sessions of the smart-city models, by model name."""
    app = smart_city_app
    return {name: session(app.resolve_path(m.onnx)) for name, m in app.models.items()}
