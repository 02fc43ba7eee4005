# Shared by the model server's tests: start and stop the server, ask it with
# curl, check what comes back. Sourced; $1 of the test is the server binary.
# Traffic goes to 127.0.0.1 only, on a port the server picks.
set -euo pipefail

server_bin=$(realpath "$1")
work=$(mktemp -d "${TMPDIR:-/tmp}/model_server_test.XXXXXX")
failures=0
checks=0
server_pid=

cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then kill -KILL "$server_pid" 2>/dev/null || true; fi
  # Clients left in the background by a test that stopped early (wrk, curl).
  local job
  for job in $(jobs -p); do kill -KILL "$job" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# The demo models, trained once per build directory (the server skips what is there).
demo_models="$(dirname "$server_bin")/demo-models"
"$server_bin" --train-demo --model-dir "$demo_models" >/dev/null

# A model directory of our own: the demo models, plus fault models named by the caller.
models="$work/models"
mkdir -p "$models"
cp "$demo_models"/*.bin "$models/"

check() {  # check "what" condition-command...
  local what=$1
  shift
  checks=$((checks + 1))
  if "$@"; then
    echo "ok   $what"
  else
    echo "FAIL $what"
    failures=$((failures + 1))
  fi
}

# start_server [server options...]: starts it on a free port; sets $base and $server_pid.
start_server() {
  rm -f "$work/port"
  "$server_bin" --model-dir "$models" --port 0 --port-file "$work/port" "$@" >"$work/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 200); do
    [ -s "$work/port" ] && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log"; echo "the server exited at start"; exit 1; }
    sleep 0.05
  done
  [ -s "$work/port" ] || { echo "the server did not start listening"; exit 1; }
  base="http://127.0.0.1:$(cat "$work/port")"
}

# stop_server: SIGTERM; the server must exit 0 within 30 s. Sets $stop_seconds.
stop_server() {
  local started
  started=$(date +%s.%N)
  kill -TERM "$server_pid"
  await_exit
  stop_seconds=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
}

# await_exit: the server (signalled already) must exit 0 within 30 s; killed otherwise.
await_exit() {
  local code=0
  for _ in $(seq 1 300); do
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$server_pid" 2>/dev/null; then
    echo "FAIL the server did not exit within 30 s of SIGTERM"
    failures=$((failures + 1))
    kill -KILL "$server_pid"
  fi
  wait "$server_pid" || code=$?
  check "the server exits 0 after SIGTERM (it exited $code)" test "$code" -eq 0
  server_pid=
}

# ask METHOD PATH [BODY]: sets $status, $body (the file holding the answer) and $headers.
ask() {
  local method=$1 path=$2 data=${3-}
  body="$work/body" headers="$work/headers"
  local args=(-s --max-time 30 -o "$body" -D "$headers" -w '%{http_code}' -X "$method" "$base$path")
  if [ -n "$data" ]; then args+=(-H 'Content-Type: application/json' --data-binary "$data"); fi
  status=$(curl "${args[@]}") || status="curl-failed-$?"
}

# json_is FILTER EXPECTED: the answer's jq FILTER prints EXPECTED.
json_is() { [ "$(jq -c "$1" "$body" 2>/dev/null)" = "$2" ]; }
status_is() { [ "$status" = "$1" ]; }
error_has() { jq -er '.error' "$body" 2>/dev/null | grep -q -- "$1"; }
header_has() { grep -qi "^$1" "$headers"; }

# infer_body TEXT...: an infer request of those texts.
infer_body() {
  local texts
  texts=$(printf '%s\n' "$@" | jq -R . | jq -sc .)
  echo "{\"inputs\":[{\"name\":\"text\",\"datatype\":\"BYTES\",\"shape\":[$#],\"data\":$texts}]}"
}

# metric NAME{LABELS}: the value of one series of /metrics (0 when absent).
metric() {
  curl -s --max-time 30 "$base/metrics" | awk -v series="$1" '$1 == series { v = $2 } END { print (v == "" ? 0 : v) }'
}

finish() {
  echo "$((checks - failures)) of $checks checks passed"
  [ "$failures" -eq 0 ]
}
