// idle_cpu: CPU used by a pool whose keys are all loaded and idle, at the
// default health interval: the price of the pings and the maintenance tick.

#include "callers.hpp"

namespace coropool_bench {

void idle_cpu() {
  constexpr int keys = 100;
  constexpr int workers_per_key = 4;
  constexpr auto measured = 10s;
  asio::io_context ioc(io_threads());
  coropool::PoolConfig config = quiet_config();
  config.cold_start_workers = workers_per_key;
  config.max_workers_per_key = workers_per_key;
  config.compute_threads = 1;
  BenchPool pool(ioc, config, timed_loader(1ms, nullptr), no_handler());
  double cpu = 0;
  std::size_t live = 0;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        for (int k = 0; k < keys; ++k) co_await pool.wait_for_workers("model" + std::to_string(k), 10s);
        asio::steady_timer timer(co_await asio::this_coro::executor, 250ms);  // the last loads finish
        co_await timer.async_wait(asio::use_awaitable);
        const double before = cpu_seconds();
        timer.expires_after(measured);
        co_await timer.async_wait(asio::use_awaitable);
        cpu = cpu_seconds() - before;
        for (int k = 0; k < keys; ++k) live += pool.live_worker_count("model" + std::to_string(k));
        co_await pool.async_shutdown(1s, asio::use_awaitable);
      },
      asio::detached);
  run_threads(ioc);
  if (live != static_cast<std::size_t>(keys * workers_per_key)) std::abort();  // idle, not evicted
  Row("idle_cpu", "coropool", io_threads())
      .param("keys", keys)
      .param("workers_per_key", workers_per_key)
      .param("seconds", static_cast<int>(measured.count()))
      .metric("cpu_s", cpu, 4)
      .write();
}

}  // namespace coropool_bench
