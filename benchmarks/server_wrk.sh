#!/usr/bin/env bash
# The model server under wrk (issue 14): requests per second and wrk's latency
# percentiles of POST /v2/models/sentiment/infer (one text per request) for 1,
# 64 and 256 connections, batching off (--max-batch-size 1) and on (32), the
# pool on one io_context run by both io threads ("shared") and on one per
# thread ("per-core", --io-per-core). Beside each, the `http-floor` row: the
# same server and connections asking GET /v2/health/live, which touches no
# pool and no model: what HTTP alone costs here.
#
#   benchmarks/server_wrk.sh [--server PATH] [--runs N] [--duration SECONDS]
#
# Every setting runs N times (default 3), the settings in a different order
# each round so that all of them see the machine's slow and fast minutes; each
# row is the median run, with the range. One JSON object per line.
# wrk runs on the same two cores as the server: the figures are the machine's
# and wrk's as much as the server's; compare rows of one run only.
set -euo pipefail
cd "$(dirname "$0")/.."

server=build/bench/examples/model_server/model_server
runs=3
duration=5
while [ $# -gt 0 ]; do
  case "$1" in
    --server) server=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    *) echo "usage: $0 [--server PATH] [--runs N] [--duration SECONDS]" >&2; exit 2 ;;
  esac
done
[ -x "$server" ] || { echo "$0: no server at $server (cmake --preset bench && cmake --build --preset bench)" >&2; exit 1; }
command -v wrk >/dev/null || { echo "$0: needs wrk (scripts/dev.sh deps)" >&2; exit 1; }

work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill -KILL $pid 2>/dev/null; rm -rf "$work"' EXIT
models=$work/models
"$server" --train-demo --model-dir "$models" >/dev/null
lua=tests/model_server/infer.lua

# One run: prints "req_per_s p50_us p99_us mean_batch".
run_one() {  # run_one IMPL CONNECTIONS BATCH IO
  local impl=$1 c=$2 batch=$3 io=$4
  local io_flags=(--threads 2)
  [ "$io" = per-core ] && io_flags+=(--io-per-core)
  rm -f "$work/port"
  "$server" --model-dir "$models" --port 0 --port-file "$work/port" --warm sentiment --workers 2 --max-workers 2 \
    --compute-threads 2 --queue-capacity 1024 --max-batch-size "$batch" "${io_flags[@]}" >"$work/server.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 200); do [ -s "$work/port" ] && break; sleep 0.05; done
  local base="http://127.0.0.1:$(cat "$work/port")"
  for _ in $(seq 1 200); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$base/v2/health/ready")" = 200 ] && break
    sleep 0.05
  done
  local threads=2
  [ "$c" -lt 2 ] && threads=1
  if [ "$impl" = http-floor ]; then
    wrk -t "$threads" -c "$c" -d "${duration}s" --timeout 10s --latency "$base/v2/health/live" >"$work/wrk.out" 2>&1
  else
    wrk -t "$threads" -c "$c" -d "${duration}s" --timeout 10s --latency -s "$lua" "$base/v2/models/sentiment/infer" \
      >"$work/wrk.out" 2>&1
  fi
  curl -s "$base/metrics" >"$work/metrics"
  kill -TERM $pid
  wait $pid || true
  pid=
  if grep -q -e 'Socket errors' -e 'Non-2xx' "$work/wrk.out"; then
    echo "$0: errors in a run ($impl c=$c batch=$batch io=$io):" >&2
    cat "$work/wrk.out" >&2
    exit 1
  fi
  local rps p50 p99 completed batches
  rps=$(awk '/^Requests\/sec:/ { print $2 }' "$work/wrk.out")
  # wrk's --latency distribution: "    50%    1.23ms"
  to_us() { awk '{ v = $1 + 0; if ($1 ~ /us$/) print int(v); else if ($1 ~ /ms$/) print int(v * 1000); else print int(v * 1e6) }'; }
  p50=$(awk '$1 == "50%" { print $2 }' "$work/wrk.out" | to_us)
  p99=$(awk '$1 == "99%" { print $2 }' "$work/wrk.out" | to_us)
  completed=$(awk '$1 == "coropool_requests_completed_total{key=\"sentiment\"}" { print $2 }' "$work/metrics")
  batches=$(awk '$1 == "coropool_batches_total{key=\"sentiment\"}" { print $2 }' "$work/metrics")
  echo "$rps $p50 $p99 $(awk -v c="${completed:-0}" -v b="${batches:-0}" 'BEGIN { printf("%.2f", (b > 0 ? c / b : 0)) }')"
}

settings=()
for io in shared per-core; do
  for c in 1 64 256; do
    settings+=("model_server $c 1 $io" "model_server $c 32 $io")
    settings+=("http-floor $c 1 $io")
  done
done
n=${#settings[@]}
for round in $(seq 1 "$runs"); do
  for i in $(seq 0 $((n - 1))); do
    s=${settings[$(((i + (round - 1) * 5) % n))]}
    # shellcheck disable=SC2086
    echo "$s $(run_one $s)" >>"$work/results"
  done
done

# The median run of each setting, by req/s, with the range.
sort -k1,1 -k5,5 "$work/results" | awk -v runs="$runs" '
  { key = $1 " " $2 " " $3 " " $4; n[key]++; row[key, n[key]] = $0; rps[key, n[key]] = $5 }
  END {
    for (key in n) {
      # insertion sort of the runs by req/s
      for (i = 1; i <= n[key]; i++) idx[i] = i
      for (i = 2; i <= n[key]; i++) for (j = i; j > 1 && rps[key, idx[j]] < rps[key, idx[j - 1]]; j--) { t = idx[j]; idx[j] = idx[j - 1]; idx[j - 1] = t }
      split(row[key, idx[int((n[key] + 1) / 2)]], m, " ")
      printf "{\"bench\":\"server_wrk\",\"impl\":\"%s\",\"threads\":2,\"params\":{\"connections\":%d,\"max_batch_size\":%d,\"io\":\"%s\",\"duration_s\":%d,\"runs\":%d},\"req_per_s\":%.0f,\"req_per_s_min\":%.0f,\"req_per_s_max\":%.0f,\"p50_us\":%d,\"p99_us\":%d,\"mean_batch\":%s}\n",
        m[1], m[2], m[3], m[4], '"$duration"', n[key], m[5], rps[key, idx[1]], rps[key, idx[n[key]]], m[6], m[7], m[8]
    }
  }' | sort
