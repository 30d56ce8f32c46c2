"""The JSON Schema of conveyor.yml, generated from the pydantic models (for editors and CI).

pydantic describes each model as it is typed; three things need the schema's own words:
- an environment's `target:` is validated by the model its `type:` names (config.models dispatches at run
  time), so the schema lists every registered target type, chosen by `type` (absent means container-host);
- a few keys also take a shorter spelling that a `mode="before"` validator turns into the typed value
  (`release_refs: false`, `notify:` as a plain list, durations such as `30m`, ssh-hosts' `parallel: 2`);
- pydantic's own `TargetSettings` stand-in is not a real target and is dropped.
The published copy is docs/schemas/conveyor.schema.json; tests/test_init_docs.py fails when it is stale.
"""

from __future__ import annotations

import json
from typing import Any

DRAFT = "https://json-schema.org/draft/2020-12/schema"
DURATION_TEXT = r"^\s*\d+(\.\d+)?\s*[smhd]?\s*$"  # config.forge.DURATION, in the schema's words


def config_schema() -> dict[str, Any]:
    """conveyor.yml's JSON Schema (draft 2020-12), the same on every machine for the same models."""
    from pydantic.json_schema import models_json_schema

    import conveyor.targets.settings  # noqa: F401  (registers each target type's settings model)
    from conveyor.config.models import AppConfig, target_settings, target_types

    kinds = sorted(target_types())
    models = [(AppConfig, "validation"), *((target_settings(kind), "validation") for kind in kinds)]
    keyed, combined = models_json_schema(models, ref_template="#/$defs/{model}")  # type: ignore[arg-type]
    defs: dict[str, Any] = combined["$defs"]
    refs = {kind: keyed[(target_settings(kind), "validation")]["$ref"] for kind in kinds}
    defs["Environment"]["properties"]["target"] = _target_by_type(refs)
    defs.pop("TargetSettings", None)
    _accept_short_spellings(defs)
    app = defs.pop("AppConfig")
    return {"$schema": DRAFT, "title": "conveyor.yml", **app, "$defs": defs}


def schema_text() -> str:
    """The schema as `conveyor schema` prints it and docs/schemas/conveyor.schema.json holds it."""
    return json.dumps(config_schema(), indent=2, sort_keys=True) + "\n"


def _target_by_type(refs: dict[str, str]) -> dict[str, Any]:
    from conveyor.config.models import DEFAULT_TARGET_TYPE

    def chosen_by(kind: str) -> dict[str, Any]:
        # A target without `type:` is a container-host one: `properties` holds vacuously when the key is absent.
        condition: dict[str, Any] = {"properties": {"type": {"const": kind}}}
        if kind != DEFAULT_TARGET_TYPE:
            condition["required"] = ["type"]
        return {"if": condition, "then": {"$ref": refs[kind]}}

    return {
        "type": "object",
        "description": f"Where the environment runs; `type` chooses the settings (default {DEFAULT_TARGET_TYPE}).",
        "properties": {"type": {"enum": list(refs), "default": DEFAULT_TARGET_TYPE}},
        "allOf": [chosen_by(kind) for kind in refs],
    }


def _accept_short_spellings(defs: dict[str, Any]) -> None:
    app = defs["AppConfig"]["properties"]
    app["release_refs"] = {"anyOf": [{"type": "boolean", "description": "false: push no refs; true: the defaults."},
                                     app["release_refs"]]}
    app["notify"] = {"anyOf": [{"type": "array", "items": {"$ref": "#/$defs/Destination"}}, app["notify"]],
                     "description": app["notify"].get("description", "")}
    for model, key in (("CIGate", "timeout"), ("ReleasePR", "auto_merge_after")):
        field = defs[model]["properties"][key]
        field["anyOf"] = [*field.pop("anyOf", [{"type": field.pop("type", "number")}]),
                          {"type": "string", "pattern": DURATION_TEXT}]
        field.pop("exclusiveMinimum", None)
        for choice in field["anyOf"]:
            if choice.get("type") == "number":
                choice["exclusiveMinimum"] = 0
    ssh = defs.get("SSHHostsTarget")
    if ssh is not None:
        parallel = ssh["properties"]["parallel"]
        ssh["properties"]["parallel"] = {"anyOf": [{"type": "string", "pattern": r"^[1-9][0-9]*%?$"},
                                                   {"type": "integer", "minimum": 1}],
                                         "default": parallel.get("default"),
                                         "description": parallel.get("description", "")}
