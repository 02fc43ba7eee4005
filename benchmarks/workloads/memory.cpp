// memory: heap bytes added per queued request and per idle worker.

#include <malloc.h>

#include "callers.hpp"

namespace coropool_bench {
namespace {

/// Heap bytes in use. Unlike the resident set, it does not depend on whether
/// earlier rows left freed pages behind for the allocator to reuse: it is what
/// the resident set grows by on a fresh heap.
double heap_bytes() {
  const struct mallinfo2 info = mallinfo2();
  return static_cast<double>(info.uordblks + info.hblkhd);
}

}  // namespace

void memory() {
  constexpr int queued = 200'000;
  constexpr int idle_workers = 2'000;
  double per_request = 0;
  double per_worker = 0;
  // Idle workers first: memory the queued requests free later would hide them.
  {
    asio::io_context ioc(1);
    coropool::PoolConfig config = quiet_config();
    config.cold_start_workers = idle_workers;
    config.max_workers_per_key = idle_workers;
    config.compute_threads = 1;
    asio::steady_timer settle(ioc);
    const double before = heap_bytes();
    BenchPool pool(ioc, config, timed_loader(1ms, nullptr), no_handler());
    pool.async_wait_for_workers("model", 10s, [&](boost::system::error_code) {
      settle.expires_after(50ms);  // the rest of the wave loads and parks meanwhile
      settle.async_wait([&](boost::system::error_code) {
        per_worker = (heap_bytes() - before) / idle_workers;
        pool.async_shutdown(0s, asio::detached);
      });
    });
    ioc.run();
  }
  {
    // One worker stuck on its first request; the rest queue behind it.
    asio::io_context ioc(1);
    coropool::PoolConfig config = quiet_config();
    config.cold_start_workers = 1;
    config.max_workers_per_key = 1;
    config.queue_capacity = queued;
    config.compute_threads = 1;
    asio::steady_timer gate(ioc, asio::steady_timer::time_point::max());
    BenchPool pool(ioc, config, timed_loader(1ms, nullptr), [&](Model&, int x) -> asio::awaitable<int> {
      co_await gate.async_wait(asio::as_tuple(asio::use_awaitable));
      co_return x;
    });
    pool.async_wait_for_workers("model", 10s, [&](boost::system::error_code) {
      pool.async_submit("model", -1, [](std::exception_ptr, int) {});
      ioc.poll();
      const double before = heap_bytes();
      for (int i = 0; i < queued; ++i) pool.async_submit("model", i, [](std::exception_ptr, int) {});
      per_request = (heap_bytes() - before) / queued;
      gate.cancel();
      pool.async_shutdown(0s, asio::detached);
    });
    ioc.run();
  }
  Row("memory", "coropool", 1)
      .param("queued", queued)
      .param("idle_workers", idle_workers)
      .param("request_bytes", sizeof(int))
      .metric("bytes_per_queued_request", per_request, 0)
      .metric("bytes_per_idle_worker", per_worker, 0)
      .write();
}

}  // namespace coropool_bench
