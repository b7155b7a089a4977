#!/usr/bin/env bash
# One fedlab/TFF worker on this machine, listening on its private-network address only.
#   deploy/worker.sh 10.0.0.11 8000
# Run from a clone of this repository; `make env` installs the environment the first time.
# As a service: deploy/fedlab-worker.service (systemd).
set -euo pipefail
host="${1:?usage: deploy/worker.sh PRIVATE_ADDRESS [PORT]}"
port="${2:-8000}"
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || make env
exec .venv/bin/python -m fedlab worker --host "$host" --port "$port"
