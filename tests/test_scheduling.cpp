// Scheduling through a running pool: per-request deadlines wherever the
// request is (waiting for room, for a cold key's load, in the queue, in its
// handler), priorities and backpressure by level, and the options' bad
// inputs. The key queue's own rules (order, shares, the starvation bound)
// are tested without a pool in test_key_queue.cpp.

#include <coropool/pool.hpp>

#include <catch2/catch.hpp>

#include "support.hpp"

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

using namespace coropool;
using namespace coropool::test;

namespace {

SubmitOptions timeout_of(clock::duration d) {
  SubmitOptions o;
  o.timeout = d;
  return o;
}

SubmitOptions priority_of(unsigned level) {
  SubmitOptions o;
  o.priority = level;
  return o;
}

}  // namespace

TEST_CASE("a request's own timeout fires while it is queued behind a busy worker, it is never handled",
          "[scheduling][deadline]") {
  asio::io_context ioc;
  Gate gate(ioc.get_executor());
  std::vector<int> handled;
  IntPool pool(ioc, TestConfig(), scripted_loader(std::make_shared<LoadScript>()),
               [&](Model&, int request) -> asio::awaitable<int> {
                 handled.push_back(request);
                 co_await gate.pass();
                 co_return request + 1;
               });
  Outcome blocker, queued, after;
  asio::co_spawn(ioc,
                 shutdown_after(pool,
                                [&]() -> asio::awaitable<void> {
                                  co_await pool.wait_for_workers("bert");
                                  asio::co_spawn(ioc, submit_recording(pool, 1, {}, blocker), asio::detached);
                                  co_await submit_recording(pool, 2, timeout_of(30ms), queued);
                                  gate.open();
                                  co_await submit_recording(pool, 3, {}, after);
                                }),
                 asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(queued.error == errc::request_timeout);
  CHECK(queued.took >= 30ms);
  CHECK(queued.took < 1s);  // the pool's request_timeout is 30 s: its own held
  CHECK(blocker.value == 2);
  CHECK(after.value == 4);
  CHECK(handled == std::vector<int>{1, 3});
  const auto k = pool.stats().keys.at("bert");
  CHECK(k.expired_before_dispatch == 1);
  CHECK(k.expired_in_handler == 0);
  CHECK(k.timed_out == 1);
  CHECK(k.queue_time.count == 2);  // two requests were handed to a worker
}

TEST_CASE("a request's own timeout fires while it waits for room", "[scheduling][deadline]") {
  asio::io_context ioc;
  Gate gate(ioc.get_executor());
  IntPool pool(ioc, TestConfig().queue(1), scripted_loader(std::make_shared<LoadScript>()),
               [&](Model&, int request) -> asio::awaitable<int> {
                 co_await gate.pass();
                 co_return request + 1;
               });
  Outcome in_hand, in_queue, waiting;
  asio::co_spawn(ioc,
                 shutdown_after(pool,
                                [&]() -> asio::awaitable<void> {
                                  co_await pool.wait_for_workers("bert");
                                  asio::co_spawn(ioc, submit_recording(pool, 1, {}, in_hand), asio::detached);
                                  co_await pause(5ms);
                                  asio::co_spawn(ioc, submit_recording(pool, 2, {}, in_queue), asio::detached);
                                  co_await pause(5ms);
                                  CHECK(pool.queued_requests("bert") == 1);
                                  co_await submit_recording(pool, 3, timeout_of(20ms), waiting);
                                  CHECK(pool.stats().keys.at("bert").waiting_for_room == 0);
                                  gate.open();
                                }),
                 asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(waiting.error == errc::request_timeout);
  CHECK(waiting.took < 1s);
  CHECK(in_hand.value == 2);
  CHECK(in_queue.value == 3);
  CHECK(pool.stats().keys.at("bert").expired_before_dispatch == 1);
}

TEST_CASE("a request's own timeout fires while its cold key loads", "[scheduling][deadline]") {
  asio::io_context ioc;
  auto script = std::make_shared<LoadScript>();
  script->delay = 200ms;
  int handled = 0;
  IntPool pool(ioc, TestConfig(), scripted_loader(script), [&](Model&, int request) -> asio::awaitable<int> {
    ++handled;
    co_return request + 1;
  });
  Outcome cold, later;
  asio::co_spawn(ioc,
                 shutdown_after(pool,
                                [&]() -> asio::awaitable<void> {
                                  co_await submit_recording(pool, 1, timeout_of(30ms), cold);
                                  co_await submit_recording(pool, 2, {}, later);  // the load goes on for it
                                }),
                 asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(cold.error == errc::request_timeout);
  CHECK(cold.took < 200ms);  // before the load ended
  CHECK(later.value == 3);
  CHECK(handled == 1);
  CHECK(script->started == 1);
}

TEST_CASE("a request's own timeout, shorter than the pool's, ends its handler at the deadline, the worker serves on",
          "[scheduling][deadline]") {
  asio::io_context ioc;
  std::atomic<int> cancelled{0};
  IntPool pool(ioc, TestConfig(), scripted_loader(std::make_shared<LoadScript>()),
               [&](Model&, int request) -> asio::awaitable<int> {
                 if (request == 1) {
                   try {
                     co_await pause(10s);
                   } catch (const boost::system::system_error& e) {
                     if (e.code() == asio::error::operation_aborted) cancelled.fetch_add(1);
                     throw;
                   }
                 }
                 co_return request + 1;
               });
  Outcome slow, next;
  asio::co_spawn(ioc,
                 shutdown_after(pool,
                                [&]() -> asio::awaitable<void> {
                                  co_await pool.wait_for_workers("bert");
                                  co_await submit_recording(pool, 1, timeout_of(40ms), slow);
                                  co_await submit_recording(pool, 2, {}, next);
                                }),
                 asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(slow.error == errc::request_timeout);
  CHECK(slow.took >= 40ms);
  CHECK(slow.took < 5s);
  CHECK(cancelled == 1);
  CHECK(next.value == 3);
  const auto k = pool.stats().keys.at("bert");
  CHECK(k.expired_in_handler == 1);
  CHECK(k.failed == 0);  // the handler's exception after the deadline is not an answer
  CHECK(k.deaths == 0);
}

TEST_CASE("an absolute deadline holds when earlier than the timeout, and max_request_timeout caps a longer one",
          "[scheduling][deadline]") {
  asio::io_context ioc;
  PoolConfig config = TestConfig();
  config.request_timeout = 20ms;
  config.max_request_timeout = 60ms;
  IntPool pool(ioc, config, scripted_loader(std::make_shared<LoadScript>()),
               [&](Model&, int request) -> asio::awaitable<int> {
                 co_await pause(10s);
                 co_return request;
               });
  Outcome capped, absolute;
  asio::co_spawn(ioc,
                 shutdown_after(pool,
                                [&]() -> asio::awaitable<void> {
                                  co_await pool.wait_for_workers("bert");
                                  co_await submit_recording(pool, 1, timeout_of(1h), capped);
                                  SubmitOptions both = timeout_of(1h);
                                  both.deadline = clock::now() + 30ms;
                                  co_await submit_recording(pool, 2, both, absolute);
                                }),
                 asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(capped.error == errc::request_timeout);
  CHECK(capped.took >= 60ms);
  CHECK(capped.took < 5s);
  CHECK(absolute.error == errc::request_timeout);
  CHECK(absolute.took >= 30ms);
  CHECK(absolute.took < 5s);
}

TEST_CASE("bad options are refused with invalid_argument, a past deadline times out at once, and nothing else changes",
          "[scheduling]") {
  asio::io_context ioc;
  int handled = 0;
  IntPool pool(ioc, TestConfig(), scripted_loader(std::make_shared<LoadScript>()),
               [&](Model&, int request) -> asio::awaitable<int> {
                 ++handled;
                 co_return request + 1;
               });
  Outcome zero, negative, beyond, past, fine;
  asio::co_spawn(ioc,
                 shutdown_after(pool,
                                [&]() -> asio::awaitable<void> {
                                  co_await pool.wait_for_workers("bert");
                                  co_await submit_recording(pool, 1, timeout_of(clock::duration::zero()), zero);
                                  co_await submit_recording(pool, 2, timeout_of(-1s), negative);
                                  co_await submit_recording(pool, 3, priority_of(5), beyond);
                                  SubmitOptions gone;
                                  gone.deadline = clock::now() - 1ms;
                                  co_await submit_recording(pool, 4, gone, past);
                                  co_await submit_recording(pool, 5, priority_of(4), fine);
                                }),
                 asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(zero.error == errc::invalid_argument);
  CHECK(negative.error == errc::invalid_argument);
  CHECK(beyond.error == errc::invalid_argument);
  CHECK(past.error == errc::request_timeout);
  CHECK(fine.value == 6);
  CHECK(handled == 1);
  const auto stats = pool.stats();
  CHECK(stats.rejected == 3);  // refused before reaching the key
  const auto& k = stats.keys.at("bert");
  CHECK(k.submitted == 2);
  CHECK(k.timed_out == 1);
  CHECK(k.expired_before_dispatch == 1);
  CHECK(k.completed == 1);
  CHECK(k.queue_time.count == 1);
}

TEST_CASE("PoolConfig's scheduling knobs are checked", "[scheduling]") {
  asio::io_context ioc;
  auto make = [&](PoolConfig config) {
    IntPool pool(ioc, std::move(config), scripted_loader(std::make_shared<LoadScript>()), echo_handler());
  };
  auto with = [](auto change) {
    PoolConfig c = TestConfig();
    change(c);
    return c;
  };
  CHECK_THROWS_AS(make(with([](PoolConfig& c) { c.priority_weights = {}; })), boost::system::system_error);
  CHECK_THROWS_AS(make(with([](PoolConfig& c) { c.priority_weights = {4, 0}; })), boost::system::system_error);
  CHECK_THROWS_AS(make(with([](PoolConfig& c) { c.priority_weights = std::vector<unsigned>(17, 1); })),
                  boost::system::system_error);
  CHECK_THROWS_AS(make(with([](PoolConfig& c) { c.max_request_timeout = c.request_timeout / 2; })),
                  boost::system::system_error);
  CHECK_NOTHROW(make(with([](PoolConfig& c) { c.priority_weights = {1}; })));
  ioc.run();
}

TEST_CASE("a busy worker takes the highest level first, first come first within a level", "[scheduling][priority]") {
  asio::io_context ioc;
  Gate gate(ioc.get_executor());
  std::vector<int> handled;
  IntPool pool(ioc, TestConfig(), scripted_loader(std::make_shared<LoadScript>()),
               [&](Model&, int request) -> asio::awaitable<int> {
                 handled.push_back(request);
                 if (request == 0) co_await gate.pass();
                 co_return request;
               });
  // request id -> level: two lows, two criticals, one normal, submitted while the worker is busy.
  const std::vector<std::pair<int, unsigned>> submitted = {{1, 4}, {2, 4}, {3, 0}, {4, 2}, {5, 0}};
  std::vector<Outcome> outcomes(submitted.size());
  Outcome blocker;
  asio::co_spawn(ioc,
                 shutdown_after(pool,
                                [&]() -> asio::awaitable<void> {
                                  co_await pool.wait_for_workers("bert");
                                  asio::co_spawn(ioc, submit_recording(pool, 0, {}, blocker), asio::detached);
                                  co_await pause(5ms);
                                  for (std::size_t i = 0; i < submitted.size(); ++i) {
                                    asio::co_spawn(ioc,
                                                   submit_recording(pool, submitted[i].first,
                                                                    priority_of(submitted[i].second), outcomes[i]),
                                                   asio::detached);
                                  }
                                  co_await pause(5ms);
                                  const auto k = pool.stats().keys.at("bert");
                                  CHECK(k.queued_by_priority == std::vector<std::size_t>{2, 0, 1, 0, 2});
                                  gate.open();
                                  const bool done = co_await eventually([&] { return handled.size() == 6; });
                                  CHECK(done);
                                }),
                 asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(handled == std::vector<int>{0, 3, 5, 4, 1, 2});
  for (const auto& o : outcomes) CHECK(o.completions == 1);
}

TEST_CASE("try_submit of a higher level finds room in a full queue, the held-back request is still served",
          "[scheduling][priority]") {
  asio::io_context ioc;
  Gate gate(ioc.get_executor());
  std::vector<int> handled;
  IntPool pool(ioc, TestConfig().queue(2), scripted_loader(std::make_shared<LoadScript>()),
               [&](Model&, int request) -> asio::awaitable<int> {
                 handled.push_back(request);
                 if (request == 0) co_await gate.pass();
                 co_return request;
               });
  Outcome blocker, low_1, low_2, urgent, refused;
  asio::co_spawn(ioc,
                 shutdown_after(pool,
                                [&]() -> asio::awaitable<void> {
                                  co_await pool.wait_for_workers("bert");
                                  asio::co_spawn(ioc, submit_recording(pool, 0, {}, blocker), asio::detached);
                                  co_await pause(5ms);
                                  asio::co_spawn(ioc, submit_recording(pool, 1, priority_of(4), low_1), asio::detached);
                                  asio::co_spawn(ioc, submit_recording(pool, 2, priority_of(4), low_2), asio::detached);
                                  co_await pause(5ms);
                                  {
                                    auto [e, v] = co_await pool.async_try_submit("bert", 9, priority_of(4),
                                                                                 asio::as_tuple(asio::use_awaitable));
                                    refused.error = error_of(e);
                                  }
                                  asio::co_spawn(
                                      ioc,
                                      [&]() -> asio::awaitable<void> {
                                        auto [e, v] = co_await pool.async_try_submit(
                                            "bert", 3, priority_of(0), asio::as_tuple(asio::use_awaitable));
                                        urgent.error = error_of(e);
                                        urgent.value = v;
                                        ++urgent.completions;
                                      },
                                      asio::detached);
                                  co_await pause(5ms);
                                  const auto k = pool.stats().keys.at("bert");
                                  CHECK(k.held_back == 1);
                                  CHECK(k.waiting_for_room == 1);
                                  CHECK(k.queued == 2);
                                  gate.open();
                                  const bool done = co_await eventually([&] { return handled.size() == 4; });
                                  CHECK(done);
                                }),
                 asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(refused.error == errc::queue_full);  // same level as the queue's lowest: nothing to hold back
  CHECK(urgent.error == error_code{});
  CHECK(urgent.value == 3);
  CHECK(handled == std::vector<int>{0, 3, 1, 2});
  CHECK(low_1.completions == 1);
  CHECK(low_2.completions == 1);
  CHECK(low_2.value == 2);
}

TEST_CASE("a stream takes its options: a deadline until it starts, and its level", "[scheduling][stream]") {
  asio::io_context ioc;
  Gate gate(ioc.get_executor());
  auto streamer = [&](Model&, int request, StreamWriter<int>& out) -> asio::awaitable<void> {
    co_await out.write(request);
  };
  IntPool pool(
      ioc, TestConfig(), scripted_loader(std::make_shared<LoadScript>()),
      [&](Model&, int request) -> asio::awaitable<int> {
        co_await gate.pass();
        co_return request;
      },
      streamer);
  error_code stream_end;
  std::vector<int> chunks;
  asio::co_spawn(ioc,
                 shutdown_after(pool,
                                [&]() -> asio::awaitable<void> {
                                  co_await pool.wait_for_workers("bert");
                                  asio::co_spawn(ioc, pool.submit("bert", 0), asio::detached);
                                  co_await pause(5ms);
                                  SubmitOptions soon = timeout_of(20ms);
                                  soon.priority = 0;
                                  auto stream = pool.submit_stream("bert", 7, soon);
                                  try {
                                    while (auto chunk = co_await stream.next()) chunks.push_back(*chunk);
                                  } catch (const boost::system::system_error& e) {
                                    stream_end = e.code();
                                  }
                                  gate.open();
                                }),
                 asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(stream_end == errc::request_timeout);
  CHECK(chunks.empty());
}

namespace {

/// Requests coalesce by their value, except negative ones.
IntPool::Options coalescing(PoolConfig config) {
  IntPool::Options options(std::move(config));
  options.coalesce_key = [](const int& request) -> std::optional<std::string> {
    if (request < 0) return std::nullopt;
    if (request == 666) throw model_error("no identity for the beast");
    return std::to_string(request);
  };
  return options;
}

}  // namespace

TEST_CASE("1,000 identical concurrent submits run the handler once, and every caller gets the answer",
          "[scheduling][coalescing]") {
  asio::io_context ioc;
  Gate gate(ioc.get_executor());
  std::atomic<int> runs{0};
  IntPool pool(ioc, coalescing(TestConfig().queue(4)), scripted_loader(std::make_shared<LoadScript>()),
               [&](Model&, int request) -> asio::awaitable<int> {
                 runs.fetch_add(1);
                 co_await gate.pass();
                 co_return request * 2;
               });
  constexpr int callers = 1000;
  std::vector<Outcome> outcomes(callers);
  asio::co_spawn(ioc,
                 shutdown_after(pool,
                                [&]() -> asio::awaitable<void> {
                                  co_await pool.wait_for_workers("bert");
                                  for (auto& o : outcomes) {
                                    asio::co_spawn(ioc, submit_recording(pool, 21, {}, o), asio::detached);
                                  }
                                  co_await pause(20ms);
                                  const auto k = pool.stats().keys.at("bert");
                                  CHECK(k.coalesced == callers - 1);
                                  CHECK(k.waiting_for_room == 0);  // one place, in a queue of 4
                                  gate.open();
                                  const bool done = co_await eventually([&] {
                                    return std::all_of(outcomes.begin(), outcomes.end(),
                                                       [](const Outcome& o) { return o.completions == 1; });
                                  });
                                  CHECK(done);
                                }),
                 asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(runs == 1);
  for (const auto& o : outcomes) {
    CHECK(o.completions == 1);
    CHECK(o.value == 42);
  }
  const auto k = pool.stats().keys.at("bert");
  CHECK(k.submitted == callers);
  CHECK(k.completed == callers);
  CHECK(k.latency.count == callers);
}

TEST_CASE("a coalesced caller cancelling detaches only itself, the last one leaving withdraws the run",
          "[scheduling][coalescing]") {
  asio::io_context ioc;
  Gate gate(ioc.get_executor());
  std::vector<int> handled;
  IntPool pool(ioc, coalescing(TestConfig()), scripted_loader(std::make_shared<LoadScript>()),
               [&](Model&, int request) -> asio::awaitable<int> {
                 handled.push_back(request);
                 if (request == 0) co_await gate.pass();
                 co_return request;
               });
  asio::cancellation_signal leave_a, leave_b, leave_c, leave_d;
  error_code a, b, c, d;
  int b_value = 0;
  auto submit_cancellable = [&](int request, asio::cancellation_signal& signal, error_code& out, int* value) {
    pool.async_submit("bert", request,
                      asio::bind_cancellation_slot(signal.slot(), [&out, value](std::exception_ptr e, int v) {
                        out = error_of(e);
                        if (value) *value = v;
                      }));
  };
  asio::co_spawn(ioc,
                 shutdown_after(pool,
                                [&]() -> asio::awaitable<void> {
                                  co_await pool.wait_for_workers("bert");
                                  asio::co_spawn(ioc, pool.submit("bert", 0), asio::detached);  // busy
                                  co_await pause(5ms);
                                  submit_cancellable(7, leave_a, a, nullptr);
                                  submit_cancellable(7, leave_b, b, &b_value);
                                  submit_cancellable(8, leave_c, c, nullptr);
                                  submit_cancellable(8, leave_d, d, nullptr);
                                  co_await pause(5ms);
                                  leave_a.emit(asio::cancellation_type::terminal);  // b still waits for 7
                                  leave_c.emit(asio::cancellation_type::terminal);
                                  leave_d.emit(asio::cancellation_type::terminal);  // nobody waits for 8
                                  co_await pause(5ms);
                                  CHECK(pool.queued_requests("bert") == 1);
                                  gate.open();
                                  const bool done = co_await eventually([&] { return b_value == 7; });
                                  CHECK(done);
                                }),
                 asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(a == asio::error::operation_aborted);
  CHECK(c == asio::error::operation_aborted);
  CHECK(d == asio::error::operation_aborted);
  CHECK(b == error_code{});
  CHECK(handled == std::vector<int>{0, 7});  // 8 was withdrawn before any worker took it
  CHECK(pool.stats().keys.at("bert").cancelled == 3);
}

TEST_CASE("an exception reaches every coalesced caller and is not remembered", "[scheduling][coalescing]") {
  asio::io_context ioc;
  Gate gate(ioc.get_executor());
  std::atomic<int> runs{0};
  IntPool pool(ioc, coalescing(TestConfig()), scripted_loader(std::make_shared<LoadScript>()),
               [&](Model&, int request) -> asio::awaitable<int> {
                 const int run = runs.fetch_add(1);
                 co_await gate.pass();
                 if (run == 0) throw model_error("first run fails");
                 co_return request;
               });
  std::vector<std::string> errors;
  int later = 0;
  asio::co_spawn(ioc,
                 shutdown_after(pool,
                                [&]() -> asio::awaitable<void> {
                                  co_await pool.wait_for_workers("bert");
                                  for (int i = 0; i < 3; ++i) {
                                    asio::co_spawn(
                                        ioc,
                                        [&]() -> asio::awaitable<void> {
                                          try {
                                            co_await pool.submit("bert", 5);
                                          } catch (const model_error& e) {
                                            errors.push_back(e.what());
                                          }
                                        },
                                        asio::detached);
                                  }
                                  co_await pause(5ms);
                                  gate.open();
                                  const bool done = co_await eventually([&] { return errors.size() == 3; });
                                  CHECK(done);
                                  later = co_await pool.submit("bert", 5);  // runs again
                                }),
                 asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(errors == std::vector<std::string>(3, "first run fails"));
  CHECK(later == 5);
  CHECK(runs == 2);
  const auto k = pool.stats().keys.at("bert");
  CHECK(k.failed == 3);
  CHECK(k.completed == 1);
}

TEST_CASE(
    "distinct identities are never merged, many sharing a hash bucket, a throwing coalesce_key fails only its "
    "caller, nullopt never coalesces",
    "[scheduling][coalescing]") {
  asio::io_context ioc;
  Gate gate(ioc.get_executor());
  std::vector<int> handled;
  IntPool pool(ioc, coalescing(TestConfig().queue(1000)), scripted_loader(std::make_shared<LoadScript>()),
               [&](Model&, int request) -> asio::awaitable<int> {
                 handled.push_back(request);
                 co_await gate.pass();
                 co_return request;
               });
  constexpr int distinct = 300;  // far more identities than the map's first buckets
  std::vector<Outcome> outcomes(distinct), unnamed(2);
  std::string beast_what;
  asio::co_spawn(ioc,
                 shutdown_after(pool,
                                [&]() -> asio::awaitable<void> {
                                  co_await pool.wait_for_workers("bert");
                                  for (int i = 0; i < distinct; ++i) {
                                    asio::co_spawn(ioc, submit_recording(pool, i, {}, outcomes[i]), asio::detached);
                                  }
                                  for (auto& o : unnamed) {
                                    asio::co_spawn(ioc, submit_recording(pool, -1, {}, o), asio::detached);
                                  }
                                  try {
                                    co_await pool.submit("bert", 666);
                                  } catch (const model_error& e) {
                                    beast_what = e.what();
                                  }
                                  co_await pause(5ms);
                                  gate.open();
                                  const bool done = co_await eventually([&] { return handled.size() == distinct + 2; });
                                  CHECK(done);
                                }),
                 asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(beast_what == "no identity for the beast");
  for (int i = 0; i < distinct; ++i) CHECK(outcomes[i].value == i);
  for (const auto& o : unnamed) CHECK(o.value == -1);
  CHECK(handled.size() == distinct + 2);
  const auto stats = pool.stats();
  CHECK(stats.keys.at("bert").coalesced == 0);
  CHECK(stats.rejected == 1);  // the caller whose identity threw
}

TEST_CASE("each coalesced caller keeps its own deadline, the run lives for the latest", "[scheduling][coalescing]") {
  asio::io_context ioc;
  Gate gate(ioc.get_executor());
  std::atomic<int> runs{0};
  IntPool pool(ioc, coalescing(TestConfig()), scripted_loader(std::make_shared<LoadScript>()),
               [&](Model&, int request) -> asio::awaitable<int> {
                 if (request != 0) runs.fetch_add(1);
                 co_await gate.pass();
                 co_return request;
               });
  Outcome hurried, patient;
  asio::co_spawn(ioc,
                 shutdown_after(pool,
                                [&]() -> asio::awaitable<void> {
                                  co_await pool.wait_for_workers("bert");
                                  asio::co_spawn(ioc, pool.submit("bert", 0), asio::detached);  // busy
                                  co_await pause(5ms);
                                  asio::co_spawn(ioc, submit_recording(pool, 3, timeout_of(20ms), hurried),
                                                 asio::detached);
                                  asio::co_spawn(ioc, submit_recording(pool, 3, {}, patient), asio::detached);
                                  co_await pause(60ms);
                                  CHECK(hurried.completions == 1);
                                  gate.open();
                                  const bool done = co_await eventually([&] { return patient.completions == 1; });
                                  CHECK(done);
                                }),
                 asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(hurried.error == errc::request_timeout);
  CHECK(patient.value == 3);
  CHECK(runs == 1);
}
