#!/usr/bin/env bash
# Installs the client examples' dependencies beside them, never globally:
#   Python: pika and cloudevents (python/requirements.txt) into python/.deps
#   Node:   amqplib and cloudevents (node/package.json) into node/node_modules
# Idempotent: what is installed and importable already is left alone, so CI
# and tests/tests/clients.rs may call it every time.
#
#   examples/clients/install.sh [python] [node]     (both when none is named)
#
# Needs python3 with pip (Debian: python3-pip) and node with npm (Debian:
# nodejs, npm); a missing tool is named in one line and the script fails.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
want=("$@")
[ ${#want[@]} -gt 0 ] || want=(python node)

python_deps() {
  local deps="$here/python/.deps"
  command -v python3 >/dev/null || { echo "install.sh: python3 is missing (Debian: apt-get install python3 python3-pip)" >&2; return 1; }
  if PYTHONPATH="$deps" python3 -c 'import pika, cloudevents.core.bindings.rabbitmq' 2>/dev/null; then
    return 0
  fi
  python3 -m pip --version >/dev/null 2>&1 || { echo "install.sh: pip for python3 is missing (Debian: apt-get install python3-pip)" >&2; return 1; }
  echo "install.sh: installing pika and cloudevents into $deps" >&2
  # --target keeps them out of the system's site-packages; the examples
  # put the directory on PYTHONPATH.
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-conflicts --root-user-action=ignore \
    --upgrade --target "$deps" -r "$here/python/requirements.txt"
}

node_deps() {
  command -v node >/dev/null || { echo "install.sh: node is missing (Debian: apt-get install nodejs npm)" >&2; return 1; }
  if (cd "$here/node" && node -e 'require("amqplib"); require("cloudevents")' 2>/dev/null); then
    return 0
  fi
  command -v npm >/dev/null || { echo "install.sh: npm is missing (Debian: apt-get install npm)" >&2; return 1; }
  echo "install.sh: installing amqplib and cloudevents into $here/node/node_modules" >&2
  # `npm ci` installs exactly what package-lock.json pins.
  (cd "$here/node" && npm ci --no-audit --no-fund --loglevel=error)
}

for w in "${want[@]}"; do
  case "$w" in
    python) python_deps ;;
    node) node_deps ;;
    *) echo "install.sh: unknown part $w (python or node)" >&2; exit 2 ;;
  esac
done
