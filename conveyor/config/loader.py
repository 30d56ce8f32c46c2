"""Read conveyor.yml: YAML parse, then model validation, every problem reported at once with file:line.

PyYAML's node tree keeps the line of every key, so a pydantic error location (a key path) maps back
to the line the user has to fix.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from conveyor.config import CONFIG_NAME
from conveyor.config.models import AppConfig
from conveyor.errors import BadInput

KeyPath = tuple[str | int, ...]


def load_config(path: Path) -> AppConfig:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file (conveyor reads {CONFIG_NAME} at the app repo's root)") from None
    return parse_config(text, str(path))


def parse_config(text: str, filename: str = CONFIG_NAME) -> AppConfig:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{filename}:{mark.line + 1}:{mark.column + 1}" if mark else filename
        problem = getattr(exc, "problem", None) or str(exc)
        raise BadInput(f"{where}: invalid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise BadInput(f"{filename}:1: the config must be a mapping of keys (app, image, environments, …)")
    lines = _key_lines(node)
    try:
        return AppConfig.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(err, lines, filename) for err in exc.errors()]
        header = f"{filename}: {len(problems)} problem{'s' if len(problems) != 1 else ''} in the config:"
        raise BadInput("\n".join([header, *(f"  {p}" for p in problems)])) from None


def config_digest(config: AppConfig) -> str:
    canonical = json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def _describe(err: Any, lines: dict[KeyPath, int], filename: str) -> str:
    loc: KeyPath = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    line = _nearest_line(loc, lines)
    path = _format_path(loc) or "(top level)"
    message = err["msg"]
    if err["type"] == "extra_forbidden":
        message = "unknown key"
    elif err["type"] == "missing":
        message = "missing required key"
    return f"{filename}:{line}: {path}: {message}"


def _nearest_line(loc: KeyPath, lines: dict[KeyPath, int]) -> int:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return 1


def _format_path(loc: KeyPath) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _key_lines(node: yaml.Node | None, prefix: KeyPath = ()) -> dict[KeyPath, int]:
    """Map every key path in the YAML document to its 1-based line."""
    found: dict[KeyPath, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = (*prefix, key_node.value)
            found[path] = key_node.start_mark.line + 1
            found.update(_key_lines(value_node, path))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            path = (*prefix, index)
            found[path] = item.start_mark.line + 1
            found.update(_key_lines(item, path))
    return found
