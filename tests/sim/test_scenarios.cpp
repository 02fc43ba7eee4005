#include "scenario.hpp"

#include <catch2/catch.hpp>

#include "manual_clock.hpp"

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

using namespace coropool::testing;

namespace {

std::vector<std::string> files_in(const std::filesystem::path& dir) {
  std::vector<std::string> files;
  if (std::filesystem::exists(dir)) {
    for (const auto& entry : std::filesystem::directory_iterator(dir)) {
      if (entry.is_regular_file()) files.push_back(entry.path().string());
    }
  }
  std::sort(files.begin(), files.end());
  return files;
}

std::vector<std::uint8_t> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void run_checked(const std::vector<std::uint8_t>& input) {
  try {
    run_scenario(input.data(), input.size());
  } catch (const std::exception& e) {
    FAIL(e.what());
  }
}

}  // namespace

TEST_CASE("the fuzzer's corpus and every input it ever crashed on run clean", "[sim][fuzz]") {
  const std::filesystem::path root = COROPOOL_SIM_DIR;
  auto files = files_in(root / "corpus");
  const auto regressions = files_in(root / "regressions");
  files.insert(files.end(), regressions.begin(), regressions.end());
  REQUIRE(files.size() >= 10);
  for (const auto& file : files) {
    INFO(file);
    run_checked(read_file(file));
  }
}

TEST_CASE("scenarios from a fixed seed run clean", "[sim][fuzz]") {
  // Deterministic: the same inputs every run, so a failure names its seed.
#ifdef __SANITIZE_THREAD__
  constexpr int scenarios = 50;
#else
  constexpr int scenarios = 400;
#endif
  std::mt19937 rng(20261130);
  std::size_t operations = 0, callers = 0, rejected = 0;
  std::uint64_t coalesced = 0, expired_before_dispatch = 0, expired_in_handler = 0, batched = 0;
  for (int i = 0; i < scenarios; ++i) {
    std::vector<std::uint8_t> input(16 + rng() % 200);
    for (auto& b : input) b = static_cast<std::uint8_t>(rng());
    INFO("scenario " << i);
    try {
      const auto report = run_scenario(input.data(), input.size());
      operations += report.operations;
      callers += report.callers;
      rejected += report.config_rejected;
      coalesced += report.coalesced;
      expired_before_dispatch += report.expired_before_dispatch;
      expired_in_handler += report.expired_in_handler;
      batched += report.batches_of_more_than_one;
    } catch (const std::exception& e) {
      // Kept for a regression test: copy it to tests/sim/regressions/.
      const std::string kept = "sim-failure-" + std::to_string(i) + ".bin";
      std::ofstream(kept, std::ios::binary)
          .write(reinterpret_cast<const char*>(input.data()), static_cast<std::streamsize>(input.size()));
      FAIL(e.what() << "\n(input written to " << kept << ")");
    }
  }
  CHECK(operations > static_cast<std::size_t>(scenarios) * 10);
  CHECK(callers > static_cast<std::size_t>(scenarios) * 5);
  CHECK(rejected > 0);
  // The scheduling dimensions are exercised, not only decoded.
  CHECK(coalesced > 0);
  CHECK(batched > 0);
  CHECK(expired_before_dispatch > 0);
  CHECK(expired_in_handler > 0);
  WARN("batches of two or more " << batched << ", coalesced " << coalesced << ", expired before dispatch "
                                 << expired_before_dispatch << ", in the handler " << expired_in_handler);
}
