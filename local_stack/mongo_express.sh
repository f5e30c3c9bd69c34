#!/usr/bin/env bash
# mongo-express (web UI to browse MongoDB) for edgepipe's local stack:
#   bash local_stack/mongo_express.sh start|stop|status
#
# mongo-express 1.0.0 from npm (the only 1.0.x whose dependencies all come
# from the npm registry; it ships its built assets). package.json and
# package-lock.json live in local_stack/mongo_express/; they are copied into
# .stack/mongo_express/ and installed there with `npm ci` (skipped when the
# same lock is already installed). It runs as `node app.js`, configured by
# environment only, and needs the MongoDB-wire server up: it exits about 30 s
# after start when the database is not reachable. `start` therefore makes
# sure local_stack/mongo.sh reports healthy first (starting it if needed).
#
# Settings (environment, then .env, then defaults):
#   MONGO_EXPRESS_PORT      8081 (listens on 127.0.0.1 only)
#   MONGO_EXPRESS_USERNAME  admin            basic auth
#   MONGO_EXPRESS_PASSWORD  edgepipe-local
#   MONGO_PORT              27017            mongodb://127.0.0.1:$MONGO_PORT/
#   MONGO_EXPRESS_START_TIMEOUT 60 seconds
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=local_stack/common.sh
. "$HERE/common.sh"

SVC=mongo_express
HOST=127.0.0.1
: "${MONGO_EXPRESS_START_TIMEOUT:=60}"

SRC_DIR="$HERE/mongo_express"
SVC_DIR="$STACK_DIR/mongo_express"
APP_DIR="$SVC_DIR/node_modules/mongo-express"
STAMP="$SVC_DIR/.installed"
PORT_FILE="$SVC_DIR/port"
PATTERN="$APP_DIR/app.js"
BASE_URL="http://$HOST:$MONGO_EXPRESS_PORT/"

http_code() { # [USER:PASS]
  local auth=()
  [[ -n "${1:-}" ]] && auth=(-u "$1")
  curl -s -o /dev/null -w '%{http_code}' --max-time 3 "${auth[@]}" "$BASE_URL" 2>/dev/null || true
}

# Healthy: authenticated GET / is 200 (mongo-express renders its database
# list from MongoDB) and an unauthenticated one is 401.
healthy() {
  [[ "$(http_code "$MONGO_EXPRESS_USERNAME:$MONGO_EXPRESS_PASSWORD")" == 200 ]] \
    && [[ "$(http_code)" == 401 ]]
}

# Refuse when our instance runs on another port than the configured one.
check_port() { # PID
  local port
  port="$(cat "$PORT_FILE" 2>/dev/null || true)"
  if [[ -n "$port" && "$port" != "$MONGO_EXPRESS_PORT" ]]; then
    stk_say "$SVC" "pid $1 serves port $port, not MONGO_EXPRESS_PORT=$MONGO_EXPRESS_PORT: run stop first"
    return 1
  fi
}

want_stamp() {
  { node --version; cat "$SRC_DIR/package.json" "$SRC_DIR/package-lock.json"; } | sha256sum | cut -d' ' -f1
}

install_if_needed() {
  local want t0
  stk_need_cmd node nodejs
  stk_need_cmd npm npm
  want="$(want_stamp)"
  if [[ -f "$APP_DIR/app.js" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    return 0
  fi
  t0="$(stk_now)"
  stk_say "$SVC" "installing mongo-express 1.0.0 with npm ci..."
  mkdir -p "$SVC_DIR"
  rm -f "$STAMP"
  cp "$SRC_DIR/package.json" "$SRC_DIR/package-lock.json" "$SVC_DIR/"
  # optional deps (AWS auth, kerberos...) are not needed on loopback;
  # the only install script in the tree (es5-ext) just prints a message.
  if ! (cd "$SVC_DIR" && npm ci --omit=optional --ignore-scripts --no-audit --no-fund \
    --loglevel=error) >>"$(stk_logfile "$SVC")" 2>&1; then
    echo "local_stack: mongo_express npm ci failed" >&2
    stk_fail "$SVC"
  fi
  printf '%s\n' "$want" >"$STAMP"
  stk_say "$SVC" "installed in $(stk_since "$t0")s"
}

ensure_mongo() {
  if bash "$HERE/mongo.sh" status >/dev/null 2>&1; then
    return 0
  fi
  stk_say "$SVC" "MongoDB-wire server not answering, starting it first"
  bash "$HERE/mongo.sh" start || {
    echo "local_stack: mongo_express failed to start: mongo did not start" >&2
    exit 1
  }
}

wait_healthy() { stk_wait_healthy "$SVC" "$1" "$MONGO_EXPRESS_START_TIMEOUT" healthy; }

cmd_start() {
  local t0 pid owner
  t0="$(stk_now)"
  stk_need_cmd curl curl

  if pid="$(stk_pid "$SVC" "$PATTERN")"; then
    check_port "$pid" || exit 1
    if healthy || wait_healthy "$pid"; then
      stk_say "$SVC" "already running: pid $pid, $BASE_URL"
      return 0
    fi
    stk_fail "$SVC"
  fi

  if stk_port_open "$HOST" "$MONGO_EXPRESS_PORT"; then
    owner="$(stk_port_owner "$MONGO_EXPRESS_PORT")"
    echo "local_stack: mongo_express failed to start: port $MONGO_EXPRESS_PORT is already used by ${owner:-another process}; set MONGO_EXPRESS_PORT" >&2
    exit 1
  fi

  install_if_needed
  ensure_mongo

  (
    cd "$APP_DIR"
    export ME_CONFIG_MONGODB_URL="mongodb://127.0.0.1:$MONGO_PORT/"
    # list every database, not only the one named in the URL
    export ME_CONFIG_MONGODB_ENABLE_ADMIN=true
    # 1.0.0 turns basic auth on whenever the username is non-empty (there
    # is no ME_CONFIG_BASICAUTH switch in this version; later ones add it)
    export ME_CONFIG_BASICAUTH=true
    export ME_CONFIG_BASICAUTH_USERNAME="$MONGO_EXPRESS_USERNAME"
    export ME_CONFIG_BASICAUTH_PASSWORD="$MONGO_EXPRESS_PASSWORD"
    export PORT="$MONGO_EXPRESS_PORT" VCAP_APP_HOST="$HOST"
    ME_CONFIG_SITE_COOKIESECRET="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
    ME_CONFIG_SITE_SESSIONSECRET="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
    export ME_CONFIG_SITE_COOKIESECRET ME_CONFIG_SITE_SESSIONSECRET
    export NODE_ENV=production
    stk_start_bg "$SVC" node "$APP_DIR/app.js"
  )
  pid="$(cat "$(stk_pidfile "$SVC")")"
  echo "$MONGO_EXPRESS_PORT" >"$PORT_FILE"

  if ! wait_healthy "$pid"; then
    stk_stop "$SVC" 5 "$PATTERN" >/dev/null 2>&1 || true
    stk_fail "$SVC"
  fi
  stk_say "$SVC" "started mongo-express 1.0.0, pid $pid, $BASE_URL (user $MONGO_EXPRESS_USERNAME) in $(stk_since "$t0")s"
}

cmd_stop() {
  stk_stop "$SVC" 10 "$PATTERN"
}

cmd_status() {
  local pid
  if ! pid="$(stk_pid "$SVC" "$PATTERN")"; then
    stk_say "$SVC" "not running"
    return 1
  fi
  check_port "$pid" || return 1
  if healthy; then
    stk_say "$SVC" "running: pid $pid, $BASE_URL"
    return 0
  fi
  stk_say "$SVC" "pid $pid alive but not healthy on $BASE_URL (auth 200 / no-auth 401 expected)"
  return 1
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) stk_usage "$SVC" ;;
esac
