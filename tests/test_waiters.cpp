#include <coropool/pool.hpp>

#include <catch2/catch.hpp>

#include "support.hpp"

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_future.hpp>

#include <future>

using namespace coropool;
using namespace coropool::test;

namespace {

/// Starts `count` waiters on `key` and counts their outcomes.
struct WaiterTally {
  std::atomic<int> ok{0};
  std::atomic<int> failed{0};
  std::atomic<int> other{0};
  boost::system::error_code last_error;  // written by the failures only, which agree

  template <class Executor>
  void start(const Executor& ex, IntPool& pool, const std::string& key, int count,
             std::chrono::steady_clock::duration timeout = 60s) {
    for (int i = 0; i < count; ++i) {
      asio::co_spawn(
          ex,
          [&, key, timeout]() -> asio::awaitable<void> {
            try {
              co_await pool.wait_for_workers(key, timeout);
              ok.fetch_add(1);
            } catch (const spawn_error&) {
              failed.fetch_add(1);
            } catch (...) {
              other.fetch_add(1);
            }
          },
          asio::detached);
    }
  }
};

/// Shuts the pool down once every waiter of a tally has an outcome.
asio::awaitable<void> shutdown_when(IntPool& pool, WaiterTally& tally, int count) {
  while (tally.ok + tally.failed + tally.other < count) {
    co_await pause(1ms);  // the test's own observer; the pool never polls
  }
  co_await pool.async_shutdown(1s, asio::use_awaitable);
}

}  // namespace

TEST_CASE("a cold key is spawned once for all its waiters", "[waiters]") {
  asio::io_context ioc;
  auto script = std::make_shared<LoadScript>();
  IntPool pool(ioc, quiet_config(), scripted_loader(script), echo_handler());
  CHECK_FALSE(pool.has_workers("bert"));

  WaiterTally tally;
  tally.start(ioc.get_executor(), pool, "bert", 100);
  asio::co_spawn(ioc, shutdown_when(pool, tally, 100), asio::detached);
  bool workers_seen = false;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        co_await pool.wait_for_workers("bert");
        workers_seen = pool.has_workers("bert") && pool.worker_count("bert") >= 1;
      },
      asio::detached);
  REQUIRE(run_until_idle(ioc, 1));

  CHECK(tally.ok == 100);
  CHECK(script->started == 2);  // cold_start_workers
  CHECK(workers_seen);
  CHECK_FALSE(pool.has_workers("bert"));  // shut down
}

TEST_CASE("a waiter's callback that throws drops none of the waiters woken with it", "[waiters]") {
  asio::io_context ioc(1);
  IntPool pool(ioc, quiet_config(), scripted_loader(std::make_shared<LoadScript>()), echo_handler());
  constexpr int waiters = 10;
  int woken = 0;
  for (int i = 0; i < waiters; ++i) {
    pool.async_wait_for_workers("bert", 5s, [&, i](error_code ec) {
      CHECK_FALSE(ec);
      if (++woken == waiters) pool.async_shutdown(1s, asio::detached);
      if (i % 3 == 0) throw std::logic_error("callback " + std::to_string(i));
    });
  }
  // A dropped waiter would leave the pool running, and the run would end at its limit.
  const int escaped = run_counting_escapes<std::logic_error>(ioc, 10s);
  CHECK(escaped == 4);
  CHECK(woken == waiters);
}

TEST_CASE("10,000 waiters share one spawn wave", "[waiters][stress][concurrency]") {
  constexpr int waiters = 10'000;
  auto script = std::make_shared<LoadScript>();
  PoolConfig config = quiet_config();
  config.cold_start_workers = 3;

  SECTION("one-thread io_context") {
    asio::io_context ioc(1);
    IntPool pool(ioc, config, scripted_loader(script), echo_handler());
    WaiterTally tally;
    tally.start(ioc.get_executor(), pool, "a-model-whose-name-does-not-fit-in-a-small-string", waiters);
    asio::co_spawn(ioc, shutdown_when(pool, tally, waiters), asio::detached);
    REQUIRE(run_until_idle(ioc, 1));
    CHECK(tally.ok == waiters);
    CHECK(script->started == 3);
  }

  SECTION("two-thread io_context") {
    asio::io_context ioc(2);
    IntPool pool(ioc, config, scripted_loader(script), echo_handler());
    WaiterTally tally;
    tally.start(ioc.get_executor(), pool, "bert", waiters);
    asio::co_spawn(ioc, shutdown_when(pool, tally, waiters), asio::detached);
    REQUIRE(run_until_idle(ioc, 2));
    CHECK(tally.ok == waiters);
    CHECK(script->started == 3);
  }

  SECTION("a pool built on a strand of a two-thread io_context") {
    asio::io_context ioc(2);
    IntPool pool(asio::make_strand(ioc), config, scripted_loader(script), echo_handler());
    WaiterTally tally;
    tally.start(ioc.get_executor(), pool, "bert", waiters / 10);
    asio::co_spawn(ioc, shutdown_when(pool, tally, waiters / 10), asio::detached);
    REQUIRE(run_until_idle(ioc, 2));
    CHECK(tally.ok == waiters / 10);
    CHECK(script->started == 3);
  }

  SECTION("thread_pool, waiters on their own strands") {
    asio::thread_pool threads(2);
    IntPool pool(threads, config, scripted_loader(script), echo_handler());
    WaiterTally tally;
    for (int i = 0; i < 4; ++i) tally.start(asio::make_strand(threads), pool, "bert", waiters / 4);
    std::promise<void> done;
    asio::co_spawn(threads, shutdown_when(pool, tally, waiters), [&](std::exception_ptr) { done.set_value(); });
    REQUIRE(done.get_future().wait_for(30s) == std::future_status::ready);
    threads.join();
    CHECK(tally.ok == waiters);
    CHECK(script->started == 3);
  }
}

TEST_CASE("a failed load fails every waiter at once, with its cause", "[waiters]") {
  asio::io_context ioc;
  auto script = std::make_shared<LoadScript>();
  script->fail = true;
  IntPool pool(ioc, quiet_config(), scripted_loader(script), echo_handler());

  const auto started = std::chrono::steady_clock::now();
  int failures_with_cause = 0;
  for (int i = 0; i < 50; ++i) {
    asio::co_spawn(
        ioc,
        [&]() -> asio::awaitable<void> {
          try {
            co_await pool.wait_for_workers("gpt", 1h);
          } catch (const spawn_error& e) {
            const bool has_message = std::string(e.what()).find("model file for 'gpt' is corrupt") != std::string::npos;
            bool cause_kept = false;
            try {
              std::rethrow_exception(e.cause());
            } catch (const std::runtime_error& cause) {
              cause_kept = std::string(cause.what()) == "model file for 'gpt' is corrupt";
            }
            if (has_message && cause_kept && e.code() == errc::spawn_failed) ++failures_with_cause;
          }
        },
        asio::detached);
  }
  boost::system::error_code callback_error;
  pool.async_wait_for_workers("gpt", 1h, [&](boost::system::error_code ec) { callback_error = ec; });
  REQUIRE(run_until_idle(ioc, 1));  // runs out of work: no deadline is left pending
  CHECK(std::chrono::steady_clock::now() - started < 30min);
  CHECK(failures_with_cause == 50);
  CHECK(callback_error == errc::spawn_failed);
  CHECK(script->started == 2);

  SECTION("a later call starts a new wave") {
    script->fail = false;
    ioc.restart();
    bool ready = false;
    asio::co_spawn(
        ioc,
        [&]() -> asio::awaitable<void> {
          co_await pool.wait_for_workers("gpt", 10s);
          ready = pool.has_workers("gpt");
          co_await pool.async_shutdown(1s, asio::use_awaitable);
        },
        asio::detached);
    REQUIRE(run_until_idle(ioc, 1));
    CHECK(ready);
    CHECK(script->started == 4);
  }
}

TEST_CASE("a pool with no workers and no waiters keeps nothing armed", "[waiters]") {
  // io_context::run returns only once nothing is pending: no timer, no coroutine.
  asio::io_context ioc;
  auto script = std::make_shared<LoadScript>();
  script->fail = true;
  IntPool pool(ioc, quiet_config(), scripted_loader(script), echo_handler());
  REQUIRE(run_until_idle(ioc, 1, 5s));

  ioc.restart();
  boost::system::error_code result;
  for (int i = 0; i < 100; ++i) {
    pool.async_wait_for_workers("k", 1h, [&](boost::system::error_code ec) { result = ec; });
  }
  REQUIRE(run_until_idle(ioc, 1, 5s));  // the 1 h deadlines were disarmed when the wave failed
  CHECK(result == errc::spawn_failed);
  CHECK(script->started == 2);
}

TEST_CASE("a waiter's deadline ends only that waiter", "[waiters]") {
  asio::io_context ioc;
  auto script = std::make_shared<LoadScript>();
  script->delay = 200ms;
  IntPool pool(ioc, quiet_config(), scripted_loader(script), echo_handler());

  boost::system::error_code short_wait, long_wait = asio::error::would_block;
  pool.async_wait_for_workers("t5", 20ms, [&](boost::system::error_code ec) { short_wait = ec; });
  pool.async_wait_for_workers("t5", 10s, [&](boost::system::error_code ec) {
    long_wait = ec;
    pool.async_shutdown(0s, asio::detached);
  });
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(short_wait == errc::spawn_timeout);
  CHECK(!long_wait);
  CHECK(script->started == 2);
  CHECK(script->finished == 2);

  SECTION("the awaitable throws system_error") {
    ioc.restart();
    IntPool slow(ioc, quiet_config(), scripted_loader(script), echo_handler());
    boost::system::error_code thrown;
    asio::co_spawn(
        ioc,
        [&]() -> asio::awaitable<void> {
          try {
            co_await slow.wait_for_workers("t5", 1ms);
          } catch (const boost::system::system_error& e) {
            thrown = e.code();
          }
          co_await slow.async_shutdown(0s, asio::use_awaitable);
        },
        asio::detached);
    REQUIRE(run_until_idle(ioc, 1));
    CHECK(thrown == errc::spawn_timeout);
  }
}

TEST_CASE("cancelling one waiter leaves the wave to the others", "[waiters]") {
  asio::io_context ioc;
  auto script = std::make_shared<LoadScript>();
  script->delay = 50ms;
  IntPool pool(ioc, quiet_config(), scripted_loader(script), echo_handler());

  asio::cancellation_signal signal;
  boost::system::error_code cancelled_one;
  std::vector<boost::system::error_code> others(10, asio::error::would_block);
  pool.async_wait_for_workers(
      "k", 10s, asio::bind_cancellation_slot(signal.slot(), [&](boost::system::error_code ec) { cancelled_one = ec; }));
  for (auto& e : others) pool.async_wait_for_workers("k", 10s, [&e](boost::system::error_code ec) { e = ec; });

  bool operators_cancelled = false;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        using namespace asio::experimental::awaitable_operators;
        asio::steady_timer first(co_await asio::this_coro::executor, 5ms);
        signal.emit(asio::cancellation_type::terminal);
        // The timer wins the race; the pool's wait is cancelled through the operator's slot.
        auto result = co_await (pool.async_wait_for_workers("k", 10s, asio::use_awaitable) ||
                                first.async_wait(asio::use_awaitable));
        operators_cancelled = result.index() == 1;
        co_await pause(200ms);
        co_await pool.async_shutdown(1s, asio::use_awaitable);
      },
      asio::detached);
  REQUIRE(run_until_idle(ioc, 1));

  CHECK(cancelled_one == asio::error::operation_aborted);
  for (auto& e : others) CHECK(!e);
  CHECK(operators_cancelled);
  CHECK(script->started == 2);
  CHECK(script->finished == 2);
}

TEST_CASE("bad arguments are errors, not undefined behaviour", "[waiters]") {
  asio::io_context ioc;
  auto script = std::make_shared<LoadScript>();
  IntPool pool(ioc, quiet_config(), scripted_loader(script), echo_handler());

  std::vector<boost::system::error_code> results(3);
  pool.async_wait_for_workers("", 1s, [&](boost::system::error_code ec) { results[0] = ec; });
  pool.async_wait_for_workers("k", 0s, [&](boost::system::error_code ec) { results[1] = ec; });
  pool.async_wait_for_workers("k", -1s, [&](boost::system::error_code ec) { results[2] = ec; });
  REQUIRE(run_until_idle(ioc, 1));
  for (auto& ec : results) CHECK(ec == errc::invalid_argument);
  CHECK(script->started == 0);

  PoolConfig no_workers = quiet_config();
  no_workers.cold_start_workers = 0;
  CHECK_THROWS_AS(IntPool(ioc, no_workers, scripted_loader(script), echo_handler()), boost::system::system_error);
  PoolConfig no_timeout = quiet_config();
  no_timeout.spawn_timeout = 0s;
  CHECK_THROWS_AS(IntPool(ioc, no_timeout, scripted_loader(script), echo_handler()), boost::system::system_error);
}

TEST_CASE("shutdown fails waiters, refuses new ones and cancels loads", "[waiters]") {
  asio::io_context ioc;
  auto script = std::make_shared<LoadScript>();
  script->delay = 1h;  // only cancellation ends these loads
  IntPool pool(ioc, quiet_config(), scripted_loader(script), echo_handler());

  std::vector<boost::system::error_code> pending(5);
  for (auto& e : pending) pool.async_wait_for_workers("k", 1h, [&e](boost::system::error_code ec) { e = ec; });
  boost::system::error_code shutdown_result = asio::error::would_block, after_shutdown;
  bool second_shutdown = false;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        co_await pause(10ms);
        pool.async_shutdown(50ms, [&](boost::system::error_code ec) { shutdown_result = ec; });
        pool.async_wait_for_workers("k", 1h, [&](boost::system::error_code ec) { after_shutdown = ec; });
        co_await pool.async_shutdown(0s, asio::use_awaitable);
        second_shutdown = true;
      },
      asio::detached);
  REQUIRE(run_until_idle(ioc, 1));  // returns only when no coroutine of the pool is left

  for (auto& e : pending) CHECK(e == errc::shutting_down);
  CHECK(after_shutdown == errc::shutting_down);
  CHECK(!shutdown_result);
  CHECK(second_shutdown);
  CHECK(script->cancelled == 2);
}

TEST_CASE("loads finishing within the shutdown deadline are kept until they end", "[waiters]") {
  asio::io_context ioc;
  auto script = std::make_shared<LoadScript>();
  script->delay = 20ms;
  IntPool pool(ioc, quiet_config(), scripted_loader(script), echo_handler());
  pool.async_wait_for_workers("k", 1h, asio::detached);
  pool.async_shutdown(10s, asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(script->finished == 2);
  CHECK(script->cancelled == 0);
  CHECK_FALSE(pool.has_workers("k"));
}

TEST_CASE("destroying a pool at any point is safe", "[waiters][concurrency]") {
  auto script = std::make_shared<LoadScript>();
  script->delay = 1h;

  SECTION("while a load is in flight") {
    asio::io_context ioc;
    auto pool = std::make_unique<IntPool>(ioc, quiet_config(), scripted_loader(script), echo_handler());
    boost::system::error_code waiter;
    pool->async_wait_for_workers("k", 1h, [&](boost::system::error_code ec) { waiter = ec; });
    ioc.run_for(10ms);
    pool.reset();
    REQUIRE(run_until_idle(ioc, 1));
    CHECK(waiter == errc::shutting_down);
    CHECK(script->cancelled == 2);
  }

  SECTION("while a load is in flight, with an executor that never runs again") {
    asio::io_context ioc;
    auto pool = std::make_unique<IntPool>(ioc, quiet_config(), scripted_loader(script), echo_handler());
    pool->async_wait_for_workers("k", 1h, asio::detached);
    ioc.run_for(10ms);
    CHECK(script->started == 2);
    pool.reset();  // what is left is freed with the io_context (LeakSanitizer checks)
  }

  SECTION("before its executor ever ran") {
    asio::io_context ioc;
    auto pool = std::make_unique<IntPool>(ioc, quiet_config(), scripted_loader(script), echo_handler());
    pool->async_wait_for_workers("k", 1h, asio::detached);
    pool.reset();
  }

  SECTION("with ready workers, on two threads") {
    script->delay = 1ms;
    asio::io_context ioc(2);
    auto pool = std::make_unique<IntPool>(ioc, quiet_config(), scripted_loader(script), echo_handler());
    pool->async_wait_for_workers("k", 1h, [&](boost::system::error_code) { pool.reset(); });
    REQUIRE(run_until_idle(ioc, 2));
    CHECK(script->finished == 2);
  }
}

TEST_CASE("waiting blocks no thread", "[waiters]") {
  // One thread. The load ends only when a ticker on that same thread has
  // ticked 20 times while 1,000 callers wait: if any wait blocked the thread,
  // the ticker could not tick, the load would never end, and the watchdog fails.
  asio::io_context ioc(1);
  auto release = std::make_shared<asio::steady_timer>(ioc, asio::steady_timer::time_point::max());
  int loads = 0;
  IntPool pool(
      ioc, quiet_config(),
      [&, release](const std::string& key) -> asio::awaitable<Model> {
        ++loads;
        co_await release->async_wait(asio::as_tuple(asio::use_awaitable));
        co_return Model{key};
      },
      echo_handler());

  WaiterTally tally;
  tally.start(ioc.get_executor(), pool, "k", 1000);
  int ticks = 0;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        for (; ticks < 20; ++ticks) co_await pause(1ms);
        CHECK(tally.ok == 0);  // still waiting, and we ran anyway
        release->cancel();
      },
      asio::detached);
  asio::co_spawn(ioc, shutdown_when(pool, tally, 1000), asio::detached);
  REQUIRE(run_until_idle(ioc, 1, 20s));
  CHECK(ticks == 20);
  CHECK(tally.ok == 1000);
  CHECK(loads == 2);
}

TEST_CASE("completion tokens and executors", "[waiters][concurrency]") {
  auto script = std::make_shared<LoadScript>();
  asio::io_context ioc;
  IntPool pool(ioc, quiet_config(), scripted_loader(script), echo_handler());

  SECTION("as_tuple, deferred and the caller's strand") {
    bool tuple_ok = false, deferred_ok = false, on_strand = false;
    auto strand = asio::make_strand(ioc);
    pool.async_wait_for_workers("k", 1s, asio::bind_executor(strand, [&](boost::system::error_code) {
                                  on_strand = strand.running_in_this_thread();
                                }));
    asio::co_spawn(
        ioc,
        [&]() -> asio::awaitable<void> {
          auto [ec] = co_await pool.async_wait_for_workers("k", 1s, asio::as_tuple(asio::use_awaitable));
          tuple_ok = !ec;
          auto op = pool.async_wait_for_workers("k", 1s, asio::deferred);
          co_await std::move(op)(asio::use_awaitable);
          deferred_ok = true;
          co_await pool.async_shutdown(1s, asio::use_awaitable);
        },
        asio::detached);
    REQUIRE(run_until_idle(ioc, 1));
    CHECK(tuple_ok);
    CHECK(deferred_ok);
    CHECK(on_strand);
  }

  SECTION("use_future from another thread") {
    auto work = asio::make_work_guard(ioc);
    std::thread runner([&] { ioc.run(); });
    std::future<void> ready = pool.async_wait_for_workers("k", 5s, asio::use_future);
    CHECK(ready.wait_for(10s) == std::future_status::ready);
    CHECK_NOTHROW(ready.get());
    CHECK(pool.has_workers("k"));  // read from this thread while the io thread runs
    pool.async_shutdown(1s, asio::use_future).get();
    work.reset();
    runner.join();
  }

  SECTION("the immediate answer is not given inline") {
    pool.async_wait_for_workers("k", 1s, asio::detached);
    ioc.run_for(200ms);
    ioc.restart();
    bool returned = false, inline_call = false;
    pool.async_wait_for_workers("k", 1s, [&](boost::system::error_code) { inline_call = !returned; });
    returned = true;
    pool.async_shutdown(1s, asio::detached);
    REQUIRE(run_until_idle(ioc, 1));
    CHECK_FALSE(inline_call);
  }
}

TEST_CASE("every waiter completes exactly once while cancellations race the wave", "[waiters][stress][concurrency]") {
  constexpr int waiters = 4000;
  asio::io_context ioc(2);
  auto script = std::make_shared<LoadScript>();
  script->delay = 20ms;
  IntPool pool(ioc, quiet_config(), scripted_loader(script), echo_handler());

  struct Caller {
    asio::cancellation_signal signal;
    std::atomic<int> calls{0};
    boost::system::error_code result;
  };
  std::vector<std::unique_ptr<Caller>> callers;
  std::atomic<int> completed{0};
  for (int i = 0; i < waiters; ++i) {
    auto& caller = *callers.emplace_back(std::make_unique<Caller>());
    auto strand = asio::make_strand(ioc);
    // Each caller lives on its own strand, where its cancellation is emitted too,
    // at a moment spread around the wave's end.
    asio::dispatch(strand, [&, strand, i] {
      pool.async_wait_for_workers(
          "k", 10s,
          asio::bind_cancellation_slot(caller.signal.slot(),
                                       asio::bind_executor(strand, [&](boost::system::error_code ec) {
                                         caller.result = ec;
                                         caller.calls.fetch_add(1);
                                         completed.fetch_add(1);
                                       })));
      if (i % 2 == 0) {
        auto timer = std::make_shared<asio::steady_timer>(strand, std::chrono::microseconds(15'000 + (i * 7) % 10'000));
        timer->async_wait([&, timer](boost::system::error_code) {
          if (caller.calls.load() == 0) caller.signal.emit(asio::cancellation_type::terminal);
        });
      }
    });
  }
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        while (completed.load() < waiters) {
          co_await pause(1ms);  // the test's own observer; the pool never polls
        }
        co_await pool.async_shutdown(1s, asio::use_awaitable);
      },
      asio::detached);
  REQUIRE(run_until_idle(ioc, 2));

  int ok = 0, aborted = 0;
  for (auto& caller : callers) {
    REQUIRE(caller->calls.load() == 1);
    if (!caller->result) ++ok;
    if (caller->result == asio::error::operation_aborted) ++aborted;
  }
  CHECK(ok + aborted == waiters);
  CHECK(ok >= waiters / 2);  // the callers never cancelled all succeed
  CHECK(script->started == 2);
}
