// batching (issue 13): C closed-loop clients (C = 16, 256) on 4 workers of
// one key whose batch handler blocks a compute thread for 200 us plus 5 us
// per item (std::this_thread::sleep_for on the compute executor: an
// accelerator's call, which holds its thread but not a core), for
// max_batch_size 1, 8, 32 and max_batch_delay 0 and 1 ms. Every setting of
// one C runs three times, the settings taking turns, and each row is the
// median run (by throughput): the rows of one C saw the same machine.

#include <boost/asio/thread_pool.hpp>

#include <algorithm>
#include <span>
#include <thread>
#include <vector>

#include "callers.hpp"

namespace coropool_bench {
namespace {

constexpr int batching_workers = 4;
constexpr auto cost_per_batch = 200us;
constexpr auto cost_per_item = 5us;

struct BatchingResult {
  double req_per_s = 0;
  Percentiles latency;
  double mean_batch = 0;
  double batch_wait_p99_us = 0;
};

BatchingResult batching_run(int clients, std::size_t max_batch_size, clock_type::duration max_batch_delay,
                            int requests) {
  asio::io_context ioc;
  coropool::PoolConfig config = quiet_config();
  config.cold_start_workers = batching_workers;
  config.max_workers_per_key = batching_workers;
  config.queue_capacity = 1024;
  config.batching.max_batch_size = max_batch_size;
  config.batching.max_batch_delay = max_batch_delay;
  asio::thread_pool compute(batching_workers);  // where the model's blocking calls run
  config.compute_executor = compute.get_executor();
  BenchPool pool(
      ioc, config, timed_loader(1ms, nullptr),
      coropool::batched([&compute](Model&, std::span<int> xs) -> asio::awaitable<std::vector<coropool::outcome<int>>> {
        const auto n = static_cast<int>(xs.size());
        co_await coropool::offload(compute.get_executor(),
                                   [n] { std::this_thread::sleep_for(cost_per_batch + n * cost_per_item); });
        co_return std::vector<coropool::outcome<int>>(xs.begin(), xs.end());
      }));
  auto loop = closed_loop(ioc, pool, clients, requests, [&](int c, std::vector<double>& mine) -> asio::awaitable<void> {
    const auto t0 = clock_type::now();
    if (co_await pool.submit("model", c) != c) std::abort();
    mine.push_back(std::chrono::duration<double, std::micro>(clock_type::now() - t0).count());
  });
  BatchingResult r;
  r.req_per_s = requests / loop.seconds;
  r.latency = percentiles(std::move(loop.samples));
  const auto k = pool.stats().keys.at("model");
  double items = 0;
  for (std::size_t n = 0; n < k.batch_sizes.size(); ++n) items += static_cast<double>(n * k.batch_sizes[n]);
  r.mean_batch = k.batches ? items / static_cast<double>(k.batches) : 0;
  r.batch_wait_p99_us = k.batch_wait.quantile_us(0.99);
  return r;
}

}  // namespace

void batching() {
  constexpr int runs = 3;
  struct Setting {
    std::size_t max_batch_size;
    clock_type::duration max_batch_delay;
  };
  const std::vector<Setting> settings{{1, 0ms}, {8, 0ms}, {32, 0ms}, {1, 1ms}, {8, 1ms}, {32, 1ms}};
  for (int clients : {16, 256}) {
    std::vector<std::vector<BatchingResult>> results(settings.size());
    for (int run = 0; run < runs; ++run) {
      for (std::size_t s = 0; s < settings.size(); ++s) {
        // Enough requests for a second or so at each setting's rate.
        const int requests = settings[s].max_batch_size == 1 ? 10'000 : 60'000;
        results[s].push_back(batching_run(clients, settings[s].max_batch_size, settings[s].max_batch_delay, requests));
      }
    }
    double unbatched = 0;
    for (std::size_t s = 0; s < settings.size(); ++s) {
      auto& r = results[s];
      std::sort(r.begin(), r.end(), [](const auto& a, const auto& b) { return a.req_per_s < b.req_per_s; });
      const BatchingResult& median = r[r.size() / 2];
      if (settings[s].max_batch_size == 1 && settings[s].max_batch_delay == 0ms) unbatched = median.req_per_s;
      const auto service_us =
          std::chrono::duration<double, std::micro>(cost_per_batch + settings[s].max_batch_size * cost_per_item);
      Row("batching", "coropool", io_threads())
          .param("clients", clients)
          .param("workers", batching_workers)
          .param("max_batch_size", static_cast<long long>(settings[s].max_batch_size))
          .param("max_batch_delay_us",
                 std::chrono::duration_cast<std::chrono::microseconds>(settings[s].max_batch_delay).count())
          .param("batch_service_us", static_cast<long long>(service_us.count()))
          .metric("req_per_s", median.req_per_s, 0)
          .metric("req_per_s_min", r.front().req_per_s, 0)
          .metric("req_per_s_max", r.back().req_per_s, 0)
          .metric("vs_unbatched", unbatched > 0 ? median.req_per_s / unbatched : 0, 2)
          .metric("p50_us", median.latency.p50, 0)
          .metric("p99_us", median.latency.p99, 0)
          .metric("mean_batch", median.mean_batch, 1)
          .metric("batch_wait_p99_us", median.batch_wait_p99_us, 0)
          .write();
    }
  }
}

}  // namespace coropool_bench
