"""Jinja2 templates for the files conveyor writes into an app repo (conveyor.yml, CI pipelines, the README's
deploy section).

Why Jinja2 rather than string.Template: these files are mostly prose and comments with a few loops and
optional sections (one block per environment, a policy only where one applies); in a template they read as
the file they produce, where string.Template would push every loop and condition back into Python strings.
Values go through the `yaml` filter (a JSON string is a YAML double-quoted scalar), so no value typed on the
command line can change a file's structure. Imported lazily: `conveyor --help` never loads it.
"""

from __future__ import annotations

import json
import shlex
from functools import lru_cache
from typing import Any


def render(name: str, **values: Any) -> str:
    return _environment().get_template(name).render(**values)


def yaml_scalar(value: Any) -> str:
    """VALUE as a YAML flow scalar that reads back as exactly itself."""
    return json.dumps(value, ensure_ascii=False)


def yaml_block(text: str, indent: int) -> str:
    """TEXT as a YAML literal block (`|-`) indented INDENT spaces: a shell command stays readable, and
    since every line is indented, no line of it can end the block."""
    lines = [(" " * indent + line) if line else "" for line in text.splitlines()]
    return "|-\n" + "\n".join(lines)


def duration(seconds: float) -> str:
    """Seconds as the config spells durations: 24h, 30m, 90s."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


@lru_cache(maxsize=1)
def _environment() -> Any:
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("conveyor.pipeline", "templates"), undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, autoescape=False,
    )
    environment.filters["yaml"] = yaml_scalar
    environment.filters["block"] = yaml_block
    environment.filters["shell"] = shlex.join
    environment.filters["duration"] = duration
    return environment
