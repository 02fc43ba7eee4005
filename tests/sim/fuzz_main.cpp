// The libFuzzer entry point (clang -fsanitize=fuzzer): see scenario.hpp.
#include "scenario.hpp"

#include "manual_clock.hpp"

#include <cstddef>
#include <cstdint>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  // A violation escapes as an exception: libFuzzer reports it as a crash, with the input.
  coropool::testing::run_scenario(data, size);
  return 0;
}
