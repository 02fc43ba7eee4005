#!/usr/bin/env bash
# Instructions per request of the request path on one thread, counted by
# callgrind: exact, and unmoved by the VM's speed, unlike the wall time of
# roundtrip's context-per-thread rows (benchmarks/README.md). It builds
# instructions/one_thread.cpp against each tree's include/ (-O2, as a user's
# Release build of the quick start), runs it under callgrind for N and 2N
# requests, and prints one JSON line per tree: the difference over N, so that
# the start-up and shutdown cancel out.
#
#   benchmarks/instructions.sh [--requests N] [--clients C] [TREE...]
#
#   TREE   a checkout of coropool (default: this one); name several to compare,
#          e.g. a git worktree of an older commit
#
# Needs valgrind (scripts/dev.sh deps installs it). About a minute per tree.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

requests=100000
clients=128
trees=()
while [ $# -gt 0 ]; do
  case "$1" in
    --requests) requests=$2; shift 2 ;;
    --clients) clients=$2; shift 2 ;;
    -*) echo "usage: $0 [--requests N] [--clients C] [TREE...]" >&2; exit 2 ;;
    *) trees+=("$1"); shift ;;
  esac
done
[ ${#trees[@]} -gt 0 ] || trees=("$here")
[[ "$requests" =~ ^[1-9][0-9]*$ && "$clients" =~ ^[1-9][0-9]*$ ]] || { echo "$0: --requests and --clients want positive numbers" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "$0: needs valgrind (scripts/dev.sh deps)" >&2; exit 1; }
cxx=${CXX:-g++}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# instructions BINARY REQUESTS: the instructions callgrind counted for one run.
instructions() {
  valgrind --tool=callgrind --callgrind-out-file="$work/out" "$1" "$clients" "$2" >/dev/null 2>"$work/log"
  sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$work/log"
}

for tree in "${trees[@]}"; do
  [ -d "$tree/include/coropool" ] || { echo "$0: $tree has no include/coropool" >&2; exit 1; }
  commit=$(git -C "$tree" rev-parse --short HEAD 2>/dev/null || echo unknown)
  "$cxx" -std=c++20 -O2 -DNDEBUG -I"$tree/include" -DSPDLOG_SHARED_LIB -DSPDLOG_COMPILED_LIB -DSPDLOG_FMT_EXTERNAL \
    -DFMT_SHARED "$here/benchmarks/instructions/one_thread.cpp" -o "$work/one_thread" -lspdlog -lfmt -pthread
  once=$(instructions "$work/one_thread" "$requests")
  twice=$(instructions "$work/one_thread" $((2 * requests)))
  per=$(( (twice - once) / requests ))
  printf '{"bench":"instructions","impl":"coropool","commit":"%s","params":{"clients":%d,"requests":%d},"per_request":%d}\n' \
    "$commit" "$clients" "$requests" "$per"
done
