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
