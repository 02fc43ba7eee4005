#!/usr/bin/env bash
# coropool's one entry point on a fresh Debian 12 machine:
#   scripts/dev.sh serve     install what is missing, build, train the demo models, serve them on
#                            127.0.0.1:8000 (the model server; Ctrl-C drains and stops it)
#   scripts/dev.sh example   install what is missing, build, run the main example
#   scripts/dev.sh test      install what is missing, build, run every test
#   scripts/dev.sh deps      only install what is missing
# Packages come from apt (as root; otherwise the missing ones are named and it stops).
set -euo pipefail
cd "$(dirname "$0")/.."

# libclang-rt-14-dev holds clang's sanitizer and libFuzzer runtimes, which clang only recommends.
# time is /usr/bin/time, which benchmarks/compile_cost.sh measures with (not in minimal images);
# valgrind counts instructions for benchmarks/instructions.sh.
# The model server (examples/model_server) adds Boost.JSON, Boost.Program_options and fastText,
# and its tests curl, jq and wrk.
packages=(cmake ninja-build g++ clang libclang-rt-14-dev clang-format doxygen git libboost1.81-dev libspdlog-dev catch2 time valgrind
  libboost-json1.81-dev libboost-program-options1.81-dev libfasttext-dev curl jq wrk)

install_missing() {
  local missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

case "${1:-}" in
  deps)
    install_missing
    ;;
  serve)
    install_missing
    cmake --preset dev
    cmake --build --preset dev --target model_server
    server=build/dev/examples/model_server/model_server
    models=build/models
    "$server" --train-demo --model-dir "$models"
    shift
    cat <<'EOF'

Try, from another terminal:
  curl -s localhost:8000/v2/health/ready
  curl -s -X POST localhost:8000/v2/repository/index | jq
  curl -s -X POST localhost:8000/v2/models/sentiment/infer \
    -d '{"inputs":[{"name":"text","datatype":"BYTES","shape":[2],"data":["i loved it","a waste of time"]}]}' | jq
  curl -s -N -X POST localhost:8000/v2/models/topic/generate_stream -d '{"text_input":"rain all day\nthe team won"}'
  curl -s localhost:8000/metrics | grep model_server_http
Ctrl-C drains and stops the server.

EOF
    exec "$server" --model-dir "$models" --warm sentiment "$@"
    ;;
  example)
    install_missing
    cmake --preset dev
    cmake --build --preset dev --target cold_start
    ./build/dev/examples/cold_start
    ;;
  test)
    install_missing
    cmake --preset dev
    cmake --build --preset dev
    ctest --preset dev
    ;;
  *)
    echo "usage: $0 serve|test|example|deps" >&2
    exit 2
    ;;
esac
