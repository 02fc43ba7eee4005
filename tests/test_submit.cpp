#include <coropool/pool.hpp>

#include <catch2/catch.hpp>

#include "support.hpp"

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/experimental/parallel_group.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_future.hpp>

#include <array>
#include <future>
#include <optional>
#include <random>
#include <set>
#include <span>
#include <stdexcept>
#include <string>

#include <spdlog/sinks/null_sink.h>

using namespace coropool;
using namespace coropool::test;

namespace {

/// Counts what handle() saw, per request value.
struct HandleLog {
  std::atomic<int> calls{0};
  std::atomic<int> in_flight{0};
  std::atomic<int> max_in_flight{0};
  std::mutex mutex;
  std::multiset<int> seen;

  void enter(int request) {
    calls.fetch_add(1);
    const int now = in_flight.fetch_add(1) + 1;
    int prev = max_in_flight.load();
    while (prev < now && !max_in_flight.compare_exchange_weak(prev, now)) {
    }
    std::lock_guard lock(mutex);
    seen.insert(request);
  }
  void leave() { in_flight.fetch_sub(1); }
};

}  // namespace

TEST_CASE("submit returns the handler's answer, for every completion token", "[submit]") {
  asio::io_context ioc;
  auto script = std::make_shared<LoadScript>();
  IntPool pool(ioc, TestConfig().workers(2, 2), scripted_loader(script), echo_handler());

  std::vector<int> answers;
  asio::co_spawn(ioc,
                 shutdown_after(pool,
                                [&]() -> asio::awaitable<void> {
                                  answers.push_back(co_await pool.submit("bert", 1));
                                  auto [e, v] =
                                      co_await pool.async_submit("bert", 2, asio::as_tuple(asio::use_awaitable));
                                  CHECK_FALSE(e);
                                  answers.push_back(v);
                                  auto deferred_submit = pool.async_submit("bert", 3, asio::deferred);
                                  answers.push_back(co_await std::move(deferred_submit)(asio::use_awaitable));
                                  answers.push_back(co_await pool.try_submit("bert", 4));
                                  // A plain callback, woken on its own executor.
                                  asio::steady_timer done(co_await asio::this_coro::executor,
                                                          asio::steady_timer::time_point::max());
                                  pool.async_submit("bert", 5, [&](std::exception_ptr err, int value) {
                                    CHECK_FALSE(err);
                                    answers.push_back(value);
                                    done.cancel();
                                  });
                                  co_await done.async_wait(asio::as_tuple(asio::use_awaitable));
                                }),
                 asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(answers == std::vector<int>{2, 3, 4, 5, 6});
  CHECK(script->started == 2);
}

TEST_CASE("submit with use_future from a thread outside the pool", "[submit]") {
  asio::io_context ioc;
  auto guard = asio::make_work_guard(ioc);
  std::thread runner([&] { ioc.run(); });
  {
    IntPool pool(ioc, TestConfig(), scripted_loader(std::make_shared<LoadScript>()), echo_handler());
    std::future<int> answer = pool.async_submit("bert", 41, asio::use_future);
    CHECK(answer.get() == 42);
    pool.async_shutdown(1s, asio::use_future).get();
  }
  guard.reset();
  runner.join();
}

TEST_CASE("the handler's exception reaches the caller unchanged and the worker serves on", "[submit]") {
  asio::io_context ioc;
  auto script = std::make_shared<LoadScript>();
  IntPool pool(ioc, TestConfig(), scripted_loader(script), [](Model&, int request) -> asio::awaitable<int> {
    if (request < 0) throw model_error("negative input");
    co_return request + 1;
  });
  int after = 0;
  std::string message;
  std::exception_ptr callback_error;
  asio::co_spawn(ioc,
                 shutdown_after(pool,
                                [&]() -> asio::awaitable<void> {
                                  try {
                                    co_await pool.submit("bert", -1);
                                  } catch (const model_error& e) {
                                    message = e.what();
                                  }
                                  auto [e, v] =
                                      co_await pool.async_submit("bert", -2, asio::as_tuple(asio::use_awaitable));
                                  callback_error = e;
                                  after = co_await pool.submit("bert", 7);
                                }),
                 asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(message == "negative input");
  REQUIRE(callback_error);
  CHECK_THROWS_AS(std::rethrow_exception(callback_error), model_error);
  CHECK(after == 8);
  CHECK(script->started == 1);  // the same worker served all three
}

TEST_CASE("a callback that throws drops none of the answers delivered with it", "[submit]") {
  // A worker delivers the answers of a burst together (one function per
  // executor); the callback that throws escapes run(), as any Asio handler's
  // exception does, and the answers after it still arrive.
  asio::io_context ioc(1);
  IntPool pool(ioc, TestConfig(), scripted_loader(std::make_shared<LoadScript>()), echo_handler());
  constexpr int submitted = 10;
  std::vector<int> answers;
  pool.async_wait_for_workers("bert", 5s, [&](error_code ec) {
    REQUIRE_FALSE(ec);
    for (int i = 0; i < submitted; ++i) {
      pool.async_submit("bert", i, [&, i](std::exception_ptr e, int value) {
        CHECK_FALSE(e);
        answers.push_back(value);
        if (answers.size() == submitted) pool.async_shutdown(1s, asio::detached);
        if (i % 3 == 0) throw model_error("callback " + std::to_string(i));
      });
    }
  });
  // A dropped answer would leave the pool running, and the run would end at its limit.
  const int escaped = run_counting_escapes<model_error>(ioc, 10s);
  CHECK(escaped == 4);  // callbacks 0, 3, 6 and 9
  CHECK(answers == std::vector<int>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10});
}

TEST_CASE("a full queue holds callers back, and try_submit fails with queue_full", "[submit]") {
  asio::io_context ioc;
  Gate gate(ioc.get_executor());
  HandleLog log;
  IntPool pool(ioc, TestConfig().queue(4), scripted_loader(std::make_shared<LoadScript>()),
               [&](Model&, int request) -> asio::awaitable<int> {
                 log.enter(request);
                 co_await gate.pass();
                 log.leave();
                 co_return request + 1;
               });
  constexpr int submitted = 20;
  std::atomic<int> answered{0};
  std::size_t most_queued = 0;
  error_code try_error;
  asio::co_spawn(
      ioc,
      shutdown_after(pool,
                     [&]() -> asio::awaitable<void> {
                       co_await pool.wait_for_workers("bert", 5s);
                       for (int i = 0; i < submitted; ++i) {
                         pool.async_submit("bert", i, [&](std::exception_ptr e, int) {
                           if (!e) answered.fetch_add(1);
                         });
                       }
                       for (int i = 0; i < 5; ++i) {  // let the submits settle: 1 in flight, 4 queued, 15 waiting
                         co_await pause(2ms);
                         most_queued = std::max(most_queued, pool.queued_requests("bert"));
                       }
                       auto [e, v] = co_await pool.async_try_submit("bert", 99, asio::as_tuple(asio::use_awaitable));
                       try_error = error_of(e);
                       CHECK(log.calls == 1);
                       gate.open();
                       while (answered < submitted) {
                         most_queued = std::max(most_queued, pool.queued_requests("bert"));
                         co_await pause(1ms);
                       }
                     }),
      asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(most_queued == 4);
  CHECK(try_error == errc::queue_full);
  CHECK(answered == submitted);
  CHECK(log.calls == submitted);
  CHECK(log.max_in_flight == 1);
  // The backlog was served in submission order.
  CHECK(log.seen.size() == submitted);
}

TEST_CASE(
    "a request not answered within request_timeout fails at its deadline, its handler is cancelled then, and "
    "the late answer is discarded",
    "[submit]") {
  asio::io_context ioc;
  PoolConfig config = TestConfig().workers(2, 2);
  config.request_timeout = 30ms;
  std::atomic<int> finished_late{0};
  std::atomic<int> saw_cancellation{0};
  IntPool pool(ioc, config, scripted_loader(std::make_shared<LoadScript>()),
               [&](Model&, int request) -> asio::awaitable<int> {
                 if (request == 0) {
                   // Told at the deadline, this handler still answers: late, and discarded.
                   asio::steady_timer t(co_await asio::this_coro::executor, 100ms);
                   auto [ec] = co_await t.async_wait(asio::as_tuple(asio::use_awaitable));
                   auto state = co_await asio::this_coro::cancellation_state;
                   if (ec == asio::error::operation_aborted && state.cancelled() != asio::cancellation_type::none) {
                     saw_cancellation.fetch_add(1);
                   }
                   finished_late.fetch_add(1);
                 }
                 co_return request + 1;
               });
  error_code slow_error;
  int answer = 0;
  std::chrono::steady_clock::duration took{};
  asio::co_spawn(ioc,
                 shutdown_after(pool,
                                [&]() -> asio::awaitable<void> {
                                  co_await pool.wait_for_workers("bert", 5s);
                                  const auto start = std::chrono::steady_clock::now();
                                  auto [e, v] =
                                      co_await pool.async_submit("bert", 0, asio::as_tuple(asio::use_awaitable));
                                  took = std::chrono::steady_clock::now() - start;
                                  slow_error = error_of(e);
                                  answer = co_await pool.submit("bert", 1);
                                }),
                 asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(slow_error == errc::request_timeout);
  CHECK(took < 100ms);  // not the handler's end: its own deadline
  CHECK(finished_late == 1);
  CHECK(saw_cancellation == 1);
  CHECK(answer == 2);  // the worker served on
  const auto k = pool.stats().keys.at("bert");
  CHECK(k.timed_out == 1);
  CHECK(k.expired_in_handler == 1);
  CHECK(k.expired_before_dispatch == 0);
  CHECK(k.completed == 1);
  CHECK(k.deaths == 0);
}

TEST_CASE("cancelling a queued request completes it at once and it is never handled", "[submit]") {
  asio::io_context ioc;
  Gate gate(ioc.get_executor());
  HandleLog log;
  IntPool pool(ioc, TestConfig(), scripted_loader(std::make_shared<LoadScript>()),
               [&](Model&, int request) -> asio::awaitable<int> {
                 log.enter(request);
                 co_await gate.pass();
                 log.leave();
                 co_return request + 1;
               });
  error_code queued_error;
  error_code in_flight_error;
  std::exception_ptr first_error;
  int first_answer = 0;
  asio::co_spawn(
      ioc,
      shutdown_after(pool,
                     [&]() -> asio::awaitable<void> {
                       co_await pool.wait_for_workers("bert", 5s);
                       asio::cancellation_signal in_flight_signal;
                       asio::cancellation_signal queued_signal;
                       std::optional<std::exception_ptr> first;
                       std::optional<std::exception_ptr> second;
                       std::optional<std::exception_ptr> third;
                       pool.async_submit("bert", 1,
                                         asio::bind_cancellation_slot(in_flight_signal.slot(),
                                                                      [&](std::exception_ptr e, int) { second = e; }));
                       pool.async_submit("bert", 2,
                                         asio::bind_cancellation_slot(queued_signal.slot(),
                                                                      [&](std::exception_ptr e, int) { third = e; }));
                       pool.async_submit("bert", 3, [&](std::exception_ptr e, int v) {
                         first = e;
                         first_answer = v;
                       });
                       co_await pause(5ms);
                       REQUIRE(log.calls == 1);  // 1 in flight, 2 and 3 queued

                       queued_signal.emit(asio::cancellation_type::terminal);
                       co_await pause(1ms);
                       REQUIRE(third.has_value());  // at once, while 1 still holds the worker
                       queued_error = error_of(*third);

                       in_flight_signal.emit(asio::cancellation_type::terminal);
                       co_await pause(1ms);
                       REQUIRE(second.has_value());
                       in_flight_error = error_of(*second);

                       gate.open();
                       while (!first) co_await pause(1ms);
                       first_error = *first;
                     }),
      asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(queued_error == asio::error::operation_aborted);
  CHECK(in_flight_error == asio::error::operation_aborted);
  CHECK_FALSE(first_error);
  CHECK(first_answer == 4);
  CHECK(log.seen == std::multiset<int>{1, 3});  // 2 never reached handle
}

TEST_CASE("errors before queueing", "[submit]") {
  asio::io_context ioc;
  auto script = std::make_shared<LoadScript>();
  script->fail = true;
  IntPool pool(ioc, TestConfig().workers(2, 2), scripted_loader(script), echo_handler());
  error_code empty_key;
  int spawn_failures = 0;
  std::string cause;
  error_code after_shutdown;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        auto [e, v] = co_await pool.async_submit("", 1, asio::as_tuple(asio::use_awaitable));
        empty_key = error_of(e);
        // Ten submits on a cold key whose loads fail: one wave, every caller gets its spawn_error.
        std::vector<std::exception_ptr> errors(10);
        std::atomic<int> done{0};
        for (auto& slot : errors) {
          pool.async_submit("bert", 1, [&](std::exception_ptr err, int) {
            slot = err;
            done.fetch_add(1);
          });
        }
        while (done < 10) co_await pause(1ms);
        for (auto& err : errors) {
          try {
            std::rethrow_exception(err);
          } catch (const spawn_error& failure) {
            ++spawn_failures;
            cause = failure.what();
          } catch (...) {
          }
        }
        co_await pool.async_shutdown(1s, asio::use_awaitable);
        auto [e2, v2] = co_await pool.async_submit("bert", 1, asio::as_tuple(asio::use_awaitable));
        after_shutdown = error_of(e2);
      },
      asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(empty_key == errc::invalid_argument);
  CHECK(spawn_failures == 10);
  CHECK(script->started == 2);
  CHECK_THAT(cause, Catch::Contains("corrupt"));
  CHECK(after_shutdown == errc::shutting_down);
}

TEST_CASE("a cold burst loads cold_start_workers models, and scale-up adds one at a time", "[submit]") {
  asio::io_context ioc;
  auto script = std::make_shared<LoadScript>();
  std::atomic<int> loads_in_flight{0};
  std::atomic<int> most_loads_after_wave{0};
  std::atomic<bool> wave_done{false};
  auto counting_loader = [&, inner = scripted_loader(script)](const std::string& key) -> asio::awaitable<Model> {
    const int now = loads_in_flight.fetch_add(1) + 1;
    if (wave_done) most_loads_after_wave = std::max(most_loads_after_wave.load(), now);
    Model m = co_await inner(key);
    loads_in_flight.fetch_sub(1);
    co_return m;
  };
  auto slow_handler = [](Model&, int request) -> asio::awaitable<int> {
    co_await pause(1ms);
    co_return request + 1;
  };

  SECTION("a cold burst of 1,000 submits") {
    IntPool pool(ioc, TestConfig().workers(2, 2).queue(1000), counting_loader, slow_handler);
    std::atomic<int> answered{0};
    for (int i = 0; i < 1000; ++i) {
      pool.async_submit("bert", i, [&, i](std::exception_ptr e, int v) {
        if (!e && v == i + 1) answered.fetch_add(1);
        if (answered == 1000) pool.async_shutdown(1s, asio::detached);
      });
    }
    REQUIRE(run_until_idle(ioc, 2));
    CHECK(answered == 1000);
    CHECK(script->started == 2);
  }

  SECTION("busy workers grow to max_workers_per_key") {
    IntPool pool(ioc, TestConfig().workers(1, 3).queue(1000), counting_loader, slow_handler);
    std::atomic<int> answered{0};
    asio::co_spawn(
        ioc,
        [&]() -> asio::awaitable<void> {
          co_await pool.wait_for_workers("bert", 5s);
          wave_done = true;
          for (int i = 0; i < 600; ++i) {
            pool.async_submit("bert", i, [&](std::exception_ptr e, int) {
              if (!e) answered.fetch_add(1);
            });
          }
          while (answered < 600) {
            CHECK(pool.live_worker_count("bert") <= 3);
            co_await pause(1ms);
          }
          co_await pool.async_shutdown(1s, asio::use_awaitable);
        },
        asio::detached);
    REQUIRE(run_until_idle(ioc, 1));
    CHECK(answered == 600);
    CHECK(script->started == 3);
    CHECK(most_loads_after_wave == 1);  // one at a time
  }
}

TEST_CASE("shutdown under load answers or fails every request, none lost", "[submit]") {
  asio::io_context ioc;
  IntPool pool(ioc, TestConfig().workers(2, 2).queue(50), scripted_loader(std::make_shared<LoadScript>()),
               [](Model&, int request) -> asio::awaitable<int> {
                 co_await pause(2ms);
                 co_return request + 1;
               });
  constexpr int submitted = 300;
  std::atomic<int> answered{0}, shut_out{0}, other{0};
  auto count = [&](std::exception_ptr e, int) {
    if (!e) {
      answered.fetch_add(1);
    } else if (error_of(e) == errc::shutting_down) {
      shut_out.fetch_add(1);
    } else {
      other.fetch_add(1);
    }
  };
  bool shutdown_completed = false;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        co_await pool.wait_for_workers("bert", 5s);
        for (int i = 0; i < submitted; ++i) pool.async_submit("bert", i, count);
        co_await pause(10ms);
        co_await pool.async_shutdown(40ms, asio::use_awaitable);
        shutdown_completed = true;
        CHECK(pool.live_worker_count("bert") == 0);
      },
      asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(shutdown_completed);
  CHECK(answered + shut_out == submitted);
  CHECK(other == 0);
  CHECK(answered > 0);  // the queue drained until the deadline...
  CHECK(shut_out > 0);  // ...and what it could not serve failed, not dropped
}

TEST_CASE("a pool whose context is destroyed with requests queued leaks nothing", "[submit]") {
  auto script = std::make_shared<LoadScript>();
  std::atomic<int> completed{0};
  {
    asio::io_context ioc;
    IntPool pool(ioc, TestConfig().queue(10), scripted_loader(script), [](Model&, int) -> asio::awaitable<int> {
      co_await pause(1h);
      co_return 0;
    });
    for (int i = 0; i < 5; ++i) pool.async_submit("bert", i, [&](std::exception_ptr, int) { completed.fetch_add(1); });
    ioc.run_for(50ms);  // loaded, one request in flight, four queued, the worker then parks on nothing
    // The context dies first here (its owner's choice); LeakSanitizer checks what is left.
  }
  CHECK(script->started == 1);
}

TEST_CASE("offload runs blocking code on the compute executor and comes back", "[submit]") {
  asio::io_context ioc;
  const auto io_thread = std::this_thread::get_id();
  std::thread::id compute_thread;
  PoolConfig config = TestConfig();
  std::optional<IntPool> pool;
  pool.emplace(ioc, config, scripted_loader(std::make_shared<LoadScript>()),
               [&](Model&, int request) -> asio::awaitable<int> {
                 const int doubled = co_await offload(pool->compute_executor(), [&] {
                   compute_thread = std::this_thread::get_id();
                   return request * 2;
                 });
                 CHECK(std::this_thread::get_id() == io_thread);
                 co_await offload(pool->compute_executor(), [] {});
                 co_return doubled;
               });
  int answer = 0;
  std::string thrown;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        answer = co_await pool->submit("bert", 21);
        try {
          co_await offload(pool->compute_executor(), []() -> int { throw model_error("no GPU"); });
        } catch (const model_error& e) {
          thrown = e.what();
        }
        co_await pool->async_shutdown(1s, asio::use_awaitable);
      },
      asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(answer == 42);
  CHECK(compute_thread != io_thread);
  CHECK(compute_thread != std::thread::id());
  CHECK(thrown == "no GPU");
}

namespace {

#if defined(__SANITIZE_THREAD__)
constexpr int stress_requests = 40'000;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
constexpr int stress_requests = 100'000;
#else
constexpr int stress_requests = 1'000'000;
#endif
#elif defined(__SANITIZE_ADDRESS__)
constexpr int stress_requests = 100'000;
#else
constexpr int stress_requests = 1'000'000;
#endif

/// How each request of the stress test is meant to go, by its number.
enum class plan { answer, throws, cancelled, slow, blocks };

/// Requests from here on are the shared questions of coalesced callers: plain answers.
constexpr int coalesce_base = 100'000'000;

plan plan_of(int request, bool with_deaths) {
  if (request >= coalesce_base) return plan::answer;
  if (request % 20 == 0) return plan::throws;                   // 5 %
  if (request % 20 == 1) return plan::cancelled;                // 5 %
  if (request % 4000 == 2) return plan::slow;                   // outlives its request_timeout
  if (with_deaths && request % 5000 == 3) return plan::blocks;  // holds its thread: the worker is declared dead
  return plan::answer;
}

constexpr int stress_keys = 4;

/// What a batch holding `request` does to all of it: throw as a whole, or return a result too few.
enum class batch_fault { none, throws, short_result };

batch_fault batch_fault_of(int request) {
  if (request % 997 == 5) return batch_fault::throws;
  if (request % 1999 == 11) return batch_fault::short_result;
  return batch_fault::none;
}

/// Whether `error` is what a batch that failed as a whole gives each of its callers.
bool is_batch_failure(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const model_error& e) {
    return std::string(e.what()) == "batch";
  } catch (const std::logic_error& e) {
    return std::string(e.what()).starts_with("coropool: the batch handler returned");
  } catch (...) {
  }
  return false;
}

/// How callers' requests ended, by key: each caller's outcome counted once.
struct KeyOutcomes {
  std::atomic<std::uint64_t> answered{0}, thrown{0}, cancelled{0}, timed_out{0}, lost{0}, refused{0}, shut_out{0};
};

struct Outcomes {
  explicit Outcomes(int n) : completions(static_cast<std::size_t>(n)) {}
  std::vector<std::atomic<std::uint8_t>> completions;
  std::array<KeyOutcomes, stress_keys> by_key;
  std::atomic<int> wrong{0};
  std::atomic<int> blocked{0};  // requests whose handler blocked its thread
  std::atomic<int> slow{0};     // requests whose handler outlived their deadline
  std::atomic<int> slow_wrong{0};
  std::atomic<int> clients_done{0};

  std::uint64_t total(std::atomic<std::uint64_t> KeyOutcomes::*field) const {
    std::uint64_t sum = 0;
    for (const auto& k : by_key) sum += (k.*field).load();
    return sum;
  }
};

struct StressOptions {
  int requests = stress_requests;
  int clients = 256;
  std::size_t capacity = 100;
  bool deaths = false;              // some handlers block their thread past health_timeout
  bool shutdown_at_random = false;  // async_shutdown while the clients still submit
  // Every request at a random priority level; 10 % with a deadline of their
  // own of up to 2 ms; 10 % asking one of 32 shared questions, coalesced.
  bool scheduling = true;
  // A batch handler (batches of up to 8, 200 us of delay): per-item throws
  // as planned, and some batches that throw as a whole or return a result
  // too few, failing every caller in them (see batch_fault_of).
  bool batching = false;

  int slow_count() const { return (requests - 2 + 3999) / 4000; }  // plan_of: request % 4000 == 2
};

/// One client: submits its share in a closed loop. A request planned to be
/// cancelled races a timer of random length in a parallel group, which,
/// unlike `||`, reports the result of both operations: the pool's
/// completion is counted whichever finished first.
asio::awaitable<void> stress_client(IntPool& pool, Outcomes& out, const StressOptions& options, int first,
                                    unsigned seed) {
  std::minstd_rand rng(seed);
  const std::string keys[stress_keys] = {"k0", "k1", "k2", "k3"};
  asio::steady_timer timer(co_await asio::this_coro::executor);
  for (int i = first; i < options.requests; i += options.clients) {
    const std::size_t key = rng() % stress_keys;
    const plan p = plan_of(i, options.deaths);
    int request = i;
    SubmitOptions so;
    if (options.scheduling) {
      so.priority = static_cast<unsigned>(rng() % 5);
      if (p == plan::answer && i % 10 == 4) so.timeout = std::chrono::microseconds(1 + rng() % 2000);
      if (p == plan::answer && i % 10 == 7) request = coalesce_base + i % 32;
    }
    std::exception_ptr error;
    int value = 0;
    if (p == plan::cancelled) {
      timer.expires_after(std::chrono::microseconds(rng() % 200));
      auto [order, e, v, timer_ec] =
          co_await asio::experimental::make_parallel_group(pool.async_submit(keys[key], request, so, asio::deferred),
                                                           timer.async_wait(asio::deferred))
              .async_wait(asio::experimental::wait_for_one(), asio::use_awaitable);
      error = e;
      value = v;
    } else {
      std::tie(error, value) = co_await pool.async_submit(keys[key], request, so, asio::as_tuple(asio::use_awaitable));
    }
    out.completions[static_cast<std::size_t>(i)].fetch_add(1);
    KeyOutcomes& k = out.by_key[key];
    // A request whose handler blocks its thread may end any of these ways: its worker declared
    // dead (worker_lost), the key's timer (request_timeout), or, when what would have ended it
    // waits behind the blocked thread, its own answer. Exactly once is what is checked.
    if (p == plan::blocks) out.blocked.fetch_add(1);
    if (p == plan::slow) {
      // It outlives its deadline: it times out, or its worker is declared dead first, when
      // blocked threads hold back the worker's pong past health_timeout (with deaths only);
      // or it never starts: refused by an open breaker, or by a shutdown.
      const error_code ec = error_of(error);
      out.slow.fetch_add(1);
      // With batching, a batch that fails as a whole takes it along before it gets that far.
      if (!(ec == errc::request_timeout || ec == errc::circuit_open || (options.deaths && ec == errc::worker_lost) ||
            (options.shutdown_at_random && ec == errc::shutting_down) ||
            (options.batching && error && is_batch_failure(error)))) {
        out.slow_wrong.fetch_add(1);
      }
    }
    if (!error) {
      if (value == request + 1 && p != plan::throws && p != plan::slow) {
        k.answered.fetch_add(1);
      } else {
        out.wrong.fetch_add(1);
      }
      continue;
    }
    const error_code ec = error_of(error);
    if (ec == errc::request_timeout) {
      k.timed_out.fetch_add(1);
    } else if (ec == errc::worker_lost) {  // its worker was stopped by a restart's or the health sweep's hand
      k.lost.fetch_add(1);
    } else if (ec == errc::circuit_open) {
      k.refused.fetch_add(1);
    } else if (ec == errc::shutting_down && options.shutdown_at_random) {
      k.shut_out.fetch_add(1);
    } else if (ec == asio::error::operation_aborted && p == plan::cancelled) {
      k.cancelled.fetch_add(1);
    } else if (options.batching && ec == errc::invalid_argument && is_batch_failure(error)) {
      k.thrown.fetch_add(1);  // its batch failed as a whole: every caller in it gets that
    } else if (p == plan::throws && ec == errc::invalid_argument) {  // error_of's mark for a non-pool exception
      try {
        std::rethrow_exception(error);
      } catch (const model_error&) {
        k.thrown.fetch_add(1);
      } catch (...) {
        out.wrong.fetch_add(1);
      }
    } else {
      out.wrong.fetch_add(1);
    }
  }
  out.clients_done.fetch_add(1);
}

/// Runs the exactly-once stress on `ex` (whose context `run` runs to the
/// end), then checks every caller's outcome and the counters, key by key.
template <class Executor, class Run>
void run_stress(const Executor& ex, Run run, const StressOptions& options) {
  PoolConfig config = TestConfig().workers(2, 4).queue(options.capacity);
  config.request_timeout = 200ms;
  // Lifecycle running throughout: health pings, idle eviction, scale-down and restarts (below).
  config.health_interval = 10ms;
  config.health_timeout = options.deaths ? 100ms : 2s;  // else a busy sanitizer run must not pass for a hang
  config.maintenance_interval = 10ms;
  config.idle_timeout = 20ms;
  config.breaker_counts = [](const std::exception_ptr& e) {  // the planned throws are the callers' business
    try {
      std::rethrow_exception(e);
    } catch (const model_error&) {
      return false;
    } catch (...) {
      return true;
    }
  };
  auto script = std::make_shared<LoadScript>();
  script->delay = 1ms;
  std::atomic<int> handled{0};
  IntPool::Options pool_options(config);
  if (options.scheduling) {
    pool_options.coalesce_key = [](const int& request) {
      return request >= coalesce_base ? std::optional<std::string>(std::to_string(request)) : std::nullopt;
    };
  }
  auto handle = [&](Model&, int request) -> asio::awaitable<int> {
    handled.fetch_add(1, std::memory_order_relaxed);
    switch (plan_of(request, options.deaths)) {
      case plan::throws:
        throw model_error("request " + std::to_string(request));
      case plan::slow:
        co_await pause(300ms);
        break;
      case plan::blocks:
        std::this_thread::sleep_for(300ms);  // a handler that blocks its thread: no pong can be sent meanwhile
        break;
      default:
        break;
    }
    co_return request + 1;
  };
  // The same plans, item by item, in batches; and the faults of whole batches.
  auto handle_batch = [&](Model&, std::span<int> requests) -> asio::awaitable<std::vector<outcome<int>>> {
    handled.fetch_add(static_cast<int>(requests.size()), std::memory_order_relaxed);
    bool slow = false, blocks = false;
    batch_fault fault = batch_fault::none;
    for (int r : requests) {
      const plan p = plan_of(r, options.deaths);
      slow = slow || p == plan::slow;
      blocks = blocks || p == plan::blocks;
      if (fault == batch_fault::none) fault = batch_fault_of(r);
    }
    if (fault == batch_fault::throws) throw model_error("batch");
    if (slow) co_await pause(300ms);
    if (blocks) std::this_thread::sleep_for(300ms);
    std::vector<outcome<int>> results;
    for (int r : requests) {
      if (plan_of(r, options.deaths) == plan::throws) {
        results.emplace_back(std::make_exception_ptr(model_error("request " + std::to_string(r))));
      } else {
        results.emplace_back(r + 1);
      }
    }
    if (fault == batch_fault::short_result) results.pop_back();
    co_return results;
  };
  if (options.batching) {
    pool_options.batching.max_batch_size = 8;
    pool_options.batching.max_batch_delay = 200us;
  }
  auto pool_ptr =
      options.batching
          ? std::make_unique<IntPool>(ex, std::move(pool_options), scripted_loader(script), batched(handle_batch))
          : std::make_unique<IntPool>(ex, std::move(pool_options), scripted_loader(script), handle);
  IntPool& pool = *pool_ptr;

  Outcomes out(options.requests);
  std::atomic<int> commands{0};
  for (int c = 0; c < options.clients; ++c) {
    asio::co_spawn(asio::make_strand(ex), stress_client(pool, out, options, c, static_cast<unsigned>(c + 1)),
                   asio::detached);
  }
  std::minstd_rand chaos_rng(7);
  const auto shutdown_after = std::chrono::milliseconds(50 + chaos_rng() % 400);
  asio::co_spawn(
      asio::make_strand(ex),
      [&]() -> asio::awaitable<void> {
        const std::string keys[stress_keys] = {"k0", "k1", "k2", "k3"};
        const auto started = std::chrono::steady_clock::now();
        bool shut = false;
        while (out.clients_done < options.clients) {  // the test's observer, and the lifecycle's chaos
          co_await pause(5ms);
          if (options.shutdown_at_random && !shut && std::chrono::steady_clock::now() - started >= shutdown_after) {
            shut = true;  // the clients go on submitting: shutting_down from here on
            pool.async_shutdown(std::chrono::milliseconds(chaos_rng() % 50),
                                [&](error_code) { commands.fetch_add(1); });
          }
          const std::string& key = keys[chaos_rng() % stress_keys];
          if (chaos_rng() % 8 == 0) {
            pool.async_restart(key, [&](error_code) { commands.fetch_add(1); });
          } else {
            pool.async_scale(key, 1 + chaos_rng() % 4, [&](error_code) { commands.fetch_add(1); });
          }
        }
        co_await pool.async_shutdown(1s, asio::use_awaitable);
      },
      asio::detached);
  run();

  int missing = 0, duplicated = 0;
  for (auto& c : out.completions) {
    if (c == 0) ++missing;
    if (c > 1) ++duplicated;
  }
  CHECK(missing == 0);
  CHECK(duplicated == 0);
  CHECK(out.wrong == 0);
  const auto answered = out.total(&KeyOutcomes::answered), thrown = out.total(&KeyOutcomes::thrown),
             cancelled = out.total(&KeyOutcomes::cancelled), timed_out = out.total(&KeyOutcomes::timed_out),
             lost = out.total(&KeyOutcomes::lost), refused = out.total(&KeyOutcomes::refused),
             shut_out = out.total(&KeyOutcomes::shut_out);
  INFO("answered " << answered << ", thrown " << thrown << ", cancelled " << cancelled << ", timed out " << timed_out
                   << ", lost " << lost << ", refused " << refused << ", shut out " << shut_out << ", handled "
                   << handled << ", loads " << script->started << ", commands " << commands);
  CHECK(answered + thrown + cancelled + timed_out + lost + refused + shut_out ==
        static_cast<std::uint64_t>(options.requests));
  CHECK(commands > 0);
  CHECK(handled <= options.requests);  // a cancelled queued request never reaches handle
  if (options.deaths && !options.shutdown_at_random) CHECK(out.blocked == (options.requests - 3 + 4999) / 5000);
  CHECK(out.slow_wrong == 0);  // every slow request ended as it can, each counted where it is named below
  if (!options.shutdown_at_random) CHECK(out.slow == options.slow_count());

  // The counters, key by key and bucket by bucket: each caller's outcome counted once, where it is named.
  const auto stats = pool.stats();
  std::uint64_t failed_or_rejected = stats.rejected;
  for (int i = 0; i < stress_keys; ++i) {
    const KeyOutcomes& k = out.by_key[static_cast<std::size_t>(i)];
    const std::string name = "k" + std::to_string(i);
    INFO("key " << name);
    const auto it = stats.keys.find(name);
    if (it == stats.keys.end()) {
      CHECK(k.answered + k.timed_out + k.cancelled == 0);
      continue;
    }
    const KeyStats& ks = it->second;
    CHECK(ks.completed == k.answered);
    CHECK(ks.expired_before_dispatch + ks.expired_in_handler == ks.timed_out);
    CHECK(ks.timed_out == k.timed_out);
    CHECK(ks.cancelled == k.cancelled);
    CHECK(ks.completed + ks.failed + ks.timed_out + ks.cancelled == ks.submitted);
    // shutting_down may come before a key is reached: only the sum over keys is exact then.
    if (!options.shutdown_at_random) CHECK(ks.failed + ks.rejected == k.thrown + k.lost + k.refused);
    failed_or_rejected += ks.failed + ks.rejected;
  }
  CHECK(failed_or_rejected == thrown + lost + refused + shut_out);
  CHECK(stats.total().loads == static_cast<std::uint64_t>(script->started.load()));
  CHECK(stats.total().submitted + stats.total().rejected == static_cast<std::uint64_t>(options.requests));
  if (!options.shutdown_at_random) {
    CHECK(thrown > 0);
    CHECK(cancelled > 0);
    // Every slow one at least, where no worker dies (with deaths, each slow one's ending is checked above).
    if (!options.deaths) CHECK(timed_out >= static_cast<std::uint64_t>(options.slow_count()));
    CHECK(answered > static_cast<std::uint64_t>(options.requests / 2));
    if (options.scheduling) CHECK(stats.total().coalesced > 0);
  }
  if (options.batching) {
    const KeyStats total = stats.total();
    CHECK(total.batches > 0);
    std::uint64_t larger = 0;
    for (std::size_t n = 2; n < total.batch_sizes.size(); ++n) larger += total.batch_sizes[n];
    CHECK(larger > 0);  // batches of more than one formed
  }
}

}  // namespace

TEST_CASE("every request completes exactly once under throws, cancellation and timeouts", "[submit][stress]") {
  asio::io_context ioc(2);
  run_stress(
      ioc.get_executor(), [&] { REQUIRE(run_until_idle(ioc, 2, 300s)); }, StressOptions{});
}

TEST_CASE("chaos: exactly once on more threads, with a small queue, dying workers and a shutdown at any moment",
          "[submit][stress][concurrency]") {
  StressOptions options;
  options.requests = stress_requests / 10;
  options.capacity = 4;
  options.deaths = true;
  SECTION("four io_context threads") {
    asio::io_context ioc(4);
    run_stress(
        ioc.get_executor(), [&] { REQUIRE(run_until_idle(ioc, 4, 300s)); }, options);
  }
  SECTION("four io_context threads, shut down at a random moment") {
    options.shutdown_at_random = true;
    asio::io_context ioc(4);
    run_stress(
        ioc.get_executor(), [&] { REQUIRE(run_until_idle(ioc, 4, 300s)); }, options);
  }
  SECTION("an asio::thread_pool of four, shut down at a random moment") {
    options.shutdown_at_random = true;
    asio::thread_pool threads(4);
    run_stress(
        threads.get_executor(), [&] { threads.join(); }, options);
  }
}

TEST_CASE(
    "batching: every request completes exactly once under per-item and per-batch faults, cancellation and timeouts",
    "[submit][stress][batching]") {
  StressOptions options;
  options.requests = stress_requests / 4;
  options.batching = true;
  asio::io_context ioc(2);
  run_stress(
      ioc.get_executor(), [&] { REQUIRE(run_until_idle(ioc, 2, 300s)); }, options);
}

TEST_CASE("batching chaos: exactly once with dying workers and a shutdown at a random moment",
          "[submit][stress][concurrency][batching]") {
  StressOptions options;
  options.requests = stress_requests / 10;
  options.capacity = 4;
  options.deaths = true;
  options.batching = true;
  options.shutdown_at_random = true;
  asio::io_context ioc(4);
  run_stress(
      ioc.get_executor(), [&] { REQUIRE(run_until_idle(ioc, 4, 300s)); }, options);
}

TEST_CASE("a submit to a key never seen before, racing shutdown, gets shutting_down and never times out",
          "[submit][concurrency]") {
  // The race is a few instructions wide: many rounds, each with a submitter
  // in a tight loop over new keys while the io thread runs the shutdown.
  constexpr int rounds = 150;
  static const auto silent = [] {
    auto logger = std::make_shared<spdlog::logger>("race", std::make_shared<spdlog::sinks::null_sink_mt>());
    logger->set_level(spdlog::level::off);
    return logger;
  }();
  int accepted = 0, refused = 0, other = 0;
  for (int round = 0; round < rounds; ++round) {
    asio::io_context ioc(2);
    auto guard = asio::make_work_guard(ioc);
    std::thread io([&] { ioc.run(); });
    PoolConfig config = TestConfig();
    config.request_timeout = 2s;  // a request the shutdown missed would end this way
    config.logger = silent;       // a log line between the flag and the keys would narrow the race
    auto script = std::make_shared<LoadScript>();
    script->delay = 0ms;
    std::optional<IntPool> pool(std::in_place, ioc, config, scripted_loader(script), echo_handler());
    std::atomic<int> r_accepted{0}, r_refused{0}, r_other{0};
    auto count = [&](std::exception_ptr e, int) {
      const error_code ec = error_of(e);
      ++(!ec ? r_accepted : ec == errc::shutting_down ? r_refused : r_other);
    };
    std::atomic<int> submitted{0};
    constexpr int per_round = 200;
    std::thread submitter([&] {
      for (int k = 0; k < per_round; ++k) {
        pool->async_submit("new-" + std::to_string(k), k, count);
        submitted.fetch_add(1, std::memory_order_release);
      }
    });
    while (submitted.load(std::memory_order_acquire) < (round % 8) * per_round / 8) {
    }
    asio::post(ioc, [&] { pool->async_shutdown(0ms, [](error_code) {}); });  // from the io thread, mid-loop
    submitter.join();
    guard.reset();
    io.join();
    pool.reset();
    ioc.restart();
    ioc.run();
    accepted += r_accepted;
    refused += r_refused;
    other += r_other;
  }
  INFO("answered before the shutdown " << accepted << ", refused " << refused);
  CHECK(other == 0);
  CHECK(accepted + refused + other == rounds * 200);
  CHECK(refused > 0);
}
