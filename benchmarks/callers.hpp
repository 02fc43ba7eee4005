#pragma once

// The heavy half of coropool_bench's harness: what the workloads on Asio and
// coropool share. The pool they measure and its quiet config, the loader and
// handler, the io threads, and the two ways of waiting for workers compared by
// cold_start_wake, starvation and idle_wait_cpu: coropool's wait_for_workers,
// and "poll50ms", the old system's fixed loop (check has_workers, then sleep
// 50 ms on a timer). Every function is inline and used by more than one
// workload; what one workload alone uses stays in its file.

#include <coropool.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "harness.hpp"

namespace coropool_bench {

namespace asio = boost::asio;
using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

struct Model {};
using BenchPool = coropool::Pool<int, int>;

inline coropool::PoolConfig quiet_config() {
  coropool::PoolConfig config;
  config.logger = std::make_shared<spdlog::logger>("bench", std::make_shared<spdlog::sinks::null_sink_mt>());
  return config;
}

/// A loader that takes `duration` and stamps the moment the first load ended.
inline auto timed_loader(clock_type::duration duration, std::atomic<clock_type::rep>* loaded_at) {
  return [duration, loaded_at](const std::string&) -> asio::awaitable<Model> {
    asio::steady_timer timer(co_await asio::this_coro::executor, duration);
    co_await timer.async_wait(asio::use_awaitable);
    clock_type::rep none = 0;
    if (loaded_at) loaded_at->compare_exchange_strong(none, clock_type::now().time_since_epoch().count());
    co_return Model{};
  };
}

inline auto no_handler() {
  return [](Model&, int x) -> asio::awaitable<int> { co_return x; };
}

/// Runs `ioc` on io_threads() threads, this one among them, until it runs out of work.
inline void run_threads(asio::io_context& ioc) {
  std::vector<std::thread> threads;
  for (int i = 1; i < io_threads(); ++i) threads.emplace_back([&] { ioc.run(); });
  ioc.run();
  for (auto& t : threads) t.join();
}

inline const char* impl_name(bool polling) { return polling ? "poll50ms" : "coropool"; }

/// The old system's wait: check, then sleep 50 ms on a timer. Its spawn is
/// started once per row by start_spawn().
inline asio::awaitable<void> poll_wait(BenchPool& pool, std::string key) {
  asio::steady_timer timer(co_await asio::this_coro::executor);
  while (!pool.has_workers(key)) {
    timer.expires_after(50ms);
    co_await timer.async_wait(asio::use_awaitable);
  }
}

inline asio::awaitable<void> wait(bool polling, BenchPool& pool, std::string key) {
  if (polling) {
    co_await poll_wait(pool, key);
  } else {
    co_await pool.wait_for_workers(key, 60s);
  }
}

/// Waits as `wait` does; the last of `remaining` callers shuts the pool down.
inline asio::awaitable<void> wait_then_shut_down(bool polling, BenchPool& pool, std::atomic<int>& remaining) {
  co_await wait(polling, pool, "model");
  if (--remaining == 0) co_await pool.async_shutdown(0s, asio::use_awaitable);
}

inline void start_spawn(bool polling, BenchPool& pool) {
  if (polling) pool.async_wait_for_workers("model", 60s, asio::detached);
}

/// What closed_loop() measured: the seconds from the first request to the
/// last answer, and every sample its clients took.
struct ClosedLoop {
  double seconds = 0;
  std::vector<double> samples;
};

/// Closed-loop clients of `pool`'s key "model": once its workers are ready,
/// `clients` coroutines take requests until `requests` have been made in
/// all, each awaiting `ask(client, samples)` per request (`samples`: that
/// client's own); the pool shuts down after the last answer.
template <class PoolType, class Ask>
ClosedLoop closed_loop(asio::io_context& ioc, PoolType& pool, int clients, int requests, Ask ask) {
  std::atomic<int> left{requests};
  std::atomic<int> clients_left{clients};
  std::vector<std::vector<double>> samples(static_cast<std::size_t>(clients));
  clock_type::time_point start, end;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        co_await pool.wait_for_workers("model", 10s);
        start = clock_type::now();
        for (int c = 0; c < clients; ++c) {
          asio::co_spawn(
              ioc,
              [&, c]() -> asio::awaitable<void> {
                auto& mine = samples[static_cast<std::size_t>(c)];
                while (left.fetch_sub(1) > 0) co_await ask(c, mine);
                if (--clients_left == 0) {
                  end = clock_type::now();
                  co_await pool.async_shutdown(1s, asio::use_awaitable);
                }
              },
              asio::detached);
        }
      },
      asio::detached);
  run_threads(ioc);
  ClosedLoop result;
  result.seconds = std::chrono::duration<double>(end - start).count();
  for (auto& s : samples) result.samples.insert(result.samples.end(), s.begin(), s.end());
  return result;
}

}  // namespace coropool_bench
