#!/bin/sh
# Entry point for the eclipse-mosquitto:2 image (compose mounts this folder at
# /mosquitto/config and the `credentials` volume at /secrets). Before starting
# the broker it writes, into the data volume:
#   passwd         the operator (MQTT_USERNAME / MQTT_PASSWORD) plus the
#                  service and device accounts the one-shot `credentials`
#                  service generated (/secrets/mosquitto_users), hashed
#   acl            mosquitto/acl plus a readwrite-everything block for the operator
#   mosquitto.conf mosquitto/mosquitto.conf plus the TLS listener on 8883 when
#                  /secrets/tls holds the generated certificates
# so no credential is ever committed or baked into an image.
set -eu
: "${MQTT_USERNAME:=edgepipe}"
: "${MQTT_PASSWORD:=edgepipe-local}"
SECRETS=/secrets
DATA=/mosquitto/data
mkdir -p "$DATA"
umask 077
{
  [ -f "$SECRETS/mosquitto_users" ] && cat "$SECRETS/mosquitto_users"
  printf '%s:%s\n' "$MQTT_USERNAME" "$MQTT_PASSWORD"
} >"$DATA/passwd.tmp"
mosquitto_passwd -U "$DATA/passwd.tmp"
mv "$DATA/passwd.tmp" "$DATA/passwd"
{
  cat /mosquitto/config/acl
  # shellcheck disable=SC2016  # a literal MQTT topic
  printf '\n# operator account (MQTT_USERNAME), added at start\nuser %s\ntopic readwrite #\ntopic read $SYS/#\n' "$MQTT_USERNAME"
} >"$DATA/acl"
cp /mosquitto/config/mosquitto.conf "$DATA/mosquitto.conf"
if [ -f "$SECRETS/tls/server.crt" ]; then
  mkdir -p "$DATA/tls"
  cp "$SECRETS/tls/ca.crt" "$SECRETS/tls/server.crt" "$SECRETS/tls/server.key" "$DATA/tls/"
  printf '\n# TLS listener (certificates generated at set-up)\nlistener 8883\ncafile %s\ncertfile %s\nkeyfile %s\n' \
    "$DATA/tls/ca.crt" "$DATA/tls/server.crt" "$DATA/tls/server.key" >>"$DATA/mosquitto.conf"
fi
chown -R mosquitto:mosquitto "$DATA" 2>/dev/null || true
exec mosquitto -c "$DATA/mosquitto.conf" "$@"
