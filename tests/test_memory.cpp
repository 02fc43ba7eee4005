#include <coropool/pool.hpp>

#include <catch2/catch.hpp>

#include "support.hpp"

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

using namespace coropool;
using namespace coropool::test;

TEST_CASE("100 keys cold-started under a budget for 10 workers: never over budget, LRU eviction, memory_exhausted",
          "[memory]") {
  asio::io_context ioc(1);
  auto script = std::make_shared<LoadScript>();
  constexpr std::uint64_t footprint = 100;
  std::uint64_t most_reserved = 0;
  std::uint64_t changes = 0;
  bool over_budget = false;
  PoolConfig config = TestConfig().fast_lifecycle();
  config.health_interval = 1s;  // quiet: this test is about memory
  config.health_timeout = 5s;
  config.idle_timeout = 1h;  // only the governor evicts here
  config.memory_budget = 10 * footprint;
  config.worker_footprint = [](const std::string&) { return footprint; };
  config.on_memory_change = [&](std::uint64_t reserved, std::uint64_t budget) {
    ++changes;
    most_reserved = std::max(most_reserved, reserved);
    if (reserved > budget) over_budget = true;  // checked on every change, not sampled
  };
  IntPool pool(ioc, config, scripted_loader(script), echo_handler());
  std::vector<std::string> ready_keys;
  int exhausted = 0;
  int other = 0;
  std::vector<std::size_t> live_after_first_eviction;
  std::vector<std::size_t> live_after_second_eviction;
  error_code submit_error;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        int finished = 0;
        for (int i = 0; i < 100; ++i) {
          const std::string key = "k" + std::to_string(i);
          pool.async_wait_for_workers(key, 5s, [&, key](error_code ec) {
            if (!ec) {
              ready_keys.push_back(key);
            } else if (ec == errc::memory_exhausted) {
              ++exhausted;
            } else {
              ++other;
            }
            ++finished;
          });
        }
        // Every byte is held by a loading worker: nothing is idle, no room can be made.
        auto [e, v] = co_await pool.async_submit("late", 1, asio::as_tuple(asio::use_awaitable));
        submit_error = error_of(e);
        const bool all_finished = co_await eventually([&] { return finished == 100; });
        CHECK(all_finished);
        std::sort(ready_keys.begin(), ready_keys.end());
        // Use them in a known order: the first used is the least recently used.
        for (const auto& key : ready_keys) co_await pool.submit(key, 1);
        co_await pool.wait_for_workers("fresh1", 5s);  // evicts the LRU one
        for (const auto& key : ready_keys) live_after_first_eviction.push_back(pool.live_worker_count(key));
        co_await pool.wait_for_workers("fresh2", 5s);  // and then the next
        for (const auto& key : ready_keys) live_after_second_eviction.push_back(pool.live_worker_count(key));
        co_await pool.async_shutdown(1s, asio::use_awaitable);
      },
      asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK_FALSE(over_budget);
  CHECK(most_reserved == 10 * footprint);
  CHECK(changes > 20);
  REQUIRE(ready_keys.size() == 10);
  CHECK(exhausted == 90);
  CHECK(other == 0);
  CHECK(submit_error == errc::memory_exhausted);  // a submit whose spawn has no room fails the same way
  std::vector<std::size_t> first(10, 1), second(10, 1);
  first[0] = 0;
  second[0] = second[1] = 0;
  CHECK(live_after_first_eviction == first);
  CHECK(live_after_second_eviction == second);
  const auto stats = pool.stats();
  CHECK(stats.memory_reserved == 0);  // every reservation went back to the real counter
  CHECK(stats.memory_budget == 10 * footprint);
}

TEST_CASE("cold starts racing on two threads never exceed the memory budget", "[memory][concurrency]") {
  asio::io_context ioc(2);
  auto script = std::make_shared<LoadScript>();
  script->delay = 2ms;
  constexpr std::uint64_t footprint = 100;
  constexpr std::uint64_t budget = 10 * footprint;
  // The observer runs wherever a reservation changes: atomics, and no Catch assertion off the test's thread.
  std::atomic<std::uint64_t> most_reserved{0};
  std::atomic<bool> over_budget{false};
  PoolConfig config = TestConfig().workers(1, 2).fast_lifecycle();
  config.health_interval = 1s;  // quiet: this test is about memory
  config.health_timeout = 5s;
  config.idle_timeout = 1h;  // only the governor evicts here
  config.memory_budget = budget;
  config.worker_footprint = [](const std::string&) { return footprint; };
  config.on_memory_change = [&](std::uint64_t reserved, std::uint64_t limit) {
    if (reserved > limit) over_budget = true;  // checked on every change, not sampled
    std::uint64_t seen = most_reserved.load();
    while (seen < reserved && !most_reserved.compare_exchange_weak(seen, reserved)) {
    }
  };
  IntPool pool(ioc, config, scripted_loader(script), echo_handler());
  // 8 callers on both threads cycle through 40 keys, each used by several
  // callers at once: cold starts race for 10 workers' worth of memory, and
  // the governor evicts the least recently used idle workers to make room.
  constexpr int callers = 8;
  constexpr int keys = 40;
  constexpr int per_caller = 60;
  std::atomic<int> answered{0};
  std::atomic<int> wrong{0};
  std::atomic<int> exhausted{0};
  std::atomic<int> other{0};
  std::atomic<int> callers_left{callers};
  for (int c = 0; c < callers; ++c) {
    asio::co_spawn(
        ioc,
        [&, c]() -> asio::awaitable<void> {
          for (int i = 0; i < per_caller; ++i) {
            const std::string key = "k" + std::to_string((c * 5 + i) % keys);
            auto [e, v] = co_await pool.async_submit(key, i, asio::as_tuple(asio::use_awaitable));
            if (!e) {
              ++answered;
              if (v != i + 1) ++wrong;
            } else if (error_of(e) == errc::memory_exhausted) {
              ++exhausted;
            } else {
              ++other;
            }
          }
          if (--callers_left == 0) co_await pool.async_shutdown(1s, asio::use_awaitable);
        },
        asio::detached);
  }
  REQUIRE(run_until_idle(ioc, 2));
  CHECK_FALSE(over_budget.load());
  CHECK(most_reserved.load() == budget);  // 40 keys: the budget fills, and evictions make room
  CHECK(answered.load() + exhausted.load() == callers * per_caller);
  CHECK(answered.load() > 0);
  CHECK(wrong.load() == 0);
  CHECK(other.load() == 0);
  const auto stats = pool.stats();
  CHECK(stats.memory_reserved == 0);  // every reservation went back
  CHECK(stats.total().evictions > 0);
}

TEST_CASE("a scale waiting for an evicted worker's memory completes with shutting_down when shutdown begins",
          "[memory][shutdown]") {
  asio::io_context ioc(1);
  auto script = std::make_shared<LoadScript>();
  PoolConfig config = quiet_config();
  config.memory_budget = 100;  // room for one worker
  config.worker_footprint = [](const std::string&) -> std::uint64_t { return 100; };
  IntPool pool(ioc, config, scripted_loader(script), echo_handler());
  error_code scaled = asio::error::would_block;  // not completed yet
  bool shut_down = false;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        co_await pool.wait_for_workers("a", 5s);  // a's worker holds the whole budget, idle
        // b's spawn evicts a's idle worker and waits for it to end; shutdown
        // begins on the strand before that worker's exit reaches it, and no
        // worker of b will ever load to move the scale on.
        pool.async_scale("b", 1, [&](error_code ec) { scaled = ec; });
        co_await pool.async_shutdown(5s, asio::use_awaitable);
        shut_down = true;
      },
      asio::detached);
  REQUIRE(run_until_idle(ioc, 1, 10s));
  CHECK(shut_down);
  CHECK(scaled == errc::shutting_down);
}
