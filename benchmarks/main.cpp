// coropool_bench: workloads measured as JSON lines, one object per row.
//
//   coropool_bench [workload...]     no argument runs them all, in name order
//   COROPOOL_BENCH_THREADS=N         io threads per row (default 2)
//   COROPOOL_BENCH_CLIENTS=1,16      roundtrip: only those client counts
//   COROPOOL_BENCH_ROUNDTRIP=quick   roundtrip: one coropool run and asio-floor per client count
//
// Each workload lives in workloads/<name>.cpp, which says what it measures:
// cold_start_wake, core_handoff, idle_cpu, idle_wait_cpu, memory, roundtrip,
// starvation; scheduling.cpp's priorities, coalescing, deadline_overrun; batching. harness.hpp writes the rows;
// callers.hpp holds what the workloads on Asio and coropool share.

#include "harness.hpp"

#include <cstdio>
#include <map>
#include <string>
#include <vector>

int main(int argc, char* argv[]) {
  using namespace coropool_bench;
  const std::map<std::string, void (*)()> workloads{{"cold_start_wake", cold_start_wake},
                                                    {"starvation", starvation},
                                                    {"idle_wait_cpu", idle_wait_cpu},
                                                    {"idle_cpu", idle_cpu},
                                                    {"roundtrip", roundtrip},
                                                    {"core_handoff", core_handoff},
                                                    {"memory", memory},
                                                    {"priorities", priorities},
                                                    {"coalescing", coalescing},
                                                    {"deadline_overrun", deadline_overrun},
                                                    {"batching", batching}};
  std::vector<std::string> chosen(argv + 1, argv + argc);
  if (chosen.empty()) {
    for (const auto& [name, run] : workloads) chosen.push_back(name);
  }
  for (const auto& name : chosen) {
    auto it = workloads.find(name);
    if (it == workloads.end()) {
      std::fprintf(stderr, "coropool_bench: unknown workload '%s'\n", name.c_str());
      return 2;
    }
    it->second();
  }
  return 0;
}
