// starvation: a 1 ms heartbeat timer's lag while 1,000 callers wait for a key
// whose load outlasts the heartbeats. Rows for "coropool" and "poll50ms"
// (callers.hpp).

#include "callers.hpp"

namespace coropool_bench {

void starvation() {
  constexpr int waiters = 1000;
  constexpr auto period = 1ms;
  constexpr int beats = 1000;
  for (bool polling : {false, true}) {
    asio::io_context ioc(io_threads());
    BenchPool pool(ioc, quiet_config(), timed_loader(beats * period + 200ms, nullptr), no_handler());
    std::atomic<int> remaining{waiters};
    start_spawn(polling, pool);
    for (int i = 0; i < waiters; ++i) {
      asio::co_spawn(ioc, wait_then_shut_down(polling, pool, remaining), asio::detached);
    }
    std::vector<double> lag_us;
    asio::co_spawn(
        ioc,
        [&]() -> asio::awaitable<void> {
          asio::steady_timer heartbeat(co_await asio::this_coro::executor);
          auto next = clock_type::now();
          for (int i = 0; i < beats; ++i) {
            next += period;
            heartbeat.expires_at(next);
            co_await heartbeat.async_wait(asio::use_awaitable);
            lag_us.push_back(std::chrono::duration<double, std::micro>(clock_type::now() - next).count());
          }
        },
        asio::detached);
    run_threads(ioc);
    const auto p = percentiles(lag_us);
    Row("starvation", impl_name(polling), io_threads())
        .param("waiters", waiters)
        .param("heartbeat_ms", 1)
        .param("beats", beats)
        .metric("p50_lag_us", p.p50, 1)
        .metric("p99_lag_us", p.p99, 1)
        .metric("max_lag_us", p.max, 1)
        .write();
  }
}

}  // namespace coropool_bench
