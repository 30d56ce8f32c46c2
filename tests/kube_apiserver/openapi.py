"""OpenAPI v3 for the kinds this server serves, and the field validation (`fieldValidation`) it enables.

The schemas come from the `kubernetes` client's generated models (`openapi_types` / `attribute_map`), which
are generated from the real server's OpenAPI: same field names and nesting. kubectl reads
`/openapi/v3` to learn that a kind's PATCH takes `fieldValidation`, then leaves validation to the
server, which rejects (Strict) or warns about (Warn, the default) fields the schema does not declare.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from typing import Any

from .resources import RESOURCES, Resource

_PRIMITIVES: dict[str, dict[str, Any]] = {
    "str": {"type": "string"},
    "int": {"type": "integer", "format": "int64"},
    "float": {"type": "number", "format": "double"},
    "bool": {"type": "boolean"},
    "datetime": {"type": "string", "format": "date-time"},
    "date": {"type": "string", "format": "date"},
    "bytes": {"type": "string", "format": "byte"},
    "object": {},  # IntOrString, RawExtension, FieldsV1: anything goes
}
_LIST = re.compile(r"^[Ll]ist\[(.+)\]$")
_DICT = re.compile(r"^(?:dict\(str, (.+)\)|Dict\[str, (.+)\])$")
_CONTAINERS = ("list", "List", "dict", "Dict")


def _model(name: str) -> Any:
    from kubernetes import client

    return getattr(client, name)


def model_for(res: Resource) -> Any:
    """The client's model class of a served kind (core Events are `CoreV1Event`)."""
    from kubernetes import client

    return getattr(client, f"V1{res.kind}", None) or getattr(client, f"CoreV1{res.kind}")


def _schema_name(model_name: str) -> str:
    return f"io.k8s.api.{model_name}"


def _type_schema(type_name: str) -> dict[str, Any]:
    if type_name in _PRIMITIVES:
        return dict(_PRIMITIVES[type_name])
    if m := _LIST.match(type_name):
        return {"type": "array", "items": _type_schema(m.group(1))}
    if m := _DICT.match(type_name):
        return {"type": "object", "additionalProperties": _type_schema(m.group(1) or m.group(2))}
    return {"$ref": f"#/components/schemas/{_schema_name(type_name)}"}


def _collect(model_name: str, schemas: dict[str, dict[str, Any]]) -> None:
    name = _schema_name(model_name)
    if name in schemas:
        return
    model = _model(model_name)
    properties: dict[str, Any] = {}
    schemas[name] = {"type": "object", "properties": properties}
    for attr, type_name in model.openapi_types.items():
        properties[model.attribute_map[attr]] = _type_schema(type_name)
        for nested in re.findall(r"\w+", type_name):
            if nested not in _PRIMITIVES and nested not in _CONTAINERS:
                _collect(nested, schemas)


def _operation(res: Resource, verb: str) -> dict[str, Any]:
    params = [
        {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": True}},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": True}},
        {
            "name": "fieldValidation",
            "in": "query",
            "description": "Ignore, Warn (the default) or Strict: what to do with fields the schema lacks",
            "schema": {"type": "string", "uniqueItems": True},
        },
    ]
    if verb == "patch":
        params.append({"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": True}})
    return {
        "operationId": f"{verb}{res.kind}",
        "parameters": params if verb in ("patch", "put", "post") else [],
        "responses": {"200": {"description": "OK"}},
        "x-kubernetes-action": verb,
        "x-kubernetes-group-version-kind": {"group": res.group, "version": res.version, "kind": res.kind},
    }


def _prefix(res: Resource) -> str:
    return f"/apis/{res.group}/{res.version}" if res.group else f"/api/{res.version}"


@functools.cache
def group_version_document(group: str, version: str) -> dict[str, Any] | None:
    members = [r for r in RESOURCES if r.group == group and r.version == version]
    if not members:
        return None
    schemas: dict[str, dict[str, Any]] = {}
    paths: dict[str, Any] = {}
    for res in members:
        model_name = model_for(res).__name__
        _collect(model_name, schemas)
        schemas[_schema_name(model_name)]["x-kubernetes-group-version-kind"] = [
            {"group": res.group, "version": res.version, "kind": res.kind}
        ]
        scope = "/namespaces/{namespace}" if res.namespaced else ""
        paths[f"{_prefix(res)}{scope}/{res.plural}"] = {"get": _operation(res, "list"), "post": _operation(res, "post")}
        paths[f"{_prefix(res)}{scope}/{res.plural}/{{name}}"] = {
            verb: _operation(res, verb) for verb in ("get", "put", "patch", "delete")
        }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.30.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def _hash(document: dict[str, Any]) -> str:
    return hashlib.sha512(json.dumps(document, sort_keys=True).encode()).hexdigest()[:128].upper()


@functools.cache
def discovery_document() -> dict[str, Any]:
    """GET /openapi/v3: where each group version's document lives (the hash lets clients cache it)."""
    paths: dict[str, Any] = {}
    for gv in sorted({(r.group, r.version) for r in RESOURCES}):
        relative = f"apis/{gv[0]}/{gv[1]}" if gv[0] else f"api/{gv[1]}"
        document = group_version_document(*gv)
        assert document is not None
        paths[relative] = {"serverRelativeURL": f"/openapi/v3/{relative}?hash={_hash(document)}"}
    return {"paths": paths}


def document_for_path(parts: list[str]) -> dict[str, Any] | None:
    """The document for /openapi/v3/api/v1 or /openapi/v3/apis/GROUP/VERSION (parts after `v3`)."""
    if len(parts) == 2 and parts[0] == "api":
        return group_version_document("", parts[1])
    if len(parts) == 3 and parts[0] == "apis":
        return group_version_document(parts[1], parts[2])
    return None


def unknown_fields(res: Resource, body: Any) -> list[str]:
    """The dotted paths in `body` that the kind's schema does not declare (`spec.replicass`)."""
    document = group_version_document(res.group, res.version)
    assert document is not None
    schemas = document["components"]["schemas"]
    found: list[str] = []
    _walk(schemas, {"$ref": f"#/components/schemas/{_schema_name(model_for(res).__name__)}"}, body, "", found)
    return found


def _walk(schemas: dict[str, Any], schema: dict[str, Any], value: Any, path: str, found: list[str]) -> None:
    if "$ref" in schema:
        schema = schemas[schema["$ref"].rsplit("/", 1)[1]]
    if isinstance(value, dict) and "properties" in schema:
        for key, item in value.items():
            where = f"{path}.{key}" if path else key
            if key not in schema["properties"]:
                found.append(where)
            else:
                _walk(schemas, schema["properties"][key], item, where, found)
    elif isinstance(value, dict) and "additionalProperties" in schema:
        for key, item in value.items():
            _walk(schemas, schema["additionalProperties"], item, f"{path}.{key}", found)
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            _walk(schemas, schema["items"], item, f"{path}[{index}]", found)
