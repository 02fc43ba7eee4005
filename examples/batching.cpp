// Batching: a model whose cost is fixed per call (2 ms: a kernel launch, a
// weight read) plus a little per item (50 us), served to 64 clients of 10
// requests each, first one request per call, then in batches of up to 32.
// The model's blocking code runs on the pool's compute executor. Prints each
// run's throughput and the batch sizes the pool formed; fails if any answer
// is wrong or missing.

#include <coropool.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/thread_pool.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <span>
#include <stdexcept>
#include <thread>
#include <vector>

namespace asio = boost::asio;
using namespace std::chrono_literals;

struct Model {
  // Blocking, CPU-bound: must not run on an io thread.
  std::vector<int> infer(std::span<const int> inputs) const {
    std::this_thread::sleep_for(2ms + 50us * inputs.size());
    std::vector<int> outputs;
    for (int x : inputs) outputs.push_back(x * 2);
    return outputs;
  }
};

struct Run {
  double seconds = 0;
  int correct = 0;
  coropool::KeyStats stats;
};

Run serve(std::size_t max_batch_size, int clients, int requests_each) {
  asio::io_context ioc(2);
  asio::thread_pool compute(2);
  coropool::PoolConfig config;
  config.cold_start_workers = 2;
  config.max_workers_per_key = 2;
  config.compute_executor = compute.get_executor();
  config.batching.max_batch_size = max_batch_size;
  config.batching.max_batch_delay = 1ms;

  auto load = [](const std::string&) -> asio::awaitable<Model> { co_return Model{}; };
  auto batch = [&](Model& model, std::span<int> inputs) -> asio::awaitable<std::vector<coropool::outcome<int>>> {
    auto outputs = co_await coropool::offload(compute.get_executor(), [&] { return model.infer(inputs); });
    co_return std::vector<coropool::outcome<int>>(outputs.begin(), outputs.end());
  };
  coropool::Pool<int, int> pool(ioc, config, load, coropool::batched(batch));

  Run run;
  std::atomic<int> correct{0}, left{clients};
  const auto start = std::chrono::steady_clock::now();
  for (int c = 0; c < clients; ++c) {
    asio::co_spawn(
        ioc,
        [&, c]() -> asio::awaitable<void> {
          for (int i = 0; i < requests_each; ++i) {
            const int x = c * 1000 + i;
            if (co_await pool.submit("doubler", x) == 2 * x) ++correct;
          }
          if (--left == 0) {
            run.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
            run.stats = pool.stats().keys.at("doubler");
            co_await pool.async_shutdown(1s, asio::use_awaitable);
          }
        },
        asio::detached);
  }
  std::thread second([&] { ioc.run(); });
  ioc.run();
  second.join();
  run.correct = correct.load();
  return run;
}

int main() {
  constexpr int clients = 64;
  constexpr int requests_each = 10;
  bool ok = true;
  for (std::size_t max_batch_size : {std::size_t{1}, std::size_t{32}}) {
    const Run run = serve(max_batch_size, clients, requests_each);
    std::printf("max_batch_size %2zu: %4d of %d answers right in %.2f s (%.0f req/s), %llu batches; sizes:",
                max_batch_size, run.correct, clients * requests_each, run.seconds, run.correct / run.seconds,
                static_cast<unsigned long long>(run.stats.batches));
    for (std::size_t n = 1; n < run.stats.batch_sizes.size(); ++n) {
      if (run.stats.batch_sizes[n])
        std::printf(" %zux%llu", n, static_cast<unsigned long long>(run.stats.batch_sizes[n]));
    }
    std::printf("\n");
    ok = ok && run.correct == clients * requests_each;
  }
  return ok ? 0 : 1;
}
