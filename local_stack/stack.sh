#!/usr/bin/env bash
# Runs the local real services in order: mosquitto, kafka, mongo, mongo_express.
#   bash local_stack/stack.sh up|down|restart|status
#   bash local_stack/stack.sh logs [SVC] [-f]        last 40 lines (or follow)
#   bash local_stack/stack.sh start-one|stop-one|restart-one|status-one SVC
set -euo pipefail
# shellcheck source=local_stack/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

HERE="$STACK_ROOT/local_stack"
SERVICES=(mosquitto kafka mongo mongo_express)

have() {
  if [[ -f "$HERE/$1.sh" ]]; then
    return 0
  fi
  stk_warn stack "skipping $1: local_stack/$1.sh does not exist yet"
  return 1
}

known() {
  local s
  for s in "${SERVICES[@]}"; do [[ "$s" == "$1" ]] && return 0; done
  echo "local_stack: unknown service '$1' (one of: ${SERVICES[*]})" >&2
  exit 2
}

run() { bash "$HERE/$1.sh" "$2"; }

up() {
  local t0 s
  t0="$(stk_now)"
  for s in "${SERVICES[@]}"; do
    have "$s" || continue
    if ! run "$s" start; then
      echo "local_stack: stack up stopped at $s after $(stk_since "$t0")s" >&2
      exit 1
    fi
  done
  stk_say stack "up in $(stk_since "$t0")s"
}

down() {
  local t0 i rc=0
  t0="$(stk_now)"
  for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do
    have "${SERVICES[i]}" || continue
    run "${SERVICES[i]}" stop || rc=1
  done
  stk_say stack "down in $(stk_since "$t0")s"
  return "$rc"
}

status() {
  local s rc=0
  for s in "${SERVICES[@]}"; do
    have "$s" 2>/dev/null || { stk_say "$s" "no script yet"; continue; }
    run "$s" status || rc=1
  done
  return "$rc"
}

logs() {
  local svc="" follow=0 a f files=()
  for a in "$@"; do
    case "$a" in
      -f | --follow) follow=1 ;;
      *) known "$a"; svc="$a" ;;
    esac
  done
  if [[ -n "$svc" ]]; then
    files=("$(stk_logfile "$svc")")
  else
    for a in "${SERVICES[@]}"; do
      f="$(stk_logfile "$a")"
      [[ -f "$f" ]] && files+=("$f")
    done
  fi
  if ((${#files[@]} == 0)); then
    echo "local_stack: no logs yet in $STACK_LOG_DIR" >&2
    return 1
  fi
  if ((follow)); then
    exec tail -n 20 -F "${files[@]}"
  fi
  tail -n 40 "${files[@]}"
}

cmd="${1:-}"
shift || true
case "$cmd" in
  up) up ;;
  down) down ;;
  restart) down && up ;;
  status) status ;;
  logs) logs "$@" ;;
  start-one | stop-one | restart-one | status-one)
    [[ $# -ge 1 ]] || { echo "usage: stack.sh $cmd SVC" >&2; exit 2; }
    known "$1"
    have "$1" || exit 1
    case "$cmd" in
      start-one) run "$1" start ;;
      stop-one) run "$1" stop ;;
      restart-one) run "$1" stop && run "$1" start ;;
      status-one) run "$1" status ;;
    esac
    ;;
  *)
    echo "usage: bash local_stack/stack.sh up|down|restart|status|logs [SVC] [-f]" >&2
    echo "       bash local_stack/stack.sh start-one|stop-one|restart-one|status-one SVC" >&2
    echo "services in order: ${SERVICES[*]}" >&2
    exit 2
    ;;
esac
