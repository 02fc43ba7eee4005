#pragma once

// The light half of coropool_bench's harness: the JSON row writer, the
// statistics every row reports, and the workloads' entry points. It includes
// no Asio, so that the command line (main.cpp) and the workloads that measure
// no pool (core_handoff) compile in a second; callers.hpp is the heavy half.

#include <string>
#include <string_view>
#include <vector>

namespace coropool_bench {

/// The io threads of every row: 2 (the target machine's cores) unless
/// COROPOOL_BENCH_THREADS says otherwise.
int io_threads();

/// One result line, `{"bench":…,"impl":…,"threads":…,"params":{…},<metrics>}`,
/// with its parameters and metrics in the order they are added. Every row has
/// these keys in this order, so that a line can be found by grep (.ci/run
/// looks for `"bench":"idle_cpu","impl":"coropool"`). Names are written as
/// given, unescaped: they are identifiers.
class Row {
 public:
  Row(std::string_view bench, std::string_view impl, int threads);

  Row& param(std::string_view key, long long value);
  /// A metric printed with `decimals` digits after the point (printf's `%.Nf`).
  Row& metric(std::string_view key, double value, int decimals);

  /// Prints the line to stdout and flushes it, so that each row is out before
  /// the next one starts (a later row that aborts loses nothing).
  void write() const;

 private:
  std::string head_;     // "bench", "impl" and "threads"
  std::string params_;   // the members of "params", comma-separated
  std::string metrics_;  // the metrics, each with its leading comma
};

struct Percentiles {
  double p50, p99, max;
};

/// The median, the 99th percentile and the maximum of `values` (not empty).
Percentiles percentiles(std::vector<double> values);

/// CPU seconds this process has used so far, user and system.
double cpu_seconds();

// The workloads, one file each in workloads/; main.cpp runs them by name.
void batching();
void coalescing();
void cold_start_wake();
void core_handoff();
void deadline_overrun();
void idle_cpu();
void idle_wait_cpu();
void memory();
void priorities();
void roundtrip();
void starvation();

}  // namespace coropool_bench
