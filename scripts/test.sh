#!/usr/bin/env bash
# The whole test suite: installs what it needs, then runs pytest. Every real component (registry,
# podman, HAProxy, PostgreSQL, git) is started by the tests themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/ruff check .
exec .venv/bin/pytest -q "$@"
