#!/usr/bin/env bash
# coropool's one entry point on a fresh Debian 12 machine:
#   scripts/dev.sh example   install what is missing, build, run the main example
#   scripts/dev.sh test      install what is missing, build, run every test
#   scripts/dev.sh deps      only install what is missing
# Packages come from apt (as root; otherwise the missing ones are named and it stops).
set -euo pipefail
cd "$(dirname "$0")/.."

# libclang-rt-14-dev holds clang's sanitizer and libFuzzer runtimes, which clang only recommends.
# time is /usr/bin/time, which benchmarks/compile_cost.sh measures with (not in minimal images).
packages=(cmake ninja-build g++ clang libclang-rt-14-dev clang-format doxygen git libboost1.81-dev libspdlog-dev catch2 time)

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
    echo "usage: $0 example|test|deps" >&2
    exit 2
    ;;
esac
