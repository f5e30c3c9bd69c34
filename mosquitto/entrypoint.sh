#!/bin/sh
# Entry point for the eclipse-mosquitto:2 image (compose: mount this folder
# at /mosquitto/config and use this file as the entrypoint). It writes the
# password file from the environment, so no credential is committed.
set -eu
: "${MQTT_USERNAME:=edgepipe}"
: "${MQTT_PASSWORD:=edgepipe-local}"
mkdir -p /mosquitto/data
mosquitto_passwd -b -c /mosquitto/data/passwd "$MQTT_USERNAME" "$MQTT_PASSWORD"
chmod 0600 /mosquitto/data/passwd
chown -R mosquitto:mosquitto /mosquitto/data 2>/dev/null || true
exec mosquitto -c /mosquitto/config/mosquitto.conf "$@"
