// idle_wait_cpu: CPU seconds the process uses while 10,000 callers wait 1 s
// for a key that is still loading. Rows for "coropool" and "poll50ms"
// (callers.hpp).

#include "callers.hpp"

namespace coropool_bench {

void idle_wait_cpu() {
  constexpr int waiters = 10'000;
  for (bool polling : {false, true}) {
    asio::io_context ioc(io_threads());
    BenchPool pool(ioc, quiet_config(), timed_loader(1500ms, nullptr), no_handler());
    std::atomic<int> remaining{waiters};
    start_spawn(polling, pool);
    for (int i = 0; i < waiters; ++i) {
      asio::co_spawn(ioc, wait_then_shut_down(polling, pool, remaining), asio::detached);
    }
    double cpu = 0;
    asio::co_spawn(
        ioc,
        [&]() -> asio::awaitable<void> {
          // Let every caller park first, then measure one idle second.
          asio::steady_timer timer(co_await asio::this_coro::executor, 250ms);
          co_await timer.async_wait(asio::use_awaitable);
          const double before = cpu_seconds();
          timer.expires_after(1s);
          co_await timer.async_wait(asio::use_awaitable);
          cpu = cpu_seconds() - before;
        },
        asio::detached);
    run_threads(ioc);
    Row("idle_wait_cpu", impl_name(polling), io_threads())
        .param("waiters", waiters)
        .param("seconds", 1)
        .metric("cpu_s", cpu, 4)
        .write();
  }
}

}  // namespace coropool_bench
