#!/usr/bin/env bash
# Under wrk, a model that fails to load (503) and one that hangs (504, then 503
# from its breaker) next to a healthy one: the healthy model answers only 200,
# the faulty ones only their errors, and the server exits cleanly on SIGTERM.
# usage: fault_soak.sh path/to/model_server
source "$(dirname "$0")/lib.sh"

head -c 4096 /dev/urandom >"$models/broken.bin"
cp "$models/sentiment.bin" "$models/hang.bin"
# One io_context, pool and acceptor per io thread (--io-per-core): /metrics sums the cores.
start_server --warm sentiment --inject-delay hang=3600 --drain-timeout 3 --threads 2 --io-per-core
lua="$(dirname "$0")/infer.lua"
wrk -t 1 -c 16 -d 8s --timeout 10s -s "$lua" "$base/v2/models/sentiment/infer" >"$work/healthy.out" &
healthy=$!
wrk -t 1 -c 16 -d 8s --timeout 10s -s "$lua" "$base/v2/models/broken/infer" >"$work/broken.out" &
broken=$!
INFER_TIMEOUT_US=200000 wrk -t 1 -c 16 -d 8s --timeout 10s -s "$lua" "$base/v2/models/hang/infer" >"$work/hang.out" &
hang=$!
wait "$healthy" "$broken" "$hang"
for run in healthy broken hang; do
  echo "--- $run"
  grep -E 'requests in|Socket errors|Non-2xx|^status|^latency' "$work/$run.out"
done
statuses() { grep '^status ' "$work/$1.out" | cut -d' ' -f2 | sort -u | tr '\n' ' '; }
count() { awk -v s="$2" '$1 == "status" && $2 == s { print $3 }' "$work/$1.out"; }
check "the healthy model: only 200 ($(statuses healthy))" test "$(statuses healthy)" = "200 "
check "the healthy model kept serving ($(count healthy 200) answers)" test "$(count healthy 200)" -gt 100
check "the model that fails to load: only 503 ($(statuses broken))" test "$(statuses broken)" = "503 "
# Its requests time out (504) in its handler; timeouts count against its
# breaker, which opens after five and refuses the rest at once (503).
check "the model that hangs: 504, then 503 once its breaker opens ($(statuses hang))" test "$(statuses hang)" = "503 504 "
check "the model that hangs: 504 at first ($(count hang 504))" test "$(count hang 504)" -ge 5
ask POST /v2/models/hang/infer "$(infer_body x)"
check "the model that hangs: its breaker is open" error_has "circuit breaker is open"
check "no socket errors" sh -c "! grep -q 'Socket errors' '$work/healthy.out' '$work/broken.out' '$work/hang.out'"
ask GET /v2/health/live
check "still live after the soak" status_is 200
ask POST /v2/models/broken/infer "$(infer_body x)"
check "the broken model: its breaker open, or its load failed again" error_has "circuit breaker is open\|failed to load"
stop_server
check "the server stopped within its drain deadline (3 s; took $stop_seconds s)" awk -v t="$stop_seconds" 'BEGIN { exit !(t < 5) }'
finish
