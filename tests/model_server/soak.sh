#!/usr/bin/env bash
# wrk for 10 s with 64 connections against infer: no socket error, no status
# but 200, and /metrics agrees with the number of requests wrk reports.
# usage: soak.sh path/to/model_server
source "$(dirname "$0")/lib.sh"

# Two io threads on one io_context: the shape with the most sharing between threads.
start_server --warm sentiment --workers 2 --max-workers 2 --threads 2
for _ in $(seq 1 100); do
  ask GET /v2/health/ready
  [ "$status" = 200 ] && break
  sleep 0.1
done
check "ready before the soak" status_is 200

wrk -t 2 -c 64 -d 10s --timeout 10s -s "$(dirname "$0")/infer.lua" "$base/v2/models/sentiment/infer" | tee "$work/wrk.out"
requests=$(awk '/ requests in / { print $1 }' "$work/wrk.out")
check "wrk sent requests ($requests)" test "${requests:-0}" -gt 0
check "no socket errors" sh -c "! grep -q 'Socket errors' '$work/wrk.out'"
check "no status but 200" sh -c "! grep -q 'Non-2xx' '$work/wrk.out' && test \"\$(grep '^status ' '$work/wrk.out' | cut -d' ' -f2 | sort -u)\" = 200"

# The server counts an answer before writing it; wrk counts it once read. When
# wrk stops at 10 s, the requests of its 64 connections still in flight are
# answered (and counted) by the server but not by wrk: at most 64 more.
# wrk stops with requests in flight; the server finishes them. Read /metrics
# until two snapshots in a row agree, so that every counter has settled.
previous=
for _ in $(seq 1 50); do
  curl -s --max-time 30 "$base/metrics" | grep -v -e '^model_server_http_requests_total{endpoint="metrics"' \
    -e '^model_server_http_request_duration_seconds.*endpoint="metrics"' -e '^model_server_http_connections' >"$work/metrics"
  [ -n "$previous" ] && cmp -s "$work/metrics" "$previous" && break
  cp "$work/metrics" "$work/metrics.previous"
  previous="$work/metrics.previous"
  sleep 0.1
done
answered=$(awk '$1 == "model_server_http_requests_total{endpoint=\"infer\",code=\"200\"}" { print $2 }' "$work/metrics")
other=$(awk '/^model_server_http_requests_total\{endpoint="infer"/ && !/code="200"/ { s += $2 } END { print s + 0 }' "$work/metrics")
completed=$(awk '$1 == "coropool_requests_completed_total{key=\"sentiment\"}" { print $2 }' "$work/metrics")
echo "wrk read $requests answers; the server answered $answered (and $other other), its pool completed $completed"
check "metrics: answered 200 = wrk's count, plus at most 64 in flight" \
  test "${answered:-0}" -ge "${requests:-1}" -a "${answered:-0}" -le "$((requests + 64))"
check "metrics: no infer answered otherwise" test "$other" -eq 0
check "metrics: the pool completed exactly the requests answered" test "${completed:-0}" -eq "${answered:-0}"
check "metrics: the pool batched under load" \
  test "$(awk '$1 == "coropool_batches_total{key=\"sentiment\"}" { print $2 }' "$work/metrics")" -lt "${completed:-0}"
stop_server
finish
