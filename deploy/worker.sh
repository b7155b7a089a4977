#!/usr/bin/env bash
# One fedlab/TFF worker on this machine, listening on its private-network address only.
#   deploy/worker.sh 10.0.0.11 8000
# With mutual TLS: a folder holding server.pem, server-key.pem and ca.pem (`python -m fedlab certs DIR --hosts
# 10.0.0.11` makes one; copy those three to the worker, keep ca-key.pem and the client files elsewhere):
#   FEDLAB_TLS_DIR=/etc/fedlab/tls deploy/worker.sh 10.0.0.11 8000
# Run from a clone of this repository; `make env` installs the environment the first time.
# As a service: deploy/fedlab-worker.service (systemd).
set -euo pipefail
host="${1:?usage: [FEDLAB_TLS_DIR=DIR] deploy/worker.sh PRIVATE_ADDRESS [PORT]}"
port="${2:-8000}"
tls=()
if [ -n "${FEDLAB_TLS_DIR:-}" ]; then
  tls=(--tls-cert "$FEDLAB_TLS_DIR/server.pem" --tls-key "$FEDLAB_TLS_DIR/server-key.pem" --tls-ca "$FEDLAB_TLS_DIR/ca.pem")
fi
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || make env
exec .venv/bin/python -m fedlab worker --host "$host" --port "$port" "${tls[@]}"
