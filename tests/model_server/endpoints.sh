#!/usr/bin/env bash
# Every endpoint and every error of the model server, asked with curl and read with jq.
# usage: endpoints.sh path/to/model_server
source "$(dirname "$0")/lib.sh"

# Fault models: a file that is not a model, and copies of the sentiment model
# whose batches are delayed (--inject-delay) so that requests queue and batch.
head -c 4096 /dev/urandom >"$models/broken.bin"
cp "$models/sentiment.bin" "$models/batchy.bin"
cp "$models/sentiment.bin" "$models/slow.bin"

# Every answer is tallied by endpoint and status, to be found again in /metrics.
declare -A sent
ask_as() {  # ask_as ENDPOINT METHOD PATH [BODY]
  local endpoint=$1
  shift
  ask "$@"
  sent["$endpoint $status"]=$((${sent["$endpoint $status"]:-0} + 1))
}

# batchy is warm, so that its parked worker takes the first caller alone and
# the rest queue behind it. A started stream is not cancelled when its reader
# leaves (it stops at its next write): slow's stream below holds a worker
# until the drain's deadline, hence a short one.
start_server --warm sentiment batchy --failure-threshold 2 --max-body-bytes 65536 --client-timeout 2 \
  --drain-timeout 2 --inject-delay batchy=0.2 slow=30
echo "server at $base"

# ---- health and metadata ----------------------------------------------------
ask_as live GET /v2/health/live
check "live: 200" status_is 200
check "live: {live: true}" json_is .live true
for _ in $(seq 1 100); do  # ready once the warm model has loaded
  ask_as ready GET /v2/health/ready
  [ "$status" = 200 ] && break
  sleep 0.1
done
check "ready: 200 once the warm model is loaded" status_is 200
check "ready: {ready: true}" json_is .ready true
ask_as server_metadata GET /v2
check "server metadata: the extensions" json_is .extensions '["model_repository","generate_stream"]'
ask_as model_metadata GET /v2/models/sentiment
check "metadata of a classifier: 200" status_is 200
check "metadata of a classifier: its outputs" json_is '[.outputs[].name]' '["labels","probabilities","vector"]'
check "metadata of a classifier: BYTES input" json_is '.inputs[0].datatype' '"BYTES"'
ask_as model_metadata GET /v2/models/embed
check "metadata of a vector model: one output of 32 values" json_is '[.outputs[] | [.name, .shape]]' '[["vector",[-1,32]]]'
ask_as model_metadata GET /v2/models/nope
check "metadata of an unknown model: 404" status_is 404
check "metadata of an unknown model: says which" error_has "no model named 'nope'"
ask_as model_metadata GET /v2/models/broken
check "metadata of a file that is not a model: 503" status_is 503
ask_as model_ready GET /v2/models/sentiment/ready
check "model ready (warm): 200" status_is 200
ask_as model_ready GET /v2/models/topic/ready
check "model ready (never loaded): 503, not loaded" json_is '[.ready, .error]' '[false,"not loaded"]'

# ---- infer -----------------------------------------------------------------
ask_as infer POST /v2/models/sentiment/infer \
  '{"id":"r1","inputs":[{"name":"text","datatype":"BYTES","shape":[2],"data":["i loved it, a great film","awful and boring, a waste"]}],"parameters":{"top_k":2}}'
check "infer: 200" status_is 200
check "infer: the id comes back" json_is .id '"r1"'
check "infer: labels, top 2 of each text" json_is '.outputs[0] | [.name, .datatype, .shape, .data]' \
  '["labels","BYTES",[2,2],["positive","negative","negative","positive"]]'
check "infer: probabilities, the first sure" json_is '.outputs[1] | [.name, .datatype, .shape, (.data[0] > 0.9), (.data[2] > 0.9)]' \
  '["probabilities","FP32",[2,2],true,true]'
ask_as infer POST /v2/models/topic/infer "$(infer_body "rain and snow tomorrow" "the team scored a goal" "a spicy pizza for dinner" "the compiler and the linux server")"
check "infer on a cold model: 200" status_is 200
check "infer: four topics" json_is '.outputs[0].data' '["weather","sports","food","tech"]'
ask_as infer POST /v2/models/embed/infer "$(infer_body "hello world")"
check "infer on a vector model: a vector of 32" json_is '.outputs[0] | [.name, .shape, (.data | length)]' '["vector",[1,32],32]'
ask_as infer POST /v2/models/sentiment/infer \
  '{"inputs":[{"name":"text","datatype":"BYTES","shape":[1,1],"data":[["great"]]}],"outputs":[{"name":"vector"}],"parameters":{"priority":0,"timeout":5000000}}'
check "infer: an output asked for, a priority and a timeout of its own" json_is '.outputs[0] | [.name, .shape]' '["vector",[1,16]]'

# Batched: 24 callers at once on a model whose batches take 200 ms: they queue
# behind the first batch and are served in a few batches, each answered right.
seq 1 24 | xargs -P 24 -I{} sh -c \
  "curl -s --max-time 30 -o '$work/batch.{}' -w '%{http_code}\n' -X POST '$base/v2/models/batchy/infer' -H 'Content-Type: application/json' \
     --data-binary '{\"inputs\":[{\"name\":\"text\",\"datatype\":\"BYTES\",\"shape\":[1],\"data\":[\"caller {} loved it, great\"]}]}'" \
  >"$work/batch.codes"
sent["infer 200"]=$((${sent["infer 200"]:-0} + $(grep -c '^200$' "$work/batch.codes")))
check "batched: 24 answers of 200" test "$(grep -c '^200$' "$work/batch.codes")" -eq 24
check "batched: each answer right" test "$(cat "$work"/batch.[0-9]* | jq -r '.outputs[0].data[0]' | grep -c '^positive$')" -eq 24
batches=$(metric 'coropool_batches_total{key="batchy"}')
sent["metrics 200"]=$((${sent["metrics 200"]:-0} + 1))
check "batched: 24 requests in fewer batches ($batches)" test "$batches" -ge 2 -a "$batches" -lt 24

# ---- infer: bad input and refusals -----------------------------------------
ask_as infer POST /v2/models/nope/infer "$(infer_body hi)"
check "unknown model: 404" status_is 404
ask_as infer POST /v2/models/sentiment/infer '{"inputs": [ {"name": "text", '
check "malformed JSON: 400" status_is 400
check "malformed JSON: says so" error_has "malformed JSON"
ask_as infer POST /v2/models/sentiment/infer '{"inputs":[{"name":"text","datatype":"BYTES","shape":[3],"data":["a","b"]}]}'
check "data and shape disagree: 400" status_is 400
check "data and shape disagree: says how" error_has 'holds 2 texts, its "shape" says 3'
ask_as infer POST /v2/models/sentiment/infer '{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1.0]}]}'
check "a datatype other than BYTES: 400" status_is 400
ask_as infer POST /v2/models/sentiment/infer '[1,2,3]'
check "a body that is not an object: 400" status_is 400
ask_as infer POST /v2/models/embed/infer '{"inputs":[{"name":"text","datatype":"BYTES","shape":[1],"data":["x"]}],"outputs":[{"name":"labels"}]}'
check "labels of a vector model: 400" status_is 400
check "labels of a vector model: says so" error_has "has no labels"
ask_as infer POST /v2/models/sentiment/infer '{"inputs":[{"name":"text","datatype":"BYTES","shape":[1],"data":["x"]}],"outputs":[{"name":"logits"}]}'
check "an unknown output: 400" status_is 400
ask_as infer POST /v2/models/sentiment/infer '{"inputs":[{"name":"text","datatype":"BYTES","shape":[1],"data":["x"]}],"parameters":{"priority":99}}'
check "a priority out of range: 400 (the pool's invalid_argument)" status_is 400
ask_as infer POST /v2/models/sentiment/infer '{"inputs":[{"name":"text","datatype":"BYTES","shape":[1],"data":["x"]}],"parameters":{"timeout":-5}}'
check "a negative timeout: 400" status_is 400
ask_as infer GET /v2/models/sentiment/infer
check "GET on infer: 405" status_is 405
check "GET on infer: Allow: POST" header_has "Allow: POST"
ask_as other GET /v2/nothing/here
check "no route: 404" status_is 404
big=$(head -c 200000 /dev/zero | tr '\0' 'a')
printf '{"inputs":[{"name":"text","datatype":"BYTES","shape":[1],"data":["%s"]}]}' "$big" >"$work/big.json"
status=$(curl -s --max-time 30 -o "$work/body" -w '%{http_code}' -X POST "$base/v2/models/sentiment/infer" --data-binary @"$work/big.json") || true
body="$work/body"
sent["other $status"]=$((${sent["other $status"]:-0} + 1))
check "a body over --max-body-bytes: 413" status_is 413
check "a body over --max-body-bytes: says the limit" error_has "over 65536 bytes"

ask_as infer POST /v2/models/slow/infer '{"inputs":[{"name":"text","datatype":"BYTES","shape":[1],"data":["x"]}],"parameters":{"timeout":300000}}'
check "a deadline passed (a model that hangs): 504" status_is 504
check "a deadline passed: says so" error_has "did not answer before the deadline"
ask_as infer POST /v2/models/broken/infer "$(infer_body hi)"
check "a model that fails to load: 503" status_is 503
check "a model that fails to load: with the cause" error_has "failed to load: cannot load broken.bin: .* wrong file format"
ask_as model_ready GET /v2/models/broken/ready
check "model ready of a model that failed: 503 with the cause" error_has "failed to load"
opened=no
for _ in $(seq 1 6); do  # --failure-threshold 2: the breaker opens after the second failure
  ask_as infer POST /v2/models/broken/infer "$(infer_body hi)"
  if error_has "circuit breaker is open"; then opened=yes; break; fi
done
check "the breaker opens: 503 saying so" test "$opened:$status" = "yes:503"

# ---- streaming (Server-Sent Events) ----------------------------------------
doc='{"text_input":"rain and snow\nthe team won the match\n\npizza and pasta\nlinux and the compiler\nsunny and warm","parameters":{"top_k":1}}'
curl -s -N --max-time 30 -o "$work/sse" -D "$work/sse.headers" -X POST "$base/v2/models/topic/generate_stream" --data-binary "$doc"
sent["generate_stream 200"]=$((${sent["generate_stream 200"]:-0} + 1))
check "stream: text/event-stream" grep -qi '^Content-Type: text/event-stream' "$work/sse.headers"
check "stream: one event per non-empty line, in order" \
  test "$(grep '^data: {"model_name":"topic","index"' "$work/sse" | sed 's/^data: //' | jq -sc '[.[] | [.index, .labels[0]]]')" = \
  '[[0,"weather"],[1,"sports"],[2,"food"],[3,"tech"],[4,"weather"]]'
check "stream: the texts come back" test "$(grep '"index":3' "$work/sse" | sed 's/^data: //' | jq -r .text)" = "linux and the compiler"
check "stream: then the end, last" test "$(grep -v '^$' "$work/sse" | tail -2 | tr '\n' '|')" = 'event: end|data: {"model_name":"topic","events":5}|'
ask_as generate_stream POST /v2/models/nope/generate_stream '{"text_input":"x"}'
check "stream of an unknown model: 404" status_is 404
ask_as generate_stream POST /v2/models/topic/generate_stream '{"text_input":""}'
check "stream of no text: 400" status_is 400
ask_as generate_stream POST /v2/models/slow/generate_stream '{"text_input":"x","parameters":{"timeout":300000}}'
check "stream whose deadline passes before it starts: 504" status_is 504
check "stream whose deadline passes: says so" error_has "did not start the stream before the deadline"

# ---- the model repository ----------------------------------------------------
ask_as repository_index POST /v2/repository/index
check "index: every model file" json_is '[.[].name]' '["batchy","broken","embed","sentiment","slow","topic"]'
check "index: the warm model is READY" json_is '.[] | select(.name == "sentiment") | .state' '"READY"'
check "index: the broken model says why" json_is '.[] | select(.name == "broken") | [.state, (.reason | startswith("failed to load"))]' '["UNAVAILABLE",true]'
ask_as unload POST /v2/repository/models/topic/unload
check "unload: 200" status_is 200
ask_as model_ready GET /v2/models/topic/ready
check "unloaded: not ready" status_is 503
ask_as repository_index POST /v2/repository/index
check "index: the unloaded model is UNAVAILABLE" json_is '.[] | select(.name == "topic") | .state' '"UNAVAILABLE"'
ask_as load POST /v2/repository/models/topic/load
check "load: 200" status_is 200
ask_as model_ready GET /v2/models/topic/ready
check "loaded: ready" status_is 200
ask_as load POST /v2/repository/models/nope/load
check "load of an unknown model: 404" status_is 404
ask_as load POST /v2/repository/models/broken/load
check "load of a broken model: 503" status_is 503

# ---- slow and stalled clients ----------------------------------------------
port=${base##*:}
exec 3<>"/dev/tcp/127.0.0.1/$port"
printf 'POST /v2/models/sentiment/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"inp' >&3
ask_as live GET /v2/health/live
check "a stalled client does not hold the server" status_is 200
start=$(date +%s)
timeout 10 cat <&3 >/dev/null || true
exec 3<&-
waited=$(($(date +%s) - start))
check "a stalled client is cut off after --client-timeout (2 s; took ${waited} s)" test "$waited" -ge 1 -a "$waited" -le 6

# ---- metrics: the counters equal the requests sent ---------------------------
curl -s --max-time 30 "$base/metrics" >"$work/metrics"
sent["metrics 200"]=$((${sent["metrics 200"]:-0} + 1))
metrics_agree=yes
total=0
for key in "${!sent[@]}"; do
  endpoint=${key% *} code=${key#* }
  n=${sent[$key]}
  total=$((total + n))
  got=$(awk -v s="model_server_http_requests_total{endpoint=\"$endpoint\",code=\"$code\"}" '$1 == s { print $2 }' "$work/metrics")
  if [ "$endpoint $code" = "metrics 200" ]; then n=$((n - 1)); total=$((total - 1)); fi  # this one is counted after it renders
  if [ "${got:-0}" != "$n" ]; then
    echo "  $endpoint $code: sent $n, /metrics says ${got:-0}"
    metrics_agree=no
  fi
done
check "metrics: every endpoint and status counted as sent" test "$metrics_agree" = yes
counted=$(awk '/^model_server_http_requests_total/ { s += $2 } END { print s }' "$work/metrics")
check "metrics: nothing counted that was not sent ($counted of $total)" test "$counted" -eq "$total"
check "metrics: the pool's requests, batchy's 24 completed" grep -q '^coropool_requests_completed_total{key="batchy"} 24$' "$work/metrics"
check "metrics: the latency histogram counts every infer" \
  test "$(awk '/^model_server_http_request_duration_seconds_count{endpoint="infer"}/ { print $2 }' "$work/metrics")" -eq \
  "$(awk '/^model_server_http_requests_total{endpoint="infer"/ { s += $2 } END { print s }' "$work/metrics")"
stop_server

# ---- a second server: queue full, memory budget, HTTP/1.0, Expect, and the SIGTERM drain
cp "$models/sentiment.bin" "$models/slow3.bin"
start_server --workers 1 --max-workers 1 --max-batch-size 1 --queue-capacity 2 --memory-budget-mb 2 \
  --drain-grace 1 --inject-delay slow=1 slow3=3
# The slow model takes 1 s a request: one in its handler, two queued, the rest refused.
seq 1 8 | xargs -P 8 -I{} curl -s --max-time 30 -o /dev/null -D "$work/full.{}" -w '%{http_code}\n' -X POST \
  "$base/v2/models/slow/infer" --data-binary "$(infer_body "i loved it")" >"$work/full.codes"
check "queue full: some 429" grep -q '^429$' "$work/full.codes"
check "queue full: the rest 200" test "$(grep -c -v -e '^429$' -e '^200$' "$work/full.codes")" -eq 0
check "queue full: 429 says Retry-After" sh -c "grep -l '^HTTP/1.1 429' $work/full.* | xargs grep -qi '^Retry-After: 1'"
# The same for a stream: one in the handler, two queued, then the stream is refused.
fillers=()
for i in 1 2 3; do
  curl -s --max-time 30 -o /dev/null -X POST "$base/v2/models/slow/infer" --data-binary "$(infer_body "x $i")" &
  fillers+=($!)
  sleep 0.1
done
sleep 0.2
ask POST /v2/models/slow/generate_stream '{"text_input":"x"}'
check "queue full, for a stream: 429 at once" status_is 429
check "queue full, for a stream: says Retry-After" header_has "Retry-After: 1"
wait "${fillers[@]}"
ask POST /v2/models/embed/infer "$(infer_body x)"
check "over the memory budget (2 MiB, embed takes 2.5): 503" status_is 503
check "over the memory budget: says so" error_has "no memory left"
curl -s --max-time 30 --http1.0 -o "$work/sse10" -D "$work/sse10.headers" -X POST "$base/v2/models/topic/generate_stream" \
  --data-binary '{"text_input":"rain\nthe match"}'
check "stream to an HTTP/1.0 client: no chunks, events as the body" \
  test "$(grep -c '^data: {"model_name":"topic","index"' "$work/sse10"):$(grep -ci '^Transfer-Encoding' "$work/sse10.headers" || true)" = "2:0"
status=$(curl -s --max-time 30 -o "$work/body" -w '%{http_code}' -H 'Expect: 100-continue' -X POST \
  "$base/v2/models/sentiment/infer" --data-binary "$(infer_body "great")")
check "Expect: 100-continue is answered at once, then the request" status_is 200

# SIGTERM with a request in flight: ready turns 503 at once, new connections
# are refused after --drain-grace, and the request in flight (3 s) is answered
# after both, with Connection: close.
curl -s --max-time 30 -o "$work/inflight" -D "$work/inflight.headers" -w '%{http_code}' -X POST \
  "$base/v2/models/slow3/infer" --data-binary "$(infer_body "great, i loved it")" >"$work/inflight.code" &
inflight=$!
sleep 0.3
kill -TERM "$server_pid"
sleep 0.2
ask GET /v2/health/ready
check "drain: ready turns 503" status_is 503
ask GET /v2/health/live
check "drain: still accepting during --drain-grace" status_is 200
sleep 1.3
curl -s -o /dev/null --max-time 5 "$base/v2/health/live" && refused=no || refused="yes (curl $?)"
check "drain: new connections refused after the grace ($refused)" test "${refused%% *}" = yes
check "drain: the server still runs, draining" kill -0 "$server_pid"
wait "$inflight" || true
check "drain: the request in flight is answered 200" test "$(cat "$work/inflight.code")" = 200
check "drain: and answered right" test "$(jq -r '.outputs[0].data[0]' "$work/inflight")" = positive
check "drain: with Connection: close" grep -qi '^Connection: close' "$work/inflight.headers"
await_exit
check "drain: the log tells the drain" grep -q "not ready; accepting for 1 s more" "$work/server.log"

finish
