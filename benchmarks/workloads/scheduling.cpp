// The scheduling workloads of issue 12, each on 4 workers of one key:
//
// priorities: 8 closed-loop clients per priority level (the default five,
//   weights 8:4:2:1:1) keep every level waiting; the handler takes 200 us on a
//   timer. Per level: its share of the requests served against its weight's
//   share, and the p99 of its queue time (submit until a worker takes it).
// coalescing: 256 closed-loop clients ask one of 25 questions (C/10) at
//   random; the handler takes 1 ms on a timer. Handler runs per second,
//   answers per second and the callers' latency, without ("coropool") and
//   with ("coropool-coalescing") Options::coalesce_key.
// deadline_overrun: 64 closed-loop clients submit with a 5 ms timeout to
//   handlers that take 50 ms (and stop at the cancellation): how long after
//   its deadline each caller completes. "asio-timer-floor" is a steady_timer
//   of 5 ms on the same io threads, with nothing of ours: how late a timer
//   alone is.

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/steady_timer.hpp>

#include <array>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "callers.hpp"

namespace coropool_bench {
namespace {

constexpr int scheduling_workers = 4;

coropool::PoolConfig scheduling_config() {
  coropool::PoolConfig config = quiet_config();
  config.cold_start_workers = scheduling_workers;
  config.max_workers_per_key = scheduling_workers;
  config.queue_capacity = 1024;
  config.compute_threads = 1;
  return config;
}

asio::awaitable<void> sleep_for(clock_type::duration d) {
  asio::steady_timer t(co_await asio::this_coro::executor, d);
  co_await t.async_wait(asio::as_tuple(asio::use_awaitable));  // a cancellation ends it early
}

/// A request that carries when it was submitted and its level.
struct Stamped {
  int level = 0;
  clock_type::time_point submitted;
};

using StampedPool = coropool::Pool<Stamped, int>;

void priorities_row() {
  constexpr int levels = 5;
  constexpr int clients_per_level = 8;
  constexpr int requests = 20000;
  const std::array<double, levels> weights{8, 4, 2, 1, 1};
  asio::io_context ioc;
  std::mutex mutex;
  std::array<std::vector<double>, levels> queue_us;
  std::array<int, levels> served{};
  StampedPool pool(ioc, scheduling_config(), timed_loader(1ms, nullptr),
                   [&](Model&, Stamped r) -> asio::awaitable<int> {
                     {
                       std::lock_guard lock(mutex);
                       queue_us[static_cast<std::size_t>(r.level)].push_back(
                           std::chrono::duration<double, std::micro>(clock_type::now() - r.submitted).count());
                       ++served[static_cast<std::size_t>(r.level)];
                     }
                     co_await sleep_for(200us);
                     co_return r.level;
                   });
  const auto loop = closed_loop(
      ioc, pool, levels * clients_per_level, requests, [&](int c, std::vector<double>&) -> asio::awaitable<void> {
        const int level = c / clients_per_level;
        coropool::SubmitOptions options;
        options.priority = static_cast<unsigned>(level);
        if (co_await pool.submit("model", Stamped{level, clock_type::now()}, options) != level) std::abort();
      });
  // Shares are read over the saturated part: every level waits until the
  // first client runs out of requests; the tail drains the rest.
  const double total_weight = 16;
  int total = 0;
  for (int n : served) total += n;
  Row row("priorities", "coropool", io_threads());
  row.param("workers", scheduling_workers).param("clients_per_level", clients_per_level).param("requests", requests);
  row.metric("req_per_s", requests / loop.seconds, 0);
  for (int level = 0; level < levels; ++level) {
    const auto i = static_cast<std::size_t>(level);
    const std::string l = "level" + std::to_string(level);
    row.metric(l + "_share", static_cast<double>(served[i]) / total, 4);
    row.metric(l + "_weight_share", weights[i] / total_weight, 4);
    row.metric(l + "_queue_p99_us", percentiles(queue_us[i]).p99, 0);
  }
  row.write();
}

void coalescing_row(bool coalesce) {
  constexpr int clients = 256;
  constexpr int questions = clients / 10;
  constexpr int requests = 30000;
  asio::io_context ioc;
  std::atomic<int> runs{0};
  StampedPool::Options options = scheduling_config();
  if (coalesce) {
    options.coalesce_key = [](const Stamped& r) { return std::optional<std::string>(std::to_string(r.level)); };
  }
  StampedPool pool(ioc, std::move(options), timed_loader(1ms, nullptr), [&](Model&, Stamped r) -> asio::awaitable<int> {
    runs.fetch_add(1, std::memory_order_relaxed);
    co_await sleep_for(1ms);
    co_return r.level;
  });
  std::vector<std::minstd_rand> rngs;
  for (int c = 0; c < clients; ++c) rngs.emplace_back(static_cast<unsigned>(c) + 1);
  auto loop = closed_loop(ioc, pool, clients, requests, [&](int c, std::vector<double>& mine) -> asio::awaitable<void> {
    const int question = static_cast<int>(rngs[static_cast<std::size_t>(c)]() % questions);
    const auto t0 = clock_type::now();
    if (co_await pool.submit("model", Stamped{question, t0}) != question) std::abort();
    mine.push_back(std::chrono::duration<double, std::micro>(clock_type::now() - t0).count());
  });
  const double seconds = loop.seconds;
  const auto p = percentiles(std::move(loop.samples));
  Row("coalescing", coalesce ? "coropool-coalescing" : "coropool", io_threads())
      .param("workers", scheduling_workers)
      .param("clients", clients)
      .param("questions", questions)
      .param("requests", requests)
      .metric("answers_per_s", requests / seconds, 0)
      .metric("handler_runs_per_s", runs.load() / seconds, 0)
      .metric("handler_runs", runs.load(), 0)
      .metric("latency_p50_us", p.p50, 0)
      .metric("latency_p99_us", p.p99, 0)
      .write();
}

constexpr auto overrun_deadline = 5ms;

void deadline_overrun_row() {
  constexpr int clients = 64;
  constexpr int requests = 3000;
  asio::io_context ioc;
  BenchPool pool(ioc, scheduling_config(), timed_loader(1ms, nullptr), [](Model&, int x) -> asio::awaitable<int> {
    co_await sleep_for(50ms);  // past every deadline; stops at the cancellation
    co_return x;
  });
  coropool::SubmitOptions options;
  options.timeout = overrun_deadline;
  auto loop = closed_loop(ioc, pool, clients, requests, [&](int, std::vector<double>& mine) -> asio::awaitable<void> {
    const auto t0 = clock_type::now();
    auto [e, v] = co_await pool.async_submit("model", 1, options, asio::as_tuple(asio::use_awaitable));
    if (!e) std::abort();  // no handler answers within its deadline here
    mine.push_back(std::chrono::duration<double, std::micro>(clock_type::now() - t0 - overrun_deadline).count());
  });
  const auto p = percentiles(std::move(loop.samples));
  Row("deadline_overrun", "coropool", io_threads())
      .param("workers", scheduling_workers)
      .param("clients", clients)
      .param("requests", requests)
      .param("deadline_us", 5000)
      .param("handler_us", 50000)
      .metric("overrun_p50_us", p.p50, 0)
      .metric("overrun_p99_us", p.p99, 0)
      .metric("overrun_max_us", p.max, 0)
      .write();
}

/// The floor: 64 coroutines each waiting on a 5 ms steady_timer, again and
/// again, on the same threads: how late a timer's completion runs.
void timer_floor_row() {
  constexpr int clients = 64;
  constexpr int waits = 3000;
  asio::io_context ioc;
  std::atomic<int> left{waits};
  std::vector<std::vector<double>> overrun(clients);
  for (int c = 0; c < clients; ++c) {
    asio::co_spawn(
        ioc,
        [&, c]() -> asio::awaitable<void> {
          while (left.fetch_sub(1) > 0) {
            const auto t0 = clock_type::now();
            co_await sleep_for(overrun_deadline);
            overrun[static_cast<std::size_t>(c)].push_back(
                std::chrono::duration<double, std::micro>(clock_type::now() - t0 - overrun_deadline).count());
          }
        },
        asio::detached);
  }
  run_threads(ioc);
  std::vector<double> all;
  for (auto& o : overrun) all.insert(all.end(), o.begin(), o.end());
  const auto p = percentiles(std::move(all));
  Row("deadline_overrun", "asio-timer-floor", io_threads())
      .param("clients", clients)
      .param("requests", waits)
      .param("deadline_us", 5000)
      .metric("overrun_p50_us", p.p50, 0)
      .metric("overrun_p99_us", p.p99, 0)
      .metric("overrun_max_us", p.max, 0)
      .write();
}

}  // namespace

void priorities() { priorities_row(); }

void coalescing() {
  coalescing_row(false);
  coalescing_row(true);
}

void deadline_overrun() {
  timer_floor_row();
  deadline_overrun_row();
}

}  // namespace coropool_bench
