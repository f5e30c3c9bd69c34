#!/usr/bin/env bash
# Local MongoDB-wire server for edgepipe: bash local_stack/mongo.sh start|stop|status
#
# A genuine `mongod` on PATH is preferred (data in .stack/mongo/mongod).
# Otherwise FerretDB 1.24 with its SQLite backend runs, embedded in our small
# Go program local_stack/ferretdb (data in .stack/mongo/data). The program is
# built once into .stack/bin/edgepipe-ferretdb and rebuilt only when its Go
# sources or our FerretDB patches (local_stack/ferretdb/patches, laid over a
# copy of the module with `go build -overlay`) change; it also has a `ping`
# mode (MongoDB Go driver) used as the health check.
#
# Settings (environment, then .env, then defaults):
#   MONGO_PORT            27017
#   MONGO_ENGINE          auto | mongod | ferretdb   (auto: mongod if on PATH)
#   MONGO_START_TIMEOUT   60 seconds to wait for the first ping
#   FERRETDB_SQLITE_PARAMS extra SQLite URI query for FerretDB; default
#                         _pragma=synchronous(normal)&_pragma=wal_autocheckpoint(10000):
#                         with FerretDB's WAL journal a commit no longer waits
#                         for an fsync (one per 100 documents inserted), and the
#                         WAL is folded into the database every 10,000 pages
#                         (~40 MB) instead of 1,000, so index pages rewritten by
#                         many commits are copied once. Measured on bulk
#                         inserts: ~24 % more docs/s on a busy disk, 11 % less
#                         CPU per document. Committed data survives a crash or
#                         kill of the server process, NOT a power loss or OS
#                         crash: writes since the last checkpoint can roll back.
#                         Set it empty for SQLite's defaults (synchronous=FULL,
#                         an fsync per commit; checkpoint every 1,000 pages).
#   FERRETDB_LOG_LEVEL    info
#   FERRETDB_PPROF        address for Go's pprof endpoints, e.g. 127.0.0.1:6060
#                         (off by default; for profiling the server)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=local_stack/common.sh
. "$HERE/common.sh"

SVC=mongo
MONGO_HOST=127.0.0.1
: "${MONGO_ENGINE:=auto}"
: "${MONGO_START_TIMEOUT:=60}"
# No colon: an explicitly empty value means FerretDB's own defaults.
: "${FERRETDB_SQLITE_PARAMS=_pragma=synchronous(normal)&_pragma=wal_autocheckpoint(10000)}"
: "${FERRETDB_LOG_LEVEL:=info}"
: "${FERRETDB_PPROF:=}"

SRC_DIR="$HERE/ferretdb"
SVC_DIR="$STACK_DIR/mongo"
BIN_DIR="$STACK_DIR/bin"
BIN="$BIN_DIR/edgepipe-ferretdb"
STAMP="$BIN.stamp"
ENGINE_FILE="$SVC_DIR/engine"
PORT_FILE="$SVC_DIR/port"
# shellcheck disable=SC2153 # MONGO_PORT comes from common.sh
URL="mongodb://$MONGO_HOST:$MONGO_PORT/"

engine() {
  case "$MONGO_ENGINE" in
    mongod | ferretdb) echo "$MONGO_ENGINE" ;;
    auto) if command -v mongod >/dev/null 2>&1; then echo mongod; else echo ferretdb; fi ;;
    *) echo "mongo: MONGO_ENGINE must be auto, mongod or ferretdb (got '$MONGO_ENGINE')" >&2; exit 2 ;;
  esac
}

# Engine of the running instance (recorded at start), else the configured one.
running_engine() {
  if [[ -s "$ENGINE_FILE" ]]; then cat "$ENGINE_FILE"; else engine; fi
}

# Refuse when our server runs on another port than the configured one.
check_port() { # PID
  local port
  port="$(cat "$PORT_FILE" 2>/dev/null || true)"
  if [[ -n "$port" && "$port" != "$MONGO_PORT" ]]; then
    stk_say "$SVC" "pid $1 serves port $port, not MONGO_PORT=$MONGO_PORT: run stop first"
    return 1
  fi
}

pattern_for() { if [[ "$1" == mongod ]]; then echo mongod; else echo edgepipe-ferretdb; fi; }

# A real MongoDB wire-protocol ping: OP_MSG {ping: 1, $db: "admin"} over
# bash's /dev/tcp, reply must carry ok: 1.0. Used when the Go binary is not
# built (genuine mongod); the Go binary's ping is used otherwise.
wire_ping() {
  # shellcheck disable=SC2016 # expanded by the inner bash
  timeout 3 bash -c '
    exec 3<>"/dev/tcp/$1/$2" || exit 1
    printf "\x33\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\xdd\x07\x00\x00\x00\x00\x00\x00\x00\x1e\x00\x00\x00\x10ping\x00\x01\x00\x00\x00\x02\$db\x00\x06\x00\x00\x00admin\x00\x00" >&3
    dd bs=65536 count=1 <&3 2>/dev/null | od -An -v -tx1 | tr -d " \n" | grep -q "016f6b00000000000000f03f"
  ' _ "$MONGO_HOST" "$MONGO_PORT" 2>/dev/null
}

ping_ok() {
  if [[ -x "$BIN" ]]; then
    "$BIN" ping -q -url "$URL" -timeout 2s
  else
    wire_ping
  fi
}

PATCH_DIR="$SRC_DIR/patches"
BUILD_DIR="$STACK_DIR/build"
FERRET_MOD=github.com/FerretDB/FerretDB

# Our patched FerretDB sources: the .go files under patches/, as paths
# relative to patches/ (= to the FerretDB module root).
patch_files() {
  (cd "$PATCH_DIR" && find . -type f -name '*.go' | sed 's|^\./||' | LC_ALL=C sort)
}

src_hash() {
  local f
  {
    go version 2>/dev/null || true
    cat "$SRC_DIR/go.mod" "$SRC_DIR/go.sum" "$SRC_DIR"/*.go "$PATCH_DIR/upstream.sha256"
    # names as well as contents: adding or renaming a patch rebuilds
    while IFS= read -r f; do printf '%s\n' "$f"; cat "$PATCH_DIR/$f"; done < <(patch_files)
  } | sha256sum | cut -d' ' -f1
}

# Prepares the patched build of FerretDB (see "Patches" in README-mongo.md):
#  - copies the FerretDB module source out of the module cache into
#    .stack/build/ferretdb-<version> (Go refuses an -overlay of files beneath
#    GOMODCACHE), once per version; the copy stays pristine;
#  - refuses when a file we replace is not the one the patch was made from
#    (patches/upstream.sha256), e.g. after a FerretDB version bump;
#  - writes a go.mod (for -modfile) = ours + `replace FerretDB => the copy`,
#    and the JSON for -overlay: each patches/<path> replaces (or, when
#    FerretDB has no such file, adds) <path> in the copy. Paths differ per
#    machine, hence generated here.
prepare_patched_source() {
  local mod ver copy f sep=""
  mod="$(cd "$SRC_DIR" && go mod download "$FERRET_MOD" >&2 \
    && go list -m -f '{{.Dir}} {{.Version}}' "$FERRET_MOD")" || true
  ver="${mod##* }"
  mod="${mod% *}"
  if [[ -z "$mod" || ! -d "$mod" || -z "$ver" ]]; then
    echo "local_stack: mongo cannot find the FerretDB module source (go list -m gave '$mod $ver')" >&2
    return 1
  fi
  copy="$BUILD_DIR/ferretdb-$ver"
  if [[ ! -f "$copy/.edgepipe-copied" ]]; then
    [[ -d "$copy" ]] && chmod -R u+w "$copy" && rm -rf "$copy"
    mkdir -p "$BUILD_DIR"
    cp -R "$mod" "$copy.tmp"
    chmod -R u+w "$copy.tmp" # module cache files are read-only; lets rm -rf work later
    mv "$copy.tmp" "$copy"
    touch "$copy/.edgepipe-copied"
  fi
  if ! (cd "$copy" && sha256sum --quiet -c "$PATCH_DIR/upstream.sha256"); then
    echo "local_stack: FerretDB $ver sources differ from those local_stack/ferretdb/patches" \
      "were made from (patches/upstream.sha256): redo the patches for this version" >&2
    return 1
  fi
  { cat "$SRC_DIR/go.mod"; printf '\nreplace %s => %s\n' "$FERRET_MOD" "$copy"; } >"$BUILD_DIR/wrapper.mod"
  cp "$SRC_DIR/go.sum" "$BUILD_DIR/wrapper.sum"
  {
    printf '{"Replace": {'
    while IFS= read -r f; do
      if [[ "$copy/$f$PATCH_DIR/$f" == *[\"\\]* ]]; then
        echo "local_stack: mongo cannot write a quote or backslash path into the overlay: $f" >&2
        return 1
      fi
      if [[ -e "$copy/$f" ]] && ! grep -qF "  $f" "$PATCH_DIR/upstream.sha256"; then
        echo "local_stack: patch $f replaces an upstream file missing from patches/upstream.sha256" >&2
        return 1
      fi
      printf '%s\n  "%s": "%s"' "$sep" "$copy/$f" "$PATCH_DIR/$f"
      sep=","
    done < <(patch_files)
    printf '\n}}\n'
  } >"$BUILD_DIR/overlay.json"
}

find_go() {
  command -v go >/dev/null 2>&1 && return 0
  if [[ -x /usr/local/go/bin/go ]]; then
    PATH="/usr/local/go/bin:$PATH"
    return 0
  fi
  echo "local_stack: mongo needs Go (1.22 or newer) to build FerretDB, or a mongod on PATH" >&2
  exit 1
}

build_if_needed() {
  find_go
  local want t0
  want="$(src_hash)"
  if [[ -x "$BIN" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    return 0
  fi
  mkdir -p "$BIN_DIR"
  t0="$(stk_now)"
  stk_say "$SVC" "building FerretDB wrapper (first time takes about a minute)..."
  prepare_patched_source || stk_fail "$SVC"
  if ! (cd "$SRC_DIR" && go build -buildvcs=false -trimpath -ldflags='-s -w' \
    -modfile "$BUILD_DIR/wrapper.mod" -overlay "$BUILD_DIR/overlay.json" -o "$BIN.tmp" .) \
    >>"$(stk_logfile "$SVC")" 2>&1; then
    rm -f "$BIN.tmp"
    echo "local_stack: mongo build of local_stack/ferretdb failed" >&2
    stk_fail "$SVC"
  fi
  mv -f "$BIN.tmp" "$BIN"
  printf '%s\n' "$want" >"$STAMP"
  stk_say "$SVC" "built $("$BIN" version) in $(stk_since "$t0")s"
}

# If something already listens on the port without our pid file, adopt it
# when it is our own server (e.g. the pid file was lost); refuse otherwise.
adopt_or_refuse() {
  local owner pid
  stk_port_open "$MONGO_HOST" "$MONGO_PORT" || return 0
  owner="$(stk_port_owner "$MONGO_PORT")"
  pid="${owner%%/*}"
  if [[ -n "$pid" ]] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null \
    | grep -qE "edgepipe-ferretdb serve|mongod .*--dbpath $SVC_DIR/"; then
    printf '%s\n' "$pid" >"$(stk_pidfile "$SVC")"
    echo "$MONGO_PORT" >"$PORT_FILE"
    if tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q edgepipe-ferretdb; then
      echo ferretdb >"$ENGINE_FILE"
    else
      echo mongod >"$ENGINE_FILE"
    fi
    stk_say "$SVC" "adopted running server pid $pid"
    return 0
  fi
  echo "local_stack: mongo failed to start: port $MONGO_PORT is already used by ${owner:-another process}; set MONGO_PORT" >&2
  exit 1
}

describe() {
  local eng="$1"
  if [[ "$eng" == ferretdb && -x "$BIN" ]]; then
    "$BIN" version 2>/dev/null | tr -d '\n'
    printf ' (sqlite)'
  elif [[ "$eng" == mongod ]]; then
    printf 'mongod %s' "$(mongod --version 2>/dev/null | sed -n 's/^db version v//p' | head -n1)"
  else
    printf '%s' "$eng"
  fi
}

wait_healthy() { stk_wait_healthy "$SVC" "$1" "$MONGO_START_TIMEOUT" ping_ok; }

cmd_start() {
  local t0 eng pid
  t0="$(stk_now)"
  mkdir -p "$SVC_DIR"

  eng="$(running_engine)"
  if pid="$(stk_pid "$SVC" "$(pattern_for "$eng")")"; then
    check_port "$pid" || exit 1
    if ping_ok || wait_healthy "$pid"; then
      stk_say "$SVC" "already running: $(describe "$eng"), pid $pid, $URL"
      return 0
    fi
    stk_fail "$SVC"
  fi

  adopt_or_refuse
  eng="$(running_engine)"
  if pid="$(stk_pid "$SVC" "$(pattern_for "$eng")")"; then
    ping_ok || wait_healthy "$pid" || stk_fail "$SVC"
    stk_say "$SVC" "already running: $(describe "$eng"), pid $pid, $URL"
    return 0
  fi

  eng="$(engine)"
  case "$eng" in
    mongod)
      mkdir -p "$SVC_DIR/mongod"
      stk_start_bg "$SVC" mongod --dbpath "$SVC_DIR/mongod/" --bind_ip "$MONGO_HOST" \
        --port "$MONGO_PORT"
      ;;
    ferretdb)
      build_if_needed
      mkdir -p "$SVC_DIR/data"
      # GOGC=400: fewer GC cycles during bulk inserts (about +10 % throughput)
      GOGC="${GOGC:-400}" FERRETDB_TELEMETRY=disable DO_NOT_TRACK=1 \
        stk_start_bg "$SVC" "$BIN" serve -listen "$MONGO_HOST:$MONGO_PORT" \
        -data-dir "$SVC_DIR/data" -log-level "$FERRETDB_LOG_LEVEL" \
        -sqlite-params "$FERRETDB_SQLITE_PARAMS" ${FERRETDB_PPROF:+-pprof "$FERRETDB_PPROF"}
      ;;
  esac
  echo "$eng" >"$ENGINE_FILE"
  echo "$MONGO_PORT" >"$PORT_FILE"
  pid="$(cat "$(stk_pidfile "$SVC")")"

  if ! wait_healthy "$pid"; then
    stk_stop "$SVC" 5 "$(pattern_for "$eng")" >/dev/null 2>&1 || true
    stk_fail "$SVC"
  fi
  stk_say "$SVC" "started $(describe "$eng"), pid $pid, $URL in $(stk_since "$t0")s"
}

cmd_stop() {
  local eng
  eng="$(running_engine)"
  stk_stop "$SVC" 20 "$(pattern_for "$eng")"
}

cmd_status() {
  local eng pid
  eng="$(running_engine)"
  if ! pid="$(stk_pid "$SVC" "$(pattern_for "$eng")")"; then
    stk_say "$SVC" "not running"
    return 1
  fi
  check_port "$pid" || return 1
  if ping_ok; then
    stk_say "$SVC" "running: $(describe "$eng"), pid $pid, $URL"
    return 0
  fi
  stk_say "$SVC" "pid $pid alive but not answering ping on $URL"
  return 1
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) stk_usage "$SVC" ;;
esac
