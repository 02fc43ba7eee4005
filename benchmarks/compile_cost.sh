#!/usr/bin/env bash
# What including coropool costs a user's build (issue 11, section 4): the README's
# quick start (compile_cost/quick_start.cpp) against the same program on plain
# Asio channels (compile_cost/plain_asio.cpp), each compiled alone as a user
# would, several times, alternated, in each mode. Prints one JSON line per mode:
# medians, min and max of the wall time, the median peak memory, and the ratios.
#
#   benchmarks/compile_cost.sh [--runs N] [--modes O2,O0-g] [--builds header-only,separate] [--cxx COMPILER]
#
#   --runs N      compiles of each file per mode (default 5)
#   --modes LIST  comma-separated: O2 (-O2), O0-g (-O0 -g); default both
#   --builds LIST comma-separated: header-only (the default mode, what the README's
#                 quick start compiles), separate (the quick start's TU with
#                 COROPOOL_SEPARATE_COMPILATION: the core is in another TU, compiled
#                 once per program, and not counted); default header-only
#   --cxx C       the compiler (default: $CXX, else g++)
#
# The machine should be otherwise idle: the figures are wall times. Run it under
# `nice -n 19` on a shared machine (the ratios hold; the times grow).
set -euo pipefail
cd "$(dirname "$0")/.."

runs=5
modes=O2,O0-g
builds=header-only
cxx=${CXX:-g++}
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --modes) modes=$2; shift 2 ;;
    --builds) builds=$2; shift 2 ;;
    --cxx) cxx=$2; shift 2 ;;
    *) echo "usage: $0 [--runs N] [--modes O2,O0-g] [--builds header-only,separate] [--cxx COMPILER]" >&2; exit 2 ;;
  esac
done
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || { echo "$0: --runs wants a positive number" >&2; exit 2; }
command -v "$cxx" >/dev/null || { echo "$0: no compiler '$cxx'" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "$0: needs /usr/bin/time (Debian package time; scripts/dev.sh deps)" >&2; exit 1; }

# The flags a user's build gets: C++20, coropool's headers, and the definitions
# Debian's spdlog::spdlog target (which coropool::coropool links) passes on.
flags=(-std=c++20 -Iinclude -DSPDLOG_SHARED_LIB -DSPDLOG_COMPILED_LIB -DSPDLOG_FMT_EXTERNAL -DFMT_SHARED)

# The measurement is only worth its name while quick_start.cpp is the README's.
readme_quick_start=$(awk '/^```cpp/ { n++; if (n == 1) { inside = 1; next } } inside && /^```/ { exit } inside' README.md)
if [ "$readme_quick_start" != "$(cat benchmarks/compile_cost/quick_start.cpp)" ]; then
  echo "$0: warning: benchmarks/compile_cost/quick_start.cpp differs from the README's first C++ block" >&2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# compile NAME MODE-FLAGS...: prints "seconds peak-KiB" for one compile of compile_cost/NAME.cpp.
compile() {
  local name=$1
  shift
  local extra=()
  [ "$name" = quick_start ] && extra=("${build_flags[@]}")
  if ! /usr/bin/time -o "$work/time" -f '%e %M' "$cxx" "${flags[@]}" "${extra[@]}" "$@" -c "benchmarks/compile_cost/$name.cpp" \
    -o "$work/$name.o" 2>"$work/stderr"; then
    cat "$work/stderr" >&2
    echo "$0: $cxx failed on $name.cpp" >&2
    exit 1
  fi
  tail -n 1 "$work/time"
}

# stats FILE: "median min max" of the numbers in FILE, one a line.
stats() {
  sort -g "$1" | awk '{ v[NR] = $1 } END {
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    print m, v[1], v[NR] }'
}

compiler=$("$cxx" --version | head -n 1)
IFS=, read -r -a mode_list <<<"$modes"
IFS=, read -r -a build_list <<<"$builds"
for build in "${build_list[@]}"; do
  case "$build" in
    header-only) build_flags=() ;;
    separate) build_flags=(-DCOROPOOL_SEPARATE_COMPILATION) ;;
    *) echo "$0: unknown build '$build' (header-only, separate)" >&2; exit 2 ;;
  esac
for mode in "${mode_list[@]}"; do
  case "$mode" in
    O2) mode_flags=(-O2) ;;
    O0-g) mode_flags=(-O0 -g) ;;
    *) echo "$0: unknown mode '$mode' (O2, O0-g)" >&2; exit 2 ;;
  esac
  for name in quick_start plain_asio; do : >"$work/$name.s" && : >"$work/$name.kib"; done
  for ((run = 1; run <= runs; run++)); do
    # Alternate which file goes first, so that neither always meets the machine as the other left it.
    order=(quick_start plain_asio)
    ((run % 2)) || order=(plain_asio quick_start)
    for name in "${order[@]}"; do
      measured=$(compile "$name" "${mode_flags[@]}")
      read -r seconds kib <<<"$measured"
      echo "$seconds" >>"$work/$name.s"
      echo "$kib" >>"$work/$name.kib"
      echo "compile_cost: $build $mode run $run/$runs $name ${seconds} s $((kib / 1024)) MiB" >&2
    done
  done
  read -r q_s q_min q_max < <(stats "$work/quick_start.s")
  read -r p_s p_min p_max < <(stats "$work/plain_asio.s")
  read -r q_kib _ _ < <(stats "$work/quick_start.kib")
  read -r p_kib _ _ < <(stats "$work/plain_asio.kib")
  awk -v build="$build" -v mode="$mode" -v compiler="$compiler" -v runs="$runs" -v q_s="$q_s" -v q_min="$q_min" -v q_max="$q_max" \
    -v p_s="$p_s" -v p_min="$p_min" -v p_max="$p_max" -v q_kib="$q_kib" -v p_kib="$p_kib" 'BEGIN {
    printf "{\"bench\":\"compile_cost\",\"build\":\"%s\",\"mode\":\"%s\",\"compiler\":\"%s\",", build, mode, compiler
    printf "\"coropool_s\":%.2f,\"coropool_s_min\":%.2f,\"coropool_s_max\":%.2f,", q_s, q_min, q_max
    printf "\"plain_s\":%.2f,\"plain_s_min\":%.2f,\"plain_s_max\":%.2f,\"ratio_time\":%.2f,", p_s, p_min, p_max, q_s / p_s
    printf "\"coropool_mib\":%.0f,\"plain_mib\":%.0f,\"ratio_mem\":%.2f,", q_kib / 1024, p_kib / 1024, q_kib / p_kib
    printf "\"runs\":%d}\n", runs }'
done
done
