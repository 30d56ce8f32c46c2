"""Fuzz the two front doors of conveyor with generated and mutated input: the config loader
(`config.loader.parse_config`, text and bytes) and the CLI's argument parsing (click's `make_context`, plus
the `--until` parser; no operation is executed).

Every input must end in a result or one of conveyor's own errors (BadInput, a click usage error) within
2 s. Prints the inputs tried, the tracebacks (anything else raised; must be 0), the hangs over 2 s (must be
0) and the peak memory of the process (resident set, from `resource`).

    .venv/bin/python bench/fuzz_config.py [--configs N] [--argv N] [--seed N]

tests/test_fuzz.py runs a bounded, derandomized version of the same functions.
"""

from __future__ import annotations

import argparse
import copy
import io
import resource
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HANG_SECONDS = 2.0

BASE: dict[str, Any] = {
    "app": "hello",
    "image": "127.0.0.1:5000/hello",
    "registry": {"insecure": True},
    "build": {"context": ".", "dockerfile": "Dockerfile", "builder": "auto", "args": {"V": "1"}},
    "release_refs": {"remote": "origin", "env_tag": True, "prefix": "deploy/"},
    "migrations": ["db/migrate/"],
    "tasks": [{"name": "migrate", "command": ["bin/migrate"], "timeout": 300}],
    "environments": [
        {"name": "staging", "target": {"type": "container-host", "port": 8001}, "env": {"A": "1"},
         "health": {"path": "/", "timeout": 10}, "tasks": ["migrate"]},
        {"name": "production", "target": {"type": "container-host", "port": 8002}, "secrets": ["DB_PASSWORD"],
         "policy": {"require_promotion_from": "staging"}},
        {"name": "kube", "target": {"type": "kubernetes", "namespace": "web", "manifests": "deploy/",
                                    "timeouts": {"Deployment/web": 600}}},
    ],
}

KEYS = ["app", "image", "registry", "build", "tasks", "release_refs", "migrations", "environments", "name",
        "target", "type", "port", "env", "secrets", "health", "policy", "require_promotion_from", "command",
        "timeout", "namespace", "manifests", "timeouts", "remote", "<<", "insecure", "bind", "engine"]

# Inputs that once crashed or hung conveyor: every run tries them first, then the generated ones.
KNOWN_ARGV = [
    ["history", "--limit", "99999999999999999999"], ["rollback", "staging", "--to", "999999999999999999999"],
    ["lock", "staging", "--reason", "x", "--until", "99999999999h"],
    ["lock", "staging", "--reason", "x", "--until", "9" * 30 + "w"],
    ["lock", "--org", "--reason", "x", "--until", "0m"],
    ["lock", "staging", "--reason", "x", "--until", "9999-12-31T23:59:59-12:00"],
]

SNIPPETS = [
    "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
    "e: [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n",
    "x: &x [1, *x]\n", "app: " + "[" * 200, "app: " + "{a: " * 300 + "1" + "}" * 300, "app: !!python/name:os.system\n",
    "app: !!binary '%%%'\n", "app: 2026-13-45\n", "app: 1e999999\n", "app: 0x" + "f" * 5000 + "\n",
    "app: " + "9" * 5000 + "\n", "? [a, b]\n: c\n", "? {a: 1}\n: c\n", "<<: 5\n", "<<: [1, 2]\n", "--- a\n--- b\n",
    "app: hello\napp: again\n", "\ufeffapp: hello\n", "%YAML 9.9\n---\na: 1\n", "%TAG ! tag:x,2000:\n--- !a 1\n",
    "app: \"\\uDC00\"\n", "\t\tapp: x\n", "app: *nothing\n", "&a a: &a b\n", "app: |\n  \x85\n",
]


@dataclass
class Tally:
    tried: int = 0
    accepted: int = 0
    tracebacks: list[str] = field(default_factory=list)
    hangs: list[str] = field(default_factory=list)
    slowest: float = 0.0

    def merge(self, other: Tally) -> None:
        self.tried += other.tried
        self.accepted += other.accepted
        self.tracebacks += other.tracebacks
        self.hangs += other.hangs
        self.slowest = max(self.slowest, other.slowest)


class _Hang(BaseException):
    """Raised by the alarm when one input runs past HANG_SECONDS (a BaseException so no handler eats it)."""


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    def ring(_signum: int, _frame: Any) -> None:
        raise _Hang

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _try(tally: Tally, label: str, action: Callable[[], object], expected: tuple[type[BaseException], ...]) -> None:
    tally.tried += 1
    started = time.perf_counter()
    try:
        with _deadline(HANG_SECONDS):
            action()
        tally.accepted += 1
    except _Hang:
        tally.hangs.append(label)
    except expected:
        pass
    except BaseException:  # noqa: BLE001 - anything else is the defect this bench counts
        tally.tracebacks.append(f"{label}\n{traceback.format_exc()}")
    tally.slowest = max(tally.slowest, time.perf_counter() - started)


# ------------------------------------------------------------------------------------------- configs

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20),
    st.sampled_from(["staging", "production", "-f", "Hello", "origin", "0", "", "container-host", "kubernetes",
                     "Deployment/web", "x" * 300, "DB_PASSWORD", "1w", "https://x", "a b"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), inner, max_size=4)),
    max_leaves=12,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


@st.composite
def mutated_structures(draw: st.DrawFn) -> Any:
    """BASE with a few values replaced by arbitrary ones, keys dropped, or keys added."""
    doc = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(_paths(doc)))
        if not path:
            continue
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "drop", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(values)
        elif action == "drop" and isinstance(parent, dict):
            parent.pop(path[-1], None)
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(KEYS))] = draw(values)
    return doc


def _dump(doc: Any) -> str:
    try:
        return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    except yaml.YAMLError:
        return repr(doc)


@st.composite
def mutated_bytes(draw: st.DrawFn, base: bytes) -> bytes:
    """The text with bytes flipped, inserted, deleted or a region duplicated."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        action = draw(st.sampled_from(["flip", "insert", "delete", "duplicate"]))
        if action == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif action == "insert":
            data[at:at] = draw(st.sampled_from([b"&a ", b"*a", b"{", b"[", b"\n  ", b"\xff", b"\x00", b": ", b"- ",
                                                 b"!!", b"'", b'"', b"\t", b"<<: *a\n", b"\xe9"]))
        elif action == "delete":
            del data[at:at + draw(st.integers(1, 8))]
        else:
            data[at:at] = data[at:at + draw(st.integers(1, 40))]
    return bytes(data)


BASE_TEXT = _dump(BASE).encode()

config_inputs = st.one_of(
    mutated_structures().map(_dump),
    values.map(_dump),
    mutated_bytes(BASE_TEXT),
    mutated_structures().map(lambda doc: _dump(doc).encode()).flatmap(mutated_bytes),
    st.tuples(st.sampled_from(SNIPPETS), st.booleans()).map(lambda s: s[0] + _dump(BASE) if s[1] else s[0]),
    st.binary(max_size=200),
)


def fuzz_configs(examples: int, seed: int | None, derandomize: bool = False) -> Tally:
    import conveyor.targets.settings  # noqa: F401  (registers the target types' settings)
    from conveyor.config.loader import config_digest, parse_config
    from conveyor.errors import BadInput

    tally = Tally()

    def load(text: str | bytes) -> None:
        config_digest(parse_config(text, "conveyor.yml"))  # the digest walks the whole validated model

    @settings(max_examples=examples, derandomize=derandomize, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(config_inputs)
    def run(text: str | bytes) -> None:
        _try(tally, f"config {text[:300]!r}", lambda: load(text), (BadInput,))
        if isinstance(text, str):  # the same document as bytes takes the decoding path too
            _try(tally, f"config bytes {text[:300]!r}", lambda: load(text.encode("utf-8", "surrogatepass")),
                 (BadInput,))

    for text in SNIPPETS:
        run = example(text)(run)
    _seeded(run, seed)()
    return tally


# ------------------------------------------------------------------------------------------ arguments

WORDS = ["build", "deploy", "promote", "rollback", "status", "history", "diff", "outbox", "flush", "run", "lock",
         "unlock", "staging", "production", "HEAD", "--", "-", "--json", "--reason", "--force", "--wait",
         "--dry-run", "--hotfix", "--only", "--to", "--limit", "--until", "--org", "--app-wide", "--config",
         "--help", "-h", "--version", "--bogus", "0", "-1", "99999999999999999999", "999999999999999999999",
         "99999999999h", "0m", "1s", "2h30m", "1w", "2026-12-28T09:00", "9999-12-31T23:59:59+14:00", "\n", "\x00"]

words = st.one_of(st.sampled_from(WORDS), st.text(max_size=12), st.integers().map(str))


durations = st.one_of(
    st.lists(st.tuples(st.integers(0, 10**30), st.sampled_from("smhdwy")), min_size=1, max_size=3)
    .map(lambda parts: "".join(f"{n}{unit}" for n, unit in parts)),
    st.datetimes().map(lambda moment: moment.isoformat()),
    words,
)
numbers = st.one_of(st.integers(), st.integers(-(10**30), 10**30), words).map(str)


def _value_for(param: Any) -> st.SearchStrategy[str]:
    import click

    if param.name == "until":
        return durations
    if isinstance(param.type, click.types.IntParamType):
        return numbers
    return words


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    """A real command with some of its own options and arguments, each given a value from the pool."""
    import click

    from conveyor.cli.main import cli

    path = [draw(st.sampled_from(sorted(cli.commands)))]
    command = cli.commands[path[0]]
    if isinstance(command, click.Group) and command.commands and draw(st.booleans()):
        path.append(draw(st.sampled_from(sorted(command.commands))))
        command = command.commands[path[-1]]
    argv = path
    for param in command.params:
        if not draw(st.booleans()):
            continue
        if isinstance(param, click.Option):
            argv.append(param.opts[0])
            if param.is_flag:
                continue
        argv.append(draw(_value_for(param)))
    return [*draw(st.sampled_from([[], ["--config", "conveyor.yml"], ["-h"]])), *argv]


argv_inputs = st.one_of(st.lists(words, max_size=8), command_lines())


def parse_argv(argv: list[str]) -> None:
    """Parse argv as the executable would, down to the subcommand, without invoking anything."""
    import click

    from conveyor.cli.main import cli
    from conveyor.pipeline.blocks import parse_until

    with cli.make_context("conveyor", list(argv), resilient_parsing=False) as ctx:
        group: click.Group = cli
        rest = [*ctx._protected_args, *ctx.args]  # as click's Group.invoke reads them (the public name warns)
        parent = ctx
        while rest:
            name, command, rest = group.resolve_command(parent, rest)
            if command is None:
                return
            with command.make_context(name or "", rest, parent=parent) as sub:
                if isinstance(command, click.Group) and (sub._protected_args or sub.args):
                    group, parent, rest = command, sub, [*sub._protected_args, *sub.args]
                    continue
                if "until" in sub.params:
                    parse_until(sub.params["until"])
                return


def fuzz_argv(examples: int, seed: int | None, derandomize: bool = False) -> Tally:
    import click

    from conveyor.errors import BadInput

    tally = Tally()
    expected = (click.exceptions.ClickException, click.exceptions.Exit, BadInput)

    @settings(max_examples=examples, derandomize=derandomize, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(argv_inputs)
    def run(argv: list[str]) -> None:
        with redirect_stdout(io.StringIO()):  # --help and --version print; that is not the point here
            _try(tally, f"argv {argv!r}", lambda: parse_argv(argv), expected)

    for argv in KNOWN_ARGV:
        run = example(argv)(run)
    _seeded(run, seed)()
    return tally


def _seeded(test: Callable[[], None], seed: int | None) -> Callable[[], None]:
    from hypothesis import seed as hypothesis_seed

    return hypothesis_seed(seed)(test) if seed is not None else test


# -------------------------------------------------------------------------------------------------- main


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=int, default=6000, help="generated configs (each also tried as bytes)")
    parser.add_argument("--argv", type=int, default=4000, help="generated argument lists")
    parser.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: random)")
    args = parser.parse_args()
    started = time.perf_counter()
    tally = fuzz_configs(args.configs, args.seed)
    configs_tried = tally.tried
    tally.merge(fuzz_argv(args.argv, args.seed))
    for report in tally.tracebacks[:5]:
        print(report, file=sys.stderr)
    for label in tally.hangs[:5]:
        print(f"hang: {label}", file=sys.stderr)
    print(f"inputs tried: {tally.tried} ({configs_tried} config loads, {tally.tried - configs_tried} argument "
          f"lists) in {time.perf_counter() - started:.0f} s")
    print(f"accepted: {tally.accepted}; refused with conveyor's own error: "
          f"{tally.tried - tally.accepted - len(tally.tracebacks) - len(tally.hangs)}")
    print(f"tracebacks: {len(tally.tracebacks)}")
    print(f"hangs over {HANG_SECONDS:.0f} s: {len(tally.hangs)} (slowest input {tally.slowest:.2f} s)")
    print(f"peak memory: {_peak_rss_mb():.0f} MB resident")
    return 1 if tally.tracebacks or tally.hangs else 0


if __name__ == "__main__":
    sys.exit(main())
