"""Read conveyor.yml: YAML parse, then model validation, every problem reported at once with file:line.

PyYAML's node tree keeps the line of every key, so a pydantic error location (a key path) maps back
to the line the user has to fix. The file is untrusted input (it may come from any commit), so reading
and parsing are bounded: its size, its nesting depth, and how far its aliases expand.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from conveyor.config import CONFIG_NAME
from conveyor.config.base import Strict
from conveyor.config.models import AppConfig, ConfigProblems, quoted
from conveyor.config.notify import Notify
from conveyor.errors import BadInput

KeyPath = tuple[Any, ...]
M = TypeVar("M", bound=BaseModel)

MAX_CONFIG_BYTES = 1024 * 1024  # a real conveyor.yml is a few KB; this stops /dev/zero and runaway files
MAX_DEPTH = 32  # conveyor's own schema nests 5 levels; deeper is a mistake or an attack on the recursion
# Anchors and aliases are bounded, not refused: sharing `env:` or `health:` between environments with
# `&common` / `*common` is a legitimate use. What is refused is a document whose aliases expand into more
# values than any real config holds (a "billion laughs"), before anything walks the expanded tree.
MAX_EXPANDED_NODES = 20_000
MAX_PROBLEMS_SHOWN = 20  # past this, a config is broken wholesale: the first ones say how


def load_config(path: Path) -> AppConfig:
    return parse_config(_read_bounded(path), str(path))


def parse_config(text: str | bytes, filename: str = CONFIG_NAME) -> AppConfig:
    return _parse(AppConfig, text, filename, "app, image, environments, …")


def load_notify(path: Path) -> Notify:
    """A server's org-wide destinations: a YAML file whose `notify:` has the shape conveyor.yml's has, with
    the same file:line errors."""
    return _parse(NotifyFile, _read_bounded(path), str(path), "notify").notify


class NotifyFile(Strict):
    notify: Notify


def _parse(model: type[M], text: str | bytes, filename: str, keys: str) -> M:
    text = _as_text(text, filename)
    node = _compose(text, filename)
    lines = _key_lines(node)
    data = _construct(node, filename)
    if not isinstance(data, dict):
        raise BadInput(f"{filename}:1: the config must be a mapping of keys ({keys})")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [p for err in exc.errors() for p in _describe(err, lines, filename)]
        header = f"{filename}: {len(problems)} problem{'s' if len(problems) != 1 else ''} in the config:"
        shown = [f"  {p}" for p in problems[:MAX_PROBLEMS_SHOWN]]
        if len(problems) > MAX_PROBLEMS_SHOWN:
            shown.append(f"  … and {len(problems) - MAX_PROBLEMS_SHOWN} more")
        raise BadInput("\n".join([header, *shown])) from None


def config_digest(config: AppConfig) -> str:
    canonical = json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


# ------------------------------------------------------------------------------------------- reading


def _read_bounded(path: Path) -> bytes:
    """At most MAX_CONFIG_BYTES + 1 bytes of the file, with every way opening it can fail as BadInput."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file (conveyor reads {CONFIG_NAME} at the app repo's root)") from None
    except IsADirectoryError:
        raise BadInput(f"{path}: is a directory; --config takes the path of the {CONFIG_NAME} file") from None
    except OSError as exc:
        raise BadInput(f"{path}: cannot read it: {exc.strerror or type(exc).__name__}") from None
    return data


def _as_text(text: str | bytes, filename: str) -> str:
    size = len(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
    if size > MAX_CONFIG_BYTES:
        raise BadInput(f"{filename}: larger than {MAX_CONFIG_BYTES // 1024} KB; that is not a conveyor config")
    if isinstance(text, str):
        return text
    try:
        return text.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = text[:exc.start].count(b"\n") + 1
        column = exc.start - (text.rfind(b"\n", 0, exc.start) + 1) + 1
        raise BadInput(f"{filename}:{line}:{column}: not UTF-8 (byte 0x{text[exc.start]:02x}); "
                       "save the file as UTF-8") from None


# ------------------------------------------------------------------------------------------- parsing


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses nesting deeper than MAX_DEPTH while composing (PyYAML composes recursively)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"values nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark
                )
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self._depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        # PyYAML lets a few malformed scalars escape as plain Python errors (a date 2026-13-45); locate them.
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read the value {quoted(node.value)}: {exc}", node.start_mark
            ) from None


def _compose(text: str, filename: str) -> yaml.Node | None:
    try:
        loader = _BoundedLoader(text)  # the reader checks every character here
    except yaml.YAMLError as exc:
        raise BadInput(_yaml_problem(exc, text, filename)) from None
    try:
        node = loader.get_single_node()
    except yaml.YAMLError as exc:
        raise BadInput(_yaml_problem(exc, text, filename)) from None
    finally:
        loader.dispose()
    _check_expansion(node, filename)
    _check_duplicate_keys(node, filename)
    return node


def _construct(node: yaml.Node | None, filename: str) -> Any:
    if node is None:
        return None
    loader = _BoundedLoader("")
    try:
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise BadInput(_yaml_problem(exc, "", filename)) from None
    finally:
        loader.dispose()


def _yaml_problem(exc: yaml.YAMLError, text: str, filename: str) -> str:
    mark = getattr(exc, "problem_mark", None)
    if isinstance(exc, yaml.reader.ReaderError):
        line = text[:exc.position].count("\n") + 1
        return f"{filename}:{line}: invalid YAML: character {exc.character:#06x} is not allowed in a YAML file"
    where = f"{filename}:{mark.line + 1}:{mark.column + 1}" if mark else filename
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    if context and not context.startswith("while"):
        problem = f"{context}, {problem}"  # "expected a single document in the stream, but found another…"
    return f"{where}: invalid YAML: {problem}"


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expansion(root: yaml.Node | None, filename: str) -> None:
    """Refuse an alias that refers to its own ancestor, or aliases expanding past MAX_EXPANDED_NODES values.

    Sizes are counted once per distinct node (aliases share nodes), so this costs the document's size,
    not its expansion."""
    if root is None:
        return
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise BadInput(f"{filename}:{node.start_mark.line + 1}: invalid YAML: an alias refers to a value "
                           "that contains it")
        open_nodes.add(key)
        total = 1 + sum(size(child) for child in _children(node))
        open_nodes.discard(key)
        sizes[key] = total
        return total

    total = size(root)
    if total > MAX_EXPANDED_NODES:
        raise BadInput(f"{filename}: its anchors and aliases expand to {total:,} values (the limit is "
                       f"{MAX_EXPANDED_NODES:,}); share less through aliases")


def _check_duplicate_keys(root: yaml.Node | None, filename: str) -> None:
    """A key given twice in one mapping is an error naming both lines (YAML would silently keep the last)."""
    seen_nodes: set[int] = set()
    pending = [root] if root is not None else []
    while pending:
        node = pending.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first_line: dict[str, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                line = key_node.start_mark.line + 1
                if key_node.value in first_line:
                    where = f"lines {first_line[key_node.value]} and {line}" if first_line[key_node.value] != line \
                        else f"twice on line {line}"
                    raise BadInput(f"{filename}:{line}: key {quoted(key_node.value)} is given twice ({where}); "
                                   "keep one")
                first_line[key_node.value] = line
        pending.extend(_children(node))




# ---------------------------------------------------------------------------------------- validation

# What each pattern in config.models means, in the config's own words.
_PATTERN_MEANING = {
    "NAME": "use lowercase letters, digits and '-' (not at the start or end)",
    "ENV_VAR": "not a valid environment variable name (letters, digits and '_', not starting with a digit)",
    "K8S_NAME": "not a Kubernetes name (lowercase letters, digits and '-', at most 63 characters)",
    "K8S_RESOURCE": "give a Kubernetes kind, or kind/name: Deployment, Deployment/web",
    "REF_PREFIX": "use only letters, digits and . _ / -",
}

_TYPE_MEANING = {
    "extra_forbidden": "unknown key",
    "missing": "missing required key",
    "int_type": "expected a whole number",
    "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "string_type": "expected a text value",
    "list_type": "expected a list",
    "dict_type": "expected a mapping of keys",
    "model_type": "expected a mapping of keys",
    "model_attributes_type": "expected a mapping of keys",
    "finite_number": "expected a finite number",
}


def _describe(err: Any, lines: dict[KeyPath, int], filename: str) -> list[str]:
    loc: KeyPath = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, ConfigProblems):
        return [_problem_line(filename, lines, (*loc, *p.loc), p.message, None if p.other is None else (*loc, *p.other))
                for p in cause.problems]
    return [_problem_line(filename, lines, loc, _message(err))]


def _problem_line(filename: str, lines: dict[KeyPath, int], loc: KeyPath, message: str,
                  other: KeyPath | None = None) -> str:
    path = _format_path(loc) or "(top level)"
    if other is not None:
        message += f" (also at line {_nearest_line(other, lines)}, {_format_path(other)})"
    return f"{filename}:{_nearest_line(loc, lines)}: {path}: {message}"


def _message(err: Any) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind in _TYPE_MEANING:
        return _TYPE_MEANING[kind]
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"])
    if kind == "string_pattern_mismatch":
        from conveyor.config import models

        named = {getattr(models, name, None): meaning for name, meaning in _PATTERN_MEANING.items()}
        return named.get(ctx.get("pattern"), "not in the expected form")
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        words = {"greater_than": "more than", "greater_than_equal": "at least", "less_than": "less than",
                 "less_than_equal": "at most"}[kind]
        bound = next(iter(ctx.values()), "")
        return f"must be {words} {bound}"
    if kind in ("too_short", "string_too_short"):
        return "must not be empty"
    if kind == "literal_error":
        return f"must be one of: {ctx.get('expected', '')}".replace("'", "")
    return str(err["msg"]).removeprefix("Value error, ").removeprefix("Input should be ")


def _nearest_line(loc: KeyPath, lines: dict[KeyPath, int]) -> int:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return 1


def _format_path(loc: KeyPath) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = str(part) if str(part).replace("_", "a").replace("-", "a").isalnum() else quoted(part)
            out += f".{name}" if out else name
    return out


def _key_lines(node: yaml.Node | None, prefix: KeyPath = ()) -> dict[KeyPath, int]:
    """Map every key path in the YAML document to its 1-based line (scalar keys only: others are errors)."""
    found: dict[KeyPath, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            path = (*prefix, key_node.value)
            found.setdefault(path, key_node.start_mark.line + 1)
            found.update(_key_lines(value_node, path))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            path = (*prefix, index)
            found[path] = item.start_mark.line + 1
            found.update(_key_lines(item, path))
    return found
