"""`python -m devstack engine-env DIR [REGISTRY_HOST …]`: write the podman/buildah settings this kind of machine
needs (the same files the demo and the tests use) under DIR and print the `export` lines naming them, so a
person can run conveyor on their own app here: `eval "$(.venv/bin/python -m devstack engine-env ~/.engine
127.0.0.1:5000)"`."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from devstack import engine_environment

USAGE = "usage: python -m devstack engine-env DIR [REGISTRY_HOST ...]"


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "engine-env":
        print(USAGE, file=sys.stderr)
        return 2
    values = engine_environment(Path(argv[1]).expanduser().resolve(), argv[2:])
    for key, value in values.items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
