#!/usr/bin/env bash
# Sets up a fresh machine for ecoflow-collector: the servers the demo and the tests start
# privately (InfluxDB, nginx, Mosquitto, openssl from Debian) and the package with its test extra.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash .ci/install-servers.sh

# A Debian-managed interpreter refuses plain `pip install` (PEP 668); pyenv's does not mind.
if python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'; then
  export PIP_BREAK_SYSTEM_PACKAGES=1
fi
python3 -m pip install -q -e '.[test]'

# The dashboards' schema check (tests/test_grafana.py): @grafana/schema and typescript, pinned in
# grafana/check/package-lock.json. Node and npm from Debian when the machine has no npm.
if ! command -v npm >/dev/null 2>&1; then
  echo "setup.sh: installing Debian's nodejs and npm"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo -n)
  "${sudo_cmd[@]}" apt-get update -q -o Acquire::Retries=3 </dev/null
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends -o Acquire::Retries=3 nodejs npm </dev/null
fi
(cd grafana/check && npm ci --no-audit --no-fund)
