#!/usr/bin/env bash
# The edgepipe pipeline on the local services (what `make up` runs):
# bridge, model_worker and api in the background, each with its own MQTT
# account (bridge, worker, api), the simulator in the foreground with SENSORS
# devices, each with its own device account from .stack/secrets/devices.csv. Ctrl-C (or `run_pipeline.sh stop`) stops
# all four with SIGTERM, so each flushes, commits and acks before exiting.
set -euo pipefail
# shellcheck source=local_stack/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PY="$STACK_ROOT/.venv/bin/python"
SERVICES=(bridge model_worker api)
SENSORS="${SENSORS:-3}"
API_PORT="${API_PORT:-8000}"
BRIDGE_HTTP_PORT="${BRIDGE_HTTP_PORT:-8101}"
WORKER_HTTP_PORT="${WORKER_HTTP_PORT:-8102}"

stop_all() {
  local s
  for s in edge_simulator "${SERVICES[@]}"; do
    stk_stop "$s" 30 "$s" >/dev/null 2>&1 || true
  done
}

ready() { curl -fs -o /dev/null "http://127.0.0.1:$1$2"; }

if [[ "${1:-}" == "stop" ]]; then
  stop_all
  stk_say pipeline "stopped"
  exit 0
fi

[[ -x "$PY" ]] || { echo "pipeline: .venv is missing; run 'make up' (it installs first)" >&2; exit 1; }
cd "$STACK_ROOT"
trap 'echo; stk_say pipeline "stopping (SIGTERM to every service)"; stop_all; exit 0' INT TERM

# MQTT account of each service (mosquitto/acl says what each may do).
account() { case "$1" in model_worker) echo worker ;; *) echo "$1" ;; esac; }

# At least SENSORS device accounts, known to the running broker.
bash "$STACK_ROOT/local_stack/mosquitto.sh" reload "$SENSORS" >/dev/null \
  || { echo "pipeline: Mosquitto is not running; run 'make services' first" >&2; exit 1; }

for s in "${SERVICES[@]}"; do
  if stk_pid "$s" "$s" >/dev/null; then
    stk_say "$s" "already running"
  else
    stk_start_bg "$s" env MQTT_USERNAME="$(account "$s")" \
      MQTT_PASSWORD_FILE="$STACK_SECRETS_DIR/$(account "$s").password" "$PY" -m "$s"
    stk_say "$s" "started, log in $(stk_logfile "$s")"
  fi
done

stk_wait_for 90 ready "$BRIDGE_HTTP_PORT" /ready || { stop_all; stk_fail bridge; }
stk_wait_for 120 ready "$WORKER_HTTP_PORT" /ready || { stop_all; stk_fail model_worker; }
stk_wait_for 60 ready "$API_PORT" /health || { stop_all; stk_fail api; }

cat <<INFO

  edgepipe is running with $SENSORS simulated devices.
    API            http://127.0.0.1:$API_PORT/docs
    dashboard      http://127.0.0.1:$API_PORT/
    mongo-express  http://127.0.0.1:${MONGO_EXPRESS_PORT}/  (user ${MONGO_EXPRESS_USERNAME})
    results        mosquitto_sub -h 127.0.0.1 -p ${MQTT_PORT} -u ${MQTT_USERNAME} -P '<MQTT_PASSWORD>' -t 'analytics/#' -v
    accounts       $STACK_SECRETS_DIR/ (devices.csv: one MQTT account per device)
  Logs in $STACK_LOG_DIR/. Ctrl-C stops the pipeline; 'make down' also stops the services.

INFO

"$PY" -m edge_simulator --devices "$SENSORS" --credentials "$STACK_SECRETS_DIR/devices.csv" &
sim=$!
echo "$sim" > "$(stk_pidfile edge_simulator)"
wait "$sim" || true
stop_all
