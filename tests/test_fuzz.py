"""A bounded, deterministic run of bench/fuzz_config.py: generated and mutated configs through the loader and
argument lists through the CLI's parser end in a result or conveyor's own error, never a traceback or a hang."""

from __future__ import annotations

from bench.fuzz_config import fuzz_argv, fuzz_configs


def test_generated_and_mutated_configs_never_crash_the_loader() -> None:
    tally = fuzz_configs(examples=250, seed=None, derandomize=True)
    assert tally.tried >= 250
    assert tally.tracebacks == [], tally.tracebacks[0]
    assert tally.hangs == []


def test_generated_argument_lists_never_crash_the_parser() -> None:
    tally = fuzz_argv(examples=250, seed=None, derandomize=True)
    assert tally.tried >= 250
    assert tally.tracebacks == [], tally.tracebacks[0]
    assert tally.hangs == []
