#!/usr/bin/env bash
# Installs the real servers the test-suite, the benchmarks and `demo` start privately on free
# 127.0.0.1 ports (collector/testbed): InfluxDB 1.6.7, nginx, Mosquitto 2.0 and openssl, all from
# Debian. Idempotent: does nothing when everything is installed (TESTBED_FORCE_INSTALL=1 runs
# apt-get anyway). Needs root (or sudo), no stdin.
set -euo pipefail

# binary -> Debian package that provides it. A binary already on the machine (any nginx flavour,
# say) counts as installed: nginx-light would replace nginx-core/-full/-extras.
BIN_PKG=(
  influxd:influxdb
  nginx:nginx-light
  mosquitto:mosquitto
  mosquitto_passwd:mosquitto
  mosquitto_sub:mosquitto-clients
  openssl:openssl
)
DAEMONS=(influxd nginx mosquitto)
export PATH="$PATH:/usr/sbin:/sbin"

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo -n)
  else
    echo "install-servers.sh: needs root (or sudo) to install the test servers" >&2
    exit 1
  fi
fi

missing=()
for entry in "${BIN_PKG[@]}"; do
  bin="${entry%%:*}" pkg="${entry#*:}"
  if ! command -v "$bin" >/dev/null 2>&1; then
    case " ${missing[*]} " in *" $pkg "*) ;; *) missing+=("$pkg") ;; esac
  fi
done

if [ "${TESTBED_FORCE_INSTALL:-0}" = 1 ]; then
  missing=()
  for entry in "${BIN_PKG[@]}"; do
    pkg="${entry#*:}"
    case " ${missing[*]} " in *" $pkg "*) ;; *) missing+=("$pkg") ;; esac
  done
fi

if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-servers.sh: installing ${missing[*]}"
  # Keep Debian's maintainer scripts from starting the daemons on their default ports.
  policy=/usr/sbin/policy-rc.d
  if [ ! -x "$policy" ] || ! grep -q 'exit 101' "$policy" 2>/dev/null; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
    "${SUDO[@]}" chmod 755 "$policy"
  fi

  # PIDs of these daemons running before the install (e.g. the machine's own mosquitto on 1883):
  # those are left alone.
  before=" "
  for name in "${DAEMONS[@]}"; do
    before+="$(pgrep -x "$name" | tr '\n' ' ' || true)"
  done

  export DEBIAN_FRONTEND=noninteractive
  apt_opts=(-y -q -o Acquire::Retries=3 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
  updated=0
  for attempt in 1 2 3; do
    if "${SUDO[@]}" apt-get update -q -o Acquire::Retries=3 </dev/null; then
      updated=1
      break
    fi
    echo "install-servers.sh: apt-get update failed (attempt $attempt)" >&2
    sleep $((attempt * 5))
  done
  [ "$updated" = 1 ] || { echo "install-servers.sh: apt-get update kept failing" >&2; exit 1; }
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install --no-install-recommends "${apt_opts[@]}" "${missing[@]}" </dev/null

  # Best effort: stop any daemon the install started anyway: one that was not running before, is
  # a child of PID 1 (a daemon, not e.g. an nginx worker or a server started by a test) and is not
  # a testbed instance (whose files live in testbed-* temporary directories).
  for name in "${DAEMONS[@]}"; do
    for pid in $(pgrep -x -P 1 "$name" || true); do
      case "$before" in *" $pid "*) continue ;; esac
      if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'testbed-'; then
        continue
      fi
      echo "install-servers.sh: stopping $name (pid $pid) started by the install"
      "${SUDO[@]}" kill "$pid" 2>/dev/null || true
    done
  done
else
  echo "install-servers.sh: the test servers are already installed"
fi

for entry in "${BIN_PKG[@]}"; do
  bin="${entry%%:*}"
  if ! command -v "$bin" >/dev/null 2>&1; then
    echo "install-servers.sh: $bin is still missing after the install" >&2
    exit 1
  fi
done
echo "install-servers.sh: $(influxd version 2>&1 | head -n1); $(nginx -v 2>&1); $(mosquitto -h 2>&1 | head -n1)"
