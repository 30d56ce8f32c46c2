"""Field ownership for server-side apply, kept coarse on purpose.

A "field" here is one top-level key under spec/status/data (`.spec.replicas`, `.spec.template`,
`.data.DATABASE_URL`), one label or annotation (`.metadata.labels.app`), or any other top-level key
(`.rules`, `.subjects`). The real server tracks every leaf; at this granularity the behaviour a deploy
tool relies on is still real: a manager owns what it applied, a different value from another manager is
a conflict unless forced, shared equal values are co-owned, and fields a manager stops applying are
removed when nobody else owns them. Ownership lives in metadata.managedFields (FieldsV1), like the real
thing, so tests and clients can read it back.
"""

from __future__ import annotations

import copy
from typing import Any

Path = tuple[str, ...]

_SPLIT_TOPS = ("spec", "status", "data", "binaryData")
_SKIP_TOPS = ("apiVersion", "kind", "metadata")


def field_paths(obj: dict[str, Any]) -> set[Path]:
    paths: set[Path] = set()
    meta = obj.get("metadata") or {}
    for section in ("labels", "annotations"):
        for key in meta.get(section) or {}:
            paths.add(("metadata", section, key))
    for top, value in obj.items():
        if top in _SKIP_TOPS:
            continue
        if top in _SPLIT_TOPS and isinstance(value, dict):
            paths.update((top, key) for key in value)
        else:
            paths.add((top,))
    return paths


_MISSING = object()


def get_path(obj: dict[str, Any], path: Path) -> Any:
    node: Any = obj
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def set_path(obj: dict[str, Any], path: Path, value: Any) -> None:
    node = obj
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[path[-1]] = copy.deepcopy(value)


def del_path(obj: dict[str, Any], path: Path) -> None:
    node: Any = obj
    for part in path[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(path[-1], None)


def same_value(a: dict[str, Any], b: dict[str, Any], path: Path) -> bool:
    return get_path(a, path) == get_path(b, path)


def dotted(path: Path) -> str:
    return "." + ".".join(path)


def to_fields_v1(paths: set[Path]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for path in sorted(paths):
        node = root
        for part in path:
            node = node.setdefault(f"f:{part}", {})
    return root


def from_fields_v1(fields: dict[str, Any]) -> set[Path]:
    """Inverse of to_fields_v1: the leaves are the owned paths."""
    out: set[Path] = set()

    def walk(node: dict[str, Any], prefix: Path) -> None:
        if not node and prefix:
            out.add(prefix)
        for key, child in node.items():
            if key.startswith("f:"):
                walk(child or {}, prefix + (key[2:],))
            elif key == ".":
                out.add(prefix)

    walk(fields or {}, ())
    return out


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge recursively, null deletes, anything else replaces.

    Strategic merge patches are applied with this too: lists are replaced whole instead of merged by
    key (e.g. containers by name). Deploy tools here patch whole lists, so the difference does not show.
    """
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):  # strategic-merge directives ($patch, $setElementOrder/...)
            continue
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result
