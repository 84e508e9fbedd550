"""The transport is its own module: the controller and deploy import runtime.transport and
runtime.options, never the stage worker (issue 15, item 4)."""

import ast
from pathlib import Path

from tierplan.runtime import options, stage, transport

RUNTIME = Path(transport.__file__).resolve().parent


def _imports(path: Path) -> set[str]:
    """Every module a file imports, lazy imports inside functions included."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_controller_and_transport_do_not_import_the_worker():
    """service (the controller), deploy, transport and options never import runtime.stage."""
    for name in ("service.py", "deploy.py", "transport.py", "options.py"):
        assert "tierplan.runtime.stage" not in _imports(RUNTIME / name), name


def test_stage_keeps_the_old_names():
    """Callers that imported the transport from runtime.stage get the very same objects."""
    assert stage.Sender is transport.Sender
    assert stage.delivery_handlers is transport.delivery_handlers
    assert stage.pick_address is transport.pick_address and stage.rotating is transport.rotating
    assert stage.StageOptions is options.StageOptions
    assert stage.LINKS_DIR_MARKER == options.LINKS_DIR_MARKER
