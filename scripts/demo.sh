#!/usr/bin/env bash
# The main job end to end on this machine: installs what it needs, then runs the sample app through
# staging, production and a rollback. `scripts/demo.sh down` stops what the demo left serving.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
