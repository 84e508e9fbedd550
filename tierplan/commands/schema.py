"""`tierplan schema app|fleet|device`: print the JSON Schema of a spec (for editor completion and checks)."""

from __future__ import annotations

import json
from enum import Enum
from typing import Any

import typer

__all__ = ["register", "json_schema"]


class SchemaKind(str, Enum):
    """Which spec to describe."""

    app = "app"
    fleet = "fleet"
    device = "device"


def json_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of app.yaml, fleet.yaml or a catalog device file."""
    from tierplan.spec import AppSpec, DeviceSpec, FleetSpec, Spec

    models: dict[str, type[Spec]] = {"app": AppSpec, "fleet": FleetSpec, "device": DeviceSpec}
    model = models[kind]
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"https://tierplan.dev/schema/{kind}.json", **schema}


def register(app: typer.Typer) -> None:
    """Add the `schema` verb."""

    @app.command("schema")
    def schema_cmd(
        kind: SchemaKind = typer.Argument(..., metavar="app|fleet|device", help="app (app.yaml), fleet (fleet.yaml) or device (catalog file)."),
    ) -> None:
        """Print the JSON Schema of app.yaml, fleet.yaml or a device file."""
        print(json.dumps(json_schema(kind.value), indent=2))
