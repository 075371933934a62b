#!/bin/sh
# The MQTT broker of the `demo` profile (eclipse-mosquitto image): one user, the local EcoFlow cloud's
# account (what `ecoflow-collector simulate --cert-account/--cert-password` hands out as the
# certification answer), plain MQTT on port 1883. The password file is made here at every start,
# from DEMO_MQTT_USER / DEMO_MQTT_PASSWORD (throwaway demo values from .env).
#
# Optional: DEMO_MQTT_PORT (1883), DEMO_MQTT_BIND (all addresses), DEMO_MQTT_DIR (/tmp/mosquitto-demo).
set -eu

user="${DEMO_MQTT_USER:?set DEMO_MQTT_USER}"
password="${DEMO_MQTT_PASSWORD:?set DEMO_MQTT_PASSWORD}"
port="${DEMO_MQTT_PORT:-1883}"
bind="${DEMO_MQTT_BIND:-}"
dir="${DEMO_MQTT_DIR:-/tmp/mosquitto-demo}"

mkdir -p "$dir"
chmod 0755 "$dir"
rm -f "$dir/passwd"
mosquitto_passwd -c -b "$dir/passwd" "$user" "$password"
chmod 0600 "$dir/passwd"
# mosquitto drops from root to the `mosquitto` user before it reads the password file
if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1; then
  chown mosquitto "$dir/passwd"
fi
cat >"$dir/mosquitto.conf" <<CONF
listener $port $bind
allow_anonymous false
password_file $dir/passwd
persistence false
log_dest stdout
log_type error
log_type warning
log_type notice
log_type information
CONF
echo "demo broker: user $user on port $port"
exec mosquitto -c "$dir/mosquitto.conf"
