"""conveyor.yml as plain data, unvalidated and without loading pydantic: a cheap early look, for hints
only (see pipeline.early_log). Everything that acts on the config uses config.loader's validated model."""

from __future__ import annotations

from pathlib import Path

import yaml

CONFIG_NAME = "conveyor.yml"


def peek_raw(path: Path) -> dict[str, object]:
    """The parsed YAML mapping, or {} if the file is unreadable or not a mapping."""
    try:
        data = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}
