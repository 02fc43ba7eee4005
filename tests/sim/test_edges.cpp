// Every duration knob and argument at its edges, 1 ns and max(), in virtual
// time: an hour passes in a moment, and a timer that spins is caught by
// run_until's bound instead of by a stopwatch. Under UBSan (the asan-ubsan
// preset) these are also the overflow tests of the deadline arithmetic.

#include <coropool.hpp>

#include <catch2/catch.hpp>

#include "sim/manual_clock.hpp"
#include "support.hpp"

#include <boost/asio/io_context.hpp>

#include <optional>
#include <string>
#include <vector>

using namespace coropool;
using namespace coropool::testing;
using namespace std::chrono_literals;

namespace {

using duration = manual_clock::duration;
constexpr duration never = duration::max();

struct Model {};

/// What a request's handler does: answer at once, after `slow`, or throw.
struct Request {
  duration takes{};
  bool fails = false;
};

PoolConfig edge_config(asio::io_context& ioc) {
  PoolConfig config = test::quiet_config();
  config.compute_executor = ioc.get_executor();
  config.cold_start_workers = 1;
  config.max_workers_per_key = 1;
  return config;
}

auto loader(duration takes = 10ms) {
  return [takes](const std::string&) -> asio::awaitable<Model> {
    manual_timer t(co_await asio::this_coro::executor, takes);
    co_await t.async_wait(asio::use_awaitable);
    co_return Model{};
  };
}

auto handler() {
  return [](Model&, Request request) -> asio::awaitable<int> {
    if (request.fails) throw test::model_error("the model failed");
    if (request.takes > duration::zero()) {
      manual_timer t(co_await asio::this_coro::executor, request.takes);
      co_await t.async_wait(asio::use_awaitable);
    }
    co_return 1;
  };
}

using EdgePool = Pool<Request, int>;

/// The pool error a submit completed with; success is an empty code.
struct submitted {
  std::optional<error_code> result;
  int completions = 0;
};

void submit(EdgePool& pool, Request request, submitted& into) {
  pool.async_submit("m", request, [&into](std::exception_ptr e, int) {
    ++into.completions;
    into.result = error_code{};
    try {
      if (e) std::rethrow_exception(e);
    } catch (const boost::system::system_error& error) {
      into.result = error.code();
    } catch (const test::model_error&) {
      into.result = make_error_code(errc::invalid_argument);  // the handler's own: marked, and not expected here
    }
  });
}

/// Shuts the pool down and runs out the clock: the context must have no work left.
bool shut_down_cleanly(asio::io_context& ioc, std::optional<EdgePool>& pool) {
  bool done = false;
  pool->async_shutdown(1s, [&](error_code) { done = true; });
  run_until(ioc, manual_clock::after(3h));
  pool.reset();
  run_until(ioc, manual_clock::after(1h));
  return done && out_of_work(ioc);
}

}  // namespace

TEST_CASE("request_timeout at its edges: 1 ns times out what takes any time, max() never", "[sim][edges]") {
  for (const duration timeout : {duration(1ns), never}) {
    DYNAMIC_SECTION("request_timeout " << (timeout == never ? "max()" : "1 ns")) {
      manual_clock::reset();
      asio::io_context ioc(1);
      PoolConfig config = edge_config(ioc);
      config.request_timeout = timeout;
      std::optional<EdgePool> pool(std::in_place, ioc, config, loader(), handler());
      submitted slow;
      submit(*pool, Request{2h}, slow);
      run_until(ioc, manual_clock::after(3h));
      CHECK(slow.completions == 1);
      CHECK(slow.result == (timeout == never ? error_code{} : make_error_code(errc::request_timeout)));
      const auto stats = pool->stats().keys.at("m");
      CHECK((timeout == never ? stats.completed : stats.timed_out) == 1);
      CHECK(shut_down_cleanly(ioc, pool));
    }
  }
}

TEST_CASE("spawn_timeout and wait_for_workers' timeout at their edges", "[sim][edges]") {
  for (const duration timeout : {duration(1ns), never}) {
    for (const bool from_config : {true, false}) {
      DYNAMIC_SECTION((from_config ? "spawn_timeout " : "wait_for_workers timeout ")
                      << (timeout == never ? "max()" : "1 ns")) {
        manual_clock::reset();
        asio::io_context ioc(1);
        PoolConfig config = edge_config(ioc);
        if (from_config) config.spawn_timeout = timeout;
        std::optional<EdgePool> pool(std::in_place, ioc, config, loader(1h), handler());
        std::optional<error_code> waited;
        auto done = [&](error_code ec) { waited = ec; };
        if (from_config) {
          pool->async_wait_for_workers("m", done);
        } else {
          pool->async_wait_for_workers("m", timeout, done);
        }
        run_until(ioc, manual_clock::after(2h));  // the load takes an hour
        REQUIRE(waited);
        CHECK(*waited == (timeout == never ? error_code{} : make_error_code(errc::spawn_timeout)));
        CHECK(shut_down_cleanly(ioc, pool));
      }
    }
  }
}

TEST_CASE("health and maintenance intervals at their edges: 1 ns works, max() never wakes the pool", "[sim][edges]") {
  for (const duration interval : {duration(1ns), never}) {
    for (const int knob : {0, 1, 2}) {  // health_interval (with health_timeout), maintenance_interval, both
      DYNAMIC_SECTION("knob " << knob << ", " << (interval == never ? "max()" : "1 ns")) {
        manual_clock::reset();
        asio::io_context ioc(1);
        PoolConfig config = edge_config(ioc);
        config.request_timeout = never;  // no request deadline timer either: only these intervals remain
        if (knob != 1) config.health_interval = config.health_timeout = interval;
        if (knob != 0) config.maintenance_interval = interval;
        // At 1 ns the pool's timer fires a million times per virtual millisecond: steps stay short.
        const auto step = interval == never ? duration(1s) : duration(1us);
        std::optional<EdgePool> pool(std::in_place, ioc, config, loader(duration::zero()), handler());
        submitted first;
        submit(*pool, Request{}, first);
        run_until(ioc, manual_clock::after(step));
        CHECK(first.result == error_code{});
        // An idle worker, for an hour (1 ns: a microsecond): the pool's timer
        // fires once per interval, and never when both are max().
        const auto idle = interval == never ? duration(1h) : duration(1us);
        const std::size_t ran = run_until(ioc, manual_clock::after(idle));
        if (knob == 2 && interval == never) CHECK(ran == 0);
        if (interval != never) CHECK(ran >= 1000);  // 1 ns intervals run, bounded per instant
        submitted second;
        submit(*pool, Request{}, second);
        run_until(ioc, manual_clock::after(step));
        CHECK(second.result == error_code{});
        CHECK(pool->stats().keys.at("m").deaths == 0);
        CHECK(shut_down_cleanly(ioc, pool));
      }
    }
  }
}

TEST_CASE("idle_timeout at its edges: 1 ns evicts at the next tick, max() never", "[sim][edges]") {
  for (const duration timeout : {duration(1ns), never}) {
    DYNAMIC_SECTION("idle_timeout " << (timeout == never ? "max()" : "1 ns")) {
      manual_clock::reset();
      asio::io_context ioc(1);
      PoolConfig config = edge_config(ioc);
      config.idle_timeout = timeout;
      config.maintenance_interval = 10ms;
      std::optional<EdgePool> pool(std::in_place, ioc, config, loader(), handler());
      submitted first;
      submit(*pool, Request{}, first);
      run_until(ioc, manual_clock::after(1h));
      CHECK(first.result == error_code{});
      CHECK(pool->live_worker_count("m") == (timeout == never ? 1u : 0u));
      CHECK(shut_down_cleanly(ioc, pool));
    }
  }
}

TEST_CASE("open_duration at its edges: 1 ns half-opens at once, max() stays open", "[sim][edges]") {
  for (const duration open_for : {duration(1ns), never}) {
    DYNAMIC_SECTION("open_duration " << (open_for == never ? "max()" : "1 ns")) {
      manual_clock::reset();
      asio::io_context ioc(1);
      PoolConfig config = edge_config(ioc);
      config.failure_threshold = 1;
      config.half_open_probes = 1;
      config.open_duration = open_for;
      std::optional<EdgePool> pool(std::in_place, ioc, config, loader(), handler());
      submitted failing;
      submit(*pool, Request{duration::zero(), true}, failing);
      run_until(ioc, manual_clock::after(1s));
      REQUIRE(failing.completions == 1);
      run_until(ioc, manual_clock::after(1h));
      submitted later;
      submit(*pool, Request{}, later);
      run_until(ioc, manual_clock::after(1s));
      CHECK(later.result == (open_for == never ? make_error_code(errc::circuit_open) : error_code{}));
      CHECK(pool->stats().keys.at("m").breaker == (open_for == never ? breaker_state::open : breaker_state::closed));
      CHECK(shut_down_cleanly(ioc, pool));
    }
  }
}

TEST_CASE("the shutdown deadline at its edges: 1 ns abandons at once, max() drains however long", "[sim][edges]") {
  for (const duration deadline : {duration(1ns), never}) {
    DYNAMIC_SECTION("deadline " << (deadline == never ? "max()" : "1 ns")) {
      manual_clock::reset();
      asio::io_context ioc(1);
      PoolConfig config = edge_config(ioc);
      config.request_timeout = never;
      std::optional<EdgePool> pool(std::in_place, ioc, config, loader(), handler());
      submitted slow;
      submit(*pool, Request{2h}, slow);
      run_until(ioc, manual_clock::after(1s));
      bool shut = false;
      pool->async_shutdown(deadline, [&](error_code) { shut = true; });
      run_until(ioc, manual_clock::after(1h));
      CHECK(shut == (deadline != never));  // max() still drains the two-hour request
      run_until(ioc, manual_clock::after(2h));
      CHECK(shut);
      CHECK(slow.result == (deadline == never ? error_code{} : make_error_code(errc::shutting_down)));
      pool.reset();
      run_until(ioc, manual_clock::after(1h));
      CHECK(out_of_work(ioc));
    }
  }
}

TEST_CASE("a later shutdown with an earlier deadline brings the first one forward", "[sim][edges]") {
  manual_clock::reset();
  asio::io_context ioc(1);
  PoolConfig config = edge_config(ioc);
  config.request_timeout = never;
  std::optional<EdgePool> pool(std::in_place, ioc, config, loader(), handler());
  submitted slow;
  submit(*pool, Request{never}, slow);
  run_until(ioc, manual_clock::after(1s));
  int shut = 0;
  pool->async_shutdown(never, [&](error_code) { ++shut; });
  run_until(ioc, manual_clock::after(1h));
  CHECK(shut == 0);
  pool.reset();  // asks for "now"
  run_until(ioc, manual_clock::after(1s));
  CHECK(shut == 1);
  CHECK(slow.result == make_error_code(errc::shutting_down));
  CHECK(out_of_work(ioc));
}
