#include <coropool/offload.hpp>
#include <coropool/pool.hpp>

#include <catch2/catch.hpp>

#include "support.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <thread>
#include <utility>

using namespace coropool;
using namespace coropool::test;

TEST_CASE("worker state transitions are checked in one place", "[lifecycle]") {
  using enum worker_state;
  const std::set<std::pair<worker_state, worker_state>> legal{
      {spawning, loading}, {spawning, evicting}, {loading, ready},  {loading, failed},   {loading, evicting},
      {ready, processing}, {ready, idle},        {ready, evicting}, {processing, ready}, {processing, evicting},
      {idle, ready},       {idle, evicting},     {evicting, dead},  {failed, dead}};
  for (std::size_t from = 0; from < worker_state_count; ++from) {
    for (std::size_t to = 0; to < worker_state_count; ++to) {
      const auto a = static_cast<worker_state>(from);
      const auto b = static_cast<worker_state>(to);
      INFO(to_string(a) << " -> " << to_string(b));
      CHECK(is_legal_transition(a, b) == legal.contains({a, b}));
    }
  }
  // Loading and Processing never go Idle: eviction by policy only ever picks Idle workers.
  CHECK_FALSE(is_legal_transition(loading, idle));
  CHECK_FALSE(is_legal_transition(processing, idle));

  detail::worker_state_cell cell;
  CHECK(cell.load() == spawning);
  CHECK(cell.transition(loading));
  CHECK(cell.transition(ready));
  CHECK(cell.transition(processing));
  CHECK(cell.begin_eviction());
  CHECK(cell.load() == evicting);
  CHECK_FALSE(cell.transition(ready));  // a stopped worker's late step is refused, quietly
  CHECK_FALSE(cell.begin_eviction());
  CHECK(cell.transition(dead));
  CHECK_FALSE(cell.transition(loading));
  CHECK(cell.load() == dead);

  detail::worker_state_cell failing;
  CHECK(failing.transition(loading));
  CHECK(failing.transition(failed));
  CHECK_FALSE(failing.begin_eviction());  // nothing left to evict
  CHECK(failing.transition(dead));
}

TEST_CASE("an illegal transition from a live state fails the debug assertion", "[lifecycle]") {
#ifdef NDEBUG
  WARN("release build: illegal transitions are refused, not asserted (checked above)");
#else
  // The assertion aborts: run it in a child process and look at how it ended.
  std::fflush(nullptr);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    // Catch's handler for fatal signals would report the abort as a failure
    // of the child and run on: the child must simply die of it.
    std::signal(SIGABRT, SIG_DFL);
    if (!std::freopen("/dev/null", "w", stderr)) std::_Exit(2);  // the assertion's message is expected
    detail::worker_state_cell cell;
    (void)cell.transition(worker_state::loading);
    (void)cell.transition(worker_state::idle);  // loading -> idle: a bug
    std::_Exit(0);
  }
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  CHECK(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGABRT);
#endif
}

TEST_CASE("a worker that hangs is declared dead, its caller gets worker_lost and a replacement serves on",
          "[lifecycle]") {
  asio::io_context ioc(2);
  auto script = std::make_shared<LoadScript>();
  std::atomic<bool> hang_over{false};
  IntPool pool(ioc, TestConfig().fast_lifecycle(), scripted_loader(script),
               [&](Model&, int request) -> asio::awaitable<int> {
                 if (request < 0) {
                   // A hung model holds its thread: its worker answers no ping meanwhile.
                   std::this_thread::sleep_for(800ms);
                   hang_over = true;
                 }
                 co_return request + 1;
               });
  error_code hung_error;
  bool lost_while_hung = false;
  bool served_while_hung = false;
  int after = 0;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        co_await pool.wait_for_workers("bert", 5s);
        auto [e, v] = co_await pool.async_submit("bert", -1, asio::as_tuple(asio::use_awaitable));
        hung_error = error_of(e);
        lost_while_hung = !hang_over;
        after = co_await pool.submit("bert", 1);
        served_while_hung = !hang_over;
        co_await pool.async_shutdown(2s, asio::use_awaitable);
      },
      asio::detached);
  REQUIRE(run_until_idle(ioc, 2));
  CHECK(hung_error == errc::worker_lost);
  CHECK(lost_while_hung);
  CHECK(after == 2);
  CHECK(served_while_hung);
  CHECK(script->started == 2);  // the first worker and its replacement
}

TEST_CASE("a handler past its request's deadline is cancelled then, and its worker serves on", "[lifecycle]") {
  asio::io_context ioc(1);
  auto script = std::make_shared<LoadScript>();
  PoolConfig config = TestConfig().fast_lifecycle();
  config.request_timeout = 100ms;
  config.idle_timeout = 1h;  // the worker waits through the pause below: not evicted meanwhile
  std::atomic<int> cancelled{0};
  IntPool pool(ioc, config, scripted_loader(script), [&](Model&, int request) -> asio::awaitable<int> {
    if (request < 0) {
      // Suspended, not blocking: its request would never end but for its deadline.
      asio::steady_timer never(co_await asio::this_coro::executor, 1h);
      auto [ec] = co_await never.async_wait(asio::as_tuple(asio::use_awaitable));
      if (ec) cancelled.fetch_add(1);
    }
    co_return request + 1;
  });
  error_code stuck_error;
  int after = 0;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        auto [e, v] = co_await pool.async_submit("bert", -1, asio::as_tuple(asio::use_awaitable));
        stuck_error = error_of(e);
        const bool settled_1 = co_await eventually([&] { return cancelled == 1; });  // told at the deadline
        CHECK(settled_1);
        co_await pause(300ms);  // twice health_timeout: a worker stuck past its deadline would be declared dead
        after = co_await pool.submit("bert", 1);
        co_await pool.async_shutdown(1s, asio::use_awaitable);
      },
      asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(stuck_error == errc::request_timeout);
  CHECK(cancelled == 1);
  CHECK(after == 2);
  CHECK(script->started == 1);  // no replacement: the same worker served on
  CHECK(pool.stats().keys.at("bert").deaths == 0);
}

TEST_CASE("a handler that ignores the cancellation at its deadline is declared dead health_timeout later",
          "[lifecycle]") {
  asio::io_context ioc(1);
  auto script = std::make_shared<LoadScript>();
  PoolConfig config = TestConfig().fast_lifecycle();
  config.request_timeout = 50ms;
  config.compute_threads = 1;
  IntPool* pool_ptr = nullptr;
  IntPool pool(ioc, config, scripted_loader(script), [&](Model&, int request) -> asio::awaitable<int> {
    if (request < 0) {
      // Blocking code on the compute executor: the worker answers pings, but
      // nothing interrupts the call when the deadline cancels the handler.
      co_await offload(pool_ptr->compute_executor(), [] { std::this_thread::sleep_for(600ms); });
    }
    co_return request + 1;
  });
  pool_ptr = &pool;
  error_code stuck_error;
  int after = 0;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        auto [e, v] = co_await pool.async_submit("bert", -1, asio::as_tuple(asio::use_awaitable));
        stuck_error = error_of(e);
        const bool replaced = co_await eventually([&] { return pool.stats().keys.at("bert").deaths == 1; });
        CHECK(replaced);
        after = co_await pool.submit("bert", 1);
        co_await pool.async_shutdown(2s, asio::use_awaitable);
      },
      asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(stuck_error == errc::request_timeout);
  CHECK(after == 2);
  CHECK(script->started == 2);  // the stuck worker, and its replacement
  const auto k = pool.stats().keys.at("bert");
  CHECK(k.timed_out == 1);
  CHECK(k.expired_in_handler == 1);
}

TEST_CASE("requests queued behind a dead worker are served by its replacement, none lost", "[lifecycle]") {
  asio::io_context ioc(2);
  auto script = std::make_shared<LoadScript>();
  IntPool pool(ioc, TestConfig().fast_lifecycle(), scripted_loader(script),
               [&](Model&, int request) -> asio::awaitable<int> {
                 if (request < 0) std::this_thread::sleep_for(600ms);  // hangs, holding its thread
                 co_return request + 1;
               });
  constexpr int queued = 10;
  std::atomic<int> answered{0};
  std::atomic<int> lost{0};
  std::atomic<int> other{0};
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        co_await pool.wait_for_workers("bert", 5s);
        pool.async_submit("bert", -1, [&](std::exception_ptr e, int) {
          (error_of(e) == errc::worker_lost ? lost : other).fetch_add(1);
        });
        for (int i = 0; i < queued; ++i) {
          pool.async_submit(
              "bert", i, [&, i](std::exception_ptr e, int v) { (!e && v == i + 1 ? answered : other).fetch_add(1); });
        }
        const bool settled_2 = co_await eventually([&] { return lost + answered + other == queued + 1; });
        CHECK(settled_2);
        co_await pool.async_shutdown(2s, asio::use_awaitable);
      },
      asio::detached);
  REQUIRE(run_until_idle(ioc, 2));
  CHECK(lost == 1);
  CHECK(answered == queued);
  CHECK(other == 0);
  CHECK(script->started == 2);
}

namespace {

/// A Response whose default constructor throws on demand: the worker builds
/// one outside the handler's try, so its coroutine then ends by the exception.
std::atomic<bool> fragile_throws{false};

struct Fragile {
  int value = 0;
  Fragile() {
    if (fragile_throws.exchange(false)) throw std::runtime_error("the worker's own code threw");
  }
  explicit Fragile(int v) : value(v) {}
};

}  // namespace

TEST_CASE("a worker whose coroutine ends by an exception is handled as a dead one", "[lifecycle]") {
  asio::io_context ioc(1);
  auto script = std::make_shared<LoadScript>();
  Pool<int, Fragile> pool(ioc, TestConfig().fast_lifecycle(), scripted_loader(script),
                          [](Model&, int request) -> asio::awaitable<Fragile> { co_return Fragile(request + 1); });
  constexpr int queued = 5;
  int answered = 0;
  int lost = 0;
  int other = 0;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        const Fragile first = co_await pool.submit("bert", 1);
        CHECK(first.value == 2);
        // The next request the worker takes kills its coroutine; the rest queue behind it.
        fragile_throws = true;
        pool.async_submit("bert", 100,
                          [&](std::exception_ptr e, Fragile) { ++(error_of(e) == errc::worker_lost ? lost : other); });
        for (int i = 0; i < queued; ++i) {
          pool.async_submit("bert", i,
                            [&, i](std::exception_ptr e, Fragile f) { ++(!e && f.value == i + 1 ? answered : other); });
        }
        const bool settled = co_await eventually([&] { return lost + answered + other == queued + 1; });
        CHECK(settled);
        co_await pool.async_shutdown(2s, asio::use_awaitable);
      },
      asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(lost == 1);
  CHECK(answered == queued);
  CHECK(other == 0);
  CHECK(script->started == 2);  // the replacement served the queue
  const auto stats = pool.stats();
  CHECK(stats.keys.at("bert").deaths == 1);
  CHECK(stats.keys.at("bert").failed == 1);
  CHECK(stats.keys.at("bert").completed == queued + 1);
}

TEST_CASE("idle workers are evicted down to the minimum, and a warm key is refilled", "[lifecycle]") {
  asio::io_context ioc(1);
  auto script = std::make_shared<LoadScript>();
  script->delay = 1ms;
  PoolConfig config = TestConfig().workers(1, 4).fast_lifecycle();
  config.min_workers_per_key = 2;
  config.warm_keys = {"bert"};
  IntPool pool(ioc, config, scripted_loader(script), echo_handler());
  bool warmed = false;
  error_code scaled;
  bool evicted_to_min = false;
  std::size_t lowest = 99;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        // Warm: spawned at construction, refilled from cold_start_workers (1) to the minimum (2), no request made.
        warmed = co_await eventually([&] { return pool.worker_count("bert") == 2; });
        auto [ec] = co_await pool.async_scale("bert", 4, asio::as_tuple(asio::use_awaitable));
        scaled = ec;
        CHECK(pool.worker_count("bert") == 4);
        evicted_to_min = co_await eventually([&] {
          lowest = std::min(lowest, pool.live_worker_count("bert"));
          return pool.live_worker_count("bert") == 2;
        });
        // A few idle timeouts more: never below the minimum.
        co_await eventually(
            [&] {
              lowest = std::min(lowest, pool.live_worker_count("bert"));
              return false;
            },
            200ms);
        co_await pool.async_shutdown(1s, asio::use_awaitable);
      },
      asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(warmed);
  CHECK_FALSE(scaled);
  CHECK(evicted_to_min);
  CHECK(lowest == 2);
  CHECK(script->started == 4);
}

TEST_CASE("a pool whose workers are all gone leaves nothing pending: its context runs out of work", "[lifecycle]") {
  asio::io_context ioc(1);
  auto script = std::make_shared<LoadScript>();
  script->delay = 1ms;
  PoolConfig config = TestConfig().fast_lifecycle();
  config.request_timeout = 1h;  // a deadline timer left armed would hold the context for an hour
  IntPool pool(ioc, config, scripted_loader(script), echo_handler());
  int answer = 0;
  error_code failed_spawn;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        answer = co_await pool.submit("bert", 1);
        // And a key whose load fails, its requests failed with it.
        script->fail = true;
        auto [e, v] = co_await pool.async_submit("gpt", 1, asio::as_tuple(asio::use_awaitable));
        failed_spawn = error_of(e);
      },
      asio::detached);
  // No shutdown: once idle eviction has stopped the worker, no timer, channel
  // wait or work count of the pool is left, and run() returns by itself.
  REQUIRE(run_until_idle(ioc, 1, 5s));
  CHECK(answer == 2);
  CHECK(failed_spawn == errc::spawn_failed);
  CHECK(pool.live_worker_count("bert") == 0);
  CHECK(pool.stats().keys.at("bert").evictions == 1);
}

TEST_CASE("evict drains the key's queue, then stops its workers", "[lifecycle]") {
  asio::io_context ioc(1);
  auto script = std::make_shared<LoadScript>();
  Gate gate(ioc.get_executor());
  IntPool pool(ioc, TestConfig().fast_lifecycle(), scripted_loader(script),
               [&](Model&, int request) -> asio::awaitable<int> {
                 co_await gate.pass();
                 co_return request + 1;
               });
  constexpr int submitted = 5;
  int answered = 0;
  int answered_when_evicted = -1;
  std::size_t workers_when_evicted = 99;
  int after = 0;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        co_await pool.wait_for_workers("bert", 5s);
        for (int i = 0; i < submitted; ++i) {
          pool.async_submit("bert", i, [&](std::exception_ptr e, int) {
            if (!e) ++answered;
          });
        }
        pool.async_evict("bert", [&](error_code ec) {
          CHECK_FALSE(ec);
          answered_when_evicted = answered;
          workers_when_evicted = pool.live_worker_count("bert");
        });
        co_await pause(20ms);
        CHECK(answered_when_evicted == -1);  // not while requests are queued
        gate.open();
        const bool settled_3 = co_await eventually([&] { return answered_when_evicted >= 0; });
        CHECK(settled_3);
        after = co_await pool.submit("bert", 41);  // a new wave
        co_await pool.async_shutdown(1s, asio::use_awaitable);
      },
      asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(answered_when_evicted == submitted);
  CHECK(workers_when_evicted == 0);
  CHECK(after == 42);
  CHECK(script->started == 2);
}

TEST_CASE("restart replaces workers one by one while the key serves", "[lifecycle]") {
  asio::io_context ioc(1);
  auto script = std::make_shared<LoadScript>();
  IntPool pool(ioc, TestConfig().workers(2, 2).fast_lifecycle(), scripted_loader(script), echo_handler());
  int answered = 0;
  int failed = 0;
  bool restarted = false;
  std::size_t most_workers = 0;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        co_await pool.wait_for_workers("bert", 5s);
        const bool settled_4 = co_await eventually([&] { return pool.worker_count("bert") == 2; });
        CHECK(settled_4);
        pool.async_restart("bert", [&](error_code ec) { restarted = !ec; });
        for (int i = 0;; ++i) {
          if (restarted) break;  // set by the restart's handler, which runs between our submits
          auto [e, v] = co_await pool.async_submit("bert", i, asio::as_tuple(asio::use_awaitable));
          (!e && v == i + 1 ? answered : failed) += 1;
          most_workers = std::max(most_workers, pool.live_worker_count("bert"));
        }
        co_await pool.async_shutdown(1s, asio::use_awaitable);
      },
      asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(restarted);
  CHECK(failed == 0);
  CHECK(answered > 0);
  CHECK(script->started == 4);  // two workers, two replacements
  CHECK(most_workers <= 3);     // one replacement at a time
}

TEST_CASE("commands report bad arguments and shutdown as errors", "[lifecycle]") {
  asio::io_context ioc(1);
  IntPool pool(ioc, TestConfig().workers(1, 2).fast_lifecycle(), scripted_loader(std::make_shared<LoadScript>()),
               echo_handler());
  std::vector<error_code> results;
  auto record = [&](error_code ec) { results.push_back(ec); };
  pool.async_scale("bert", 3, record);  // above max_workers_per_key
  pool.async_scale("", 1, record);
  pool.async_evict("", record);
  pool.async_restart("", record);
  REQUIRE(run_until_idle(ioc, 1));
  REQUIRE(results.size() == 4);
  for (auto& ec : results) CHECK(ec == errc::invalid_argument);
  ioc.restart();
  results.clear();
  pool.async_shutdown(0s, asio::detached);
  pool.async_scale("bert", 1, record);
  pool.async_restart("bert", record);
  REQUIRE(run_until_idle(ioc, 1));
  REQUIRE(results.size() == 2);
  for (auto& ec : results) CHECK(ec == errc::shutting_down);
}
