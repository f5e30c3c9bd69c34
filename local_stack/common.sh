# shellcheck shell=bash
# Shared helpers for the local real-service scripts (sourced, never run).
#
# Contract every local_stack/<svc>.sh follows:
#   bash local_stack/<svc>.sh start|stop|status
#   - state under $STACK_DIR/<svc>/, log in $STACK_LOG_DIR/<svc>.log,
#     pid in $STACK_RUN_DIR/<svc>.pid
#   - start is idempotent and waits for a real health check;
#     on failure: "local_stack: <svc> failed to start" + log tail, exit != 0
#   - stop: SIGTERM, wait, SIGKILL; idempotent
#   - status: one line, exit 0 if healthy, 1 otherwise
#
# Public functions (names are stable, other scripts rely on them):
#   stk_say SVC MSG...              one progress line "SVC: MSG"
#   stk_warn SVC MSG...             same, to stderr
#   stk_now                         seconds since epoch with decimals
#   stk_since T0                    elapsed seconds since T0, e.g. "7.9"
#   stk_port_open HOST PORT         0 if a TCP connect succeeds (1 s timeout)
#   stk_port_owner PORT             prints "pid/name" of the listener if known
#   stk_wait_for TIMEOUT CMD...     retry CMD every 0.2 s until it succeeds
#                                   or TIMEOUT seconds pass (exit 1)
#   stk_wait_healthy SVC PID TIMEOUT CMD...
#                                   the same, but exit 1 at once if PID dies
#   stk_pidfile SVC                 path of the pid file
#   stk_logfile SVC                 path of the log file
#   stk_pid SVC [PATTERN]           prints the pid if the recorded process is
#                                   alive (and its cmdline contains PATTERN);
#                                   removes a stale pid file; exit 1 if none
#                                   (with no pid file, a PATTERN under .stack
#                                   finds the process again)
#   stk_start_bg SVC CMD...         runs CMD detached (setsid nohup), output
#                                   appended to the log, pid file written
#   stk_stop SVC [TIMEOUT] [PATTERN] SIGTERM, wait TIMEOUT (default 20) s,
#                                   then SIGKILL; removes the pid file
#   stk_fail SVC [LINES]            prints "local_stack: SVC failed to start"
#                                   and the log tail (default 40), exits 1
#   stk_need_cmd CMD DEBPKG         0 if CMD exists; else apt-get installs
#                                   DEBPKG when root, or explains and exits 1
#   stk_usage SVC                   prints usage and exits 2
#   stk_credentials [DEVICES]       creates what is missing in $STACK_SECRETS_DIR
#                                   (service and at least DEVICES device MQTT
#                                   accounts, TLS certificates); idempotent;
#                                   prints what it created
#   stk_secret NAME                 prints the password of service account NAME
#
# Variables set: STACK_ROOT (repo root), STACK_DIR (.stack), STACK_LOG_DIR,
# STACK_RUN_DIR, STACK_SECRETS_DIR (.stack/secrets, generated credentials), plus the service settings below (from the environment,
# then .env, then the defaults here). Variables already set in the
# environment win over .env, as with docker compose.

if [[ -n "${_STK_COMMON_LOADED:-}" ]]; then
  return 0
fi
_STK_COMMON_LOADED=1

STACK_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK_DIR="${STACK_DIR:-$STACK_ROOT/.stack}"
STACK_LOG_DIR="$STACK_DIR/logs"
STACK_RUN_DIR="$STACK_DIR/run"
STACK_SECRETS_DIR="$STACK_DIR/secrets"
mkdir -p "$STACK_LOG_DIR" "$STACK_RUN_DIR"

# .env first, but keep whatever the caller exported explicitly.
if [[ -f "$STACK_ROOT/.env" ]]; then
  _stk_saved_env="$(declare -px | grep '^declare -x ' || true)"
  set -a
  # shellcheck disable=SC1091
  . "$STACK_ROOT/.env"
  set +a
  eval "$_stk_saved_env" 2>/dev/null || true
  unset _stk_saved_env
fi

: "${MQTT_HOST:=127.0.0.1}"
: "${MQTT_PORT:=1883}"
: "${MQTT_USERNAME:=edgepipe}"
: "${MQTT_PASSWORD:=edgepipe-local}"
: "${KAFKA_BOOTSTRAP:=127.0.0.1:9092}"
: "${KAFKA_CONTROLLER_PORT:=9093}"
: "${KAFKA_PARTITIONS:=6}"
: "${KAFKA_TOPICS:=readings,readings.dlq,analytics,readings.windows}"
: "${KAFKA_HEAP:=512m}"
: "${MONGO_PORT:=27017}"
: "${MONGO_EXPRESS_PORT:=8081}"
: "${MONGO_EXPRESS_USERNAME:=admin}"
: "${MONGO_EXPRESS_PASSWORD:=edgepipe-local}"
# Device accounts generated at set-up (at least; `make up` adds more for SENSORS).
: "${CREDENTIALS_DEVICES:=10}"
# Empty: no TLS listener on the local broker (set e.g. 8883 to open one).
: "${MQTT_TLS_PORT:=}"
export MQTT_HOST MQTT_PORT MQTT_USERNAME MQTT_PASSWORD CREDENTIALS_DEVICES MQTT_TLS_PORT \
  KAFKA_BOOTSTRAP \
  KAFKA_CONTROLLER_PORT KAFKA_PARTITIONS KAFKA_TOPICS KAFKA_HEAP MONGO_PORT \
  MONGO_EXPRESS_PORT MONGO_EXPRESS_USERNAME MONGO_EXPRESS_PASSWORD

stk_say() { local svc="$1"; shift; printf '%s: %s\n' "$svc" "$*"; }
stk_warn() { local svc="$1"; shift; printf '%s: %s\n' "$svc" "$*" >&2; }

stk_now() { printf '%s\n' "${EPOCHREALTIME:-$(date +%s.%N)}"; }
stk_since() {
  local t0="$1" t1
  t1="$(stk_now)"
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f\n", b - a }'
}

stk_port_open() {
  local host="$1" port="$2"
  # shellcheck disable=SC2016  # expanded by the inner bash
  timeout 1 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$host" "$port" 2>/dev/null
}

stk_port_owner() {
  local port="$1"
  ss -ltnpH "sport = :$port" 2>/dev/null \
    | sed -n 's/.*users:((\"\([^\"]*\)\",pid=\([0-9]*\).*/\2\/\1/p' | head -n1
}

stk_wait_for() {
  local timeout="$1"; shift
  local deadline=$((SECONDS + timeout))
  while ! "$@"; do
    if ((SECONDS >= deadline)); then
      return 1
    fi
    sleep 0.2
  done
}

# Like stk_wait_for, but gives up at once when the process PID has exited,
# saying which of the two happened.
stk_wait_healthy() {
  local svc="$1" pid="$2" timeout="$3"
  shift 3
  local deadline=$((SECONDS + timeout))
  until "$@"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$svc: process $pid exited" >&2
      return 1
    fi
    if ((SECONDS >= deadline)); then
      echo "$svc: not healthy within ${timeout}s" >&2
      return 1
    fi
    sleep 0.2
  done
}

stk_pidfile() { printf '%s/%s.pid\n' "$STACK_RUN_DIR" "$1"; }
stk_logfile() { printf '%s/%s.log\n' "$STACK_LOG_DIR" "$1"; }

stk_pid() {
  local svc="$1" pattern="${2:-}" pf pid
  pf="$(stk_pidfile "$svc")"
  if [[ ! -f "$pf" ]]; then
    # A service that lost its pid file (a start that raced a stop) is found
    # again by its own config path under .stack, so stop and status still
    # reach it; other patterns are too loose to adopt a process by.
    if [[ "$pattern" == "$STACK_DIR"/* ]] && pid="$(pgrep -o -f -- "$pattern")"; then
      printf '%s\n' "$pid" >"$pf"
      printf '%s\n' "$pid"
      return 0
    fi
    return 1
  fi
  pid="$(tr -dc '0-9' <"$pf")"
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null \
    && [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]]; then
    if [[ -z "$pattern" ]] || tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$pattern"; then
      printf '%s\n' "$pid"
      return 0
    fi
  fi
  rm -f "$pf"
  return 1
}

stk_start_bg() {
  local svc="$1"; shift
  local log pf
  log="$(stk_logfile "$svc")"
  pf="$(stk_pidfile "$svc")"
  printf '\n===== %s start %s =====\n' "$svc" "$(date -Is)" >>"$log"
  # setsid: the service outlives the shell (and its process group) that
  # started it; nohup: it ignores the terminal's hangup.
  nohup setsid "$@" >>"$log" 2>&1 </dev/null &
  printf '%s\n' "$!" >"$pf"
}

stk_stop() {
  local svc="$1" timeout="${2:-20}" pattern="${3:-}" pid i
  if ! pid="$(stk_pid "$svc" "$pattern")"; then
    stk_say "$svc" "not running"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < timeout * 5; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    stk_warn "$svc" "still running after ${timeout}s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  rm -f "$(stk_pidfile "$svc")"
  stk_say "$svc" "stopped"
}

stk_fail() {
  local svc="$1" lines="${2:-40}" log
  log="$(stk_logfile "$svc")"
  echo "local_stack: $svc failed to start" >&2
  if [[ -f "$log" ]]; then
    echo "----- last $lines lines of $log -----" >&2
    tail -n "$lines" "$log" >&2
    echo "-----" >&2
  fi
  exit 1
}

stk_need_cmd() {
  local cmd="$1" pkg="$2"
  command -v "$cmd" >/dev/null 2>&1 && return 0
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "local_stack: installing Debian package $pkg (for $cmd)..."
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null 2>&1; then
      apt-get update -qq >/dev/null 2>&1 || true
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null 2>&1 || true
    fi
    command -v "$cmd" >/dev/null 2>&1 && return 0
  fi
  echo "local_stack: '$cmd' not found; install it first: sudo apt-get install $pkg" >&2
  exit 1
}

stk_usage() {
  echo "usage: bash local_stack/$1.sh start|stop|status" >&2
  exit 2
}

# Credentials are generated here, on this machine, into the git-ignored
# .stack/secrets/; nothing secret is committed. System Python is enough
# (contracts/credentials.py is standard library only), so this works before
# .venv exists.
stk_credentials() {
  local devices="${1:-$CREDENTIALS_DEVICES}" py=python3 hosts="localhost,127.0.0.1"
  [[ -x "$STACK_ROOT/.venv/bin/python" ]] && py="$STACK_ROOT/.venv/bin/python"
  case ",$hosts," in *",$MQTT_HOST,"*) ;; *) hosts="$hosts,$MQTT_HOST" ;; esac
  ((devices < CREDENTIALS_DEVICES)) && devices="$CREDENTIALS_DEVICES"
  (cd "$STACK_ROOT" && "$py" -m contracts.credentials init --out "$STACK_SECRETS_DIR" \
    --devices "$devices" --tls-hosts "$hosts")
}

stk_secret() { tr -d '\n' <"$STACK_SECRETS_DIR/$1.password"; }
