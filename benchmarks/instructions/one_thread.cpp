// The request path on one thread, for benchmarks/instructions.sh: one
// io_context run by one thread (a shard of roundtrip's context-per-thread
// shape), one key with 2 workers whose handle returns x + 1, and C client
// coroutines in closed loops until N requests are answered. Exits 1 unless
// every request got its answer.
//
//   one_thread [C = 128] [N = 200000]

#include <spdlog/sinks/null_sink.h>
#include <coropool.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

namespace asio = boost::asio;
using namespace std::chrono_literals;

namespace {
struct Model {};
}  // namespace

int main(int argc, char** argv) {
  const int clients = argc > 1 ? std::atoi(argv[1]) : 128;
  const int requests = argc > 2 ? std::atoi(argv[2]) : 200000;
  asio::io_context ioc(1);
  coropool::PoolConfig config;
  config.logger = std::make_shared<spdlog::logger>("bench", std::make_shared<spdlog::sinks::null_sink_mt>());
  config.cold_start_workers = 2;
  config.max_workers_per_key = 2;
  config.queue_capacity = 1024;
  config.compute_threads = 1;
  coropool::Pool<int, int> pool(
      ioc, config, [](const std::string&) -> asio::awaitable<Model> { co_return Model{}; },
      [](Model&, int x) -> asio::awaitable<int> { co_return x + 1; });
  int next = 0;  // one thread: plain counters
  int answered = 0;
  int clients_left = clients;
  auto client = [&]() -> asio::awaitable<void> {
    for (int i = next++; i < requests; i = next++) {
      const int answer = co_await pool.submit("model", i);
      if (answer == i + 1) ++answered;
    }
    if (--clients_left == 0) co_await pool.async_shutdown(1s, asio::use_awaitable);
  };
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        co_await pool.wait_for_workers("model", 10s);
        for (int c = 0; c < clients; ++c) asio::co_spawn(ioc, client(), asio::detached);
      },
      asio::detached);
  ioc.run();
  std::printf("%d of %d answered\n", answered, requests);
  return answered == requests ? 0 : 1;
}
