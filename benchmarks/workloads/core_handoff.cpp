// core_handoff: what one hand-off between two threads costs on this machine,
// with no Asio and no pool: two threads pass a counter back and forth through
// one cache line, spinning. Every request path that lets two io threads touch
// the same data pays this per line and per direction.

#include <atomic>
#include <chrono>
#include <thread>

#include "harness.hpp"

namespace coropool_bench {

void core_handoff() {
  using clock_type = std::chrono::steady_clock;
  constexpr int round_trips = 1'000'000;
  alignas(64) std::atomic<int> turn{0};
  std::thread other([&] {
    for (int i = 0; i < round_trips; ++i) {
      while (turn.load(std::memory_order_acquire) != 2 * i + 1) {
      }
      turn.store(2 * i + 2, std::memory_order_release);
    }
  });
  const auto start = clock_type::now();
  for (int i = 0; i < round_trips; ++i) {
    turn.store(2 * i + 1, std::memory_order_release);
    while (turn.load(std::memory_order_acquire) != 2 * i + 2) {
    }
  }
  const auto elapsed = clock_type::now() - start;
  other.join();
  Row("core_handoff", "atomic", 2)
      .param("round_trips", round_trips)
      .metric("round_trip_ns", std::chrono::duration<double, std::nano>(elapsed).count() / round_trips, 0)
      .write();
}

}  // namespace coropool_bench
