#pragma once

// The harness every test file shares: a pool's model, loader and handler, the
// model's error, the config builder, the waits a test makes on its own
// (pause, eventually, Gate), and the runs that fail a test instead of hanging
// it. quiet_config, pause, eventually and run_until_idle are defined in
// support.cpp, which every test program compiles with its own clock.
//
// The timers here run on the pool's clock: real time in coropool_tests, the
// virtual time of tests/sim/manual_clock.hpp in the programs built with
// COROPOOL_TESTING_CLOCK_HEADER. The runners (run_until_idle,
// run_counting_escapes) are watchdogs in real time, for coropool_tests only:
// virtual time has its own (run_until in manual_clock.hpp).

#include <coropool.hpp>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#ifdef COROPOOL_TESTING_CLOCK_HEADER
#include COROPOOL_TESTING_CLOCK_HEADER
#endif

namespace coropool::test {

using namespace std::chrono_literals;

/// The pool's clock: steady_clock, or the one COROPOOL_TESTING_CLOCK_HEADER declares.
#ifdef COROPOOL_TESTING_CLOCK_HEADER
using clock = ::coropool::testing::clock;
#else
using clock = std::chrono::steady_clock;
#endif

/// A timer on the pool's clock (asio::steady_timer in coropool_tests).
using timer = asio::basic_waitable_timer<clock>;

/// What the tests' workers load: remembers its key.
struct Model {
  std::string key;
};

/// What the tests' handlers throw: the model's own failure, which must reach
/// the caller unchanged.
struct model_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Counts and shapes loads: each takes `delay`, and throws while `fail` is set.
struct LoadScript {
  std::atomic<int> started{0};
  std::atomic<int> finished{0};
  std::atomic<int> cancelled{0};
  std::atomic<bool> fail{false};
  std::chrono::steady_clock::duration delay = 10ms;
};

/// A loader driven by a script the test keeps alive.
inline auto scripted_loader(std::shared_ptr<LoadScript> script) {
  return [script](const std::string& key) -> asio::awaitable<Model> {
    script->started.fetch_add(1);
    timer t(co_await asio::this_coro::executor, script->delay);
    auto [ec] = co_await t.async_wait(asio::as_tuple(asio::use_awaitable));
    if (ec) {
      script->cancelled.fetch_add(1);
      throw boost::system::system_error(ec);
    }
    if (script->fail.load()) throw std::runtime_error("model file for '" + key + "' is corrupt");
    script->finished.fetch_add(1);
    co_return Model{key};
  };
}

inline auto echo_handler() {
  return [](Model&, int request) -> asio::awaitable<int> { co_return request + 1; };
}

using IntPool = Pool<int, int>;

/// The pool error inside a completion's exception_ptr; invalid_argument marks
/// an exception that is not a pool error (tests compare, and fail).
inline error_code error_of(const std::exception_ptr& e) {
  try {
    if (e) std::rethrow_exception(e);
  } catch (const boost::system::system_error& error) {
    return error.code();
  } catch (...) {
    return make_error_code(errc::invalid_argument);
  }
  return {};
}

/// How one submitted request ended: its error (pool error, or
/// invalid_argument for another exception, whose what() is kept), its
/// value, how long it took, and how many times it completed.
struct Outcome {
  error_code error;
  std::string what;
  int value = 0;
  clock::duration took{};
  int completions = 0;
};

/// Submits `request` to `key` with `options` and records how and when it ended in `out`.
inline asio::awaitable<void> submit_recording(IntPool& pool, int request, SubmitOptions options, Outcome& out,
                                              std::string key = "bert") {
  const auto start = clock::now();
  auto [e, v] = co_await pool.async_submit(std::move(key), request, options, asio::as_tuple(asio::use_awaitable));
  out.took = clock::now() - start;
  out.error = error_of(e);
  try {
    if (e) std::rethrow_exception(e);
  } catch (const std::exception& error) {
    out.what = error.what();
  }
  out.value = v;
  ++out.completions;
}

/// Runs `body`, then shuts the pool down (1 s deadline): a test's whole run.
inline asio::awaitable<void> shutdown_after(IntPool& pool, std::function<asio::awaitable<void>()> body) {
  co_await body();
  co_await pool.async_shutdown(1s, asio::use_awaitable);
}

/// Every PoolConfig default, with a silent logger so that test output stays readable.
PoolConfig quiet_config();

/// The config most tests start from, built in one expression: quiet, one
/// compute thread, one worker per key, every other field at its default. A
/// test sets what is particular to it on the PoolConfig this converts to.
///
///   PoolConfig config = TestConfig().workers(2, 4).queue(4);
///   config.request_timeout = 30ms;
class TestConfig {
 public:
  TestConfig() : config_(quiet_config()) {
    config_.cold_start_workers = 1;
    config_.max_workers_per_key = 1;
    config_.compute_threads = 1;
  }

  /// `cold` workers for a cold key's first wave, up to `max` by scale-up.
  TestConfig& workers(std::size_t cold, std::size_t max) {
    config_.cold_start_workers = cold;
    config_.max_workers_per_key = max;
    return *this;
  }

  TestConfig& queue(std::size_t capacity) {
    config_.queue_capacity = capacity;
    return *this;
  }

  TestConfig& stream_buffer(std::size_t chunks) {
    config_.stream_buffer = chunks;
    return *this;
  }

  /// A breaker that opens after `threshold` consecutive failures (0: never),
  /// stays open 50 ms, then lets `probes` requests through.
  TestConfig& breaker(std::size_t threshold, std::size_t probes = 2) {
    config_.failure_threshold = threshold;
    config_.open_duration = 50ms;
    config_.half_open_probes = probes;
    return *this;
  }

  /// Health and maintenance on intervals short enough to act within a test:
  /// a ping every 20 ms (dead after 150 ms unanswered), a tick every 10 ms,
  /// a worker idle for 50 ms evicted.
  TestConfig& fast_lifecycle() {
    config_.health_interval = 20ms;
    config_.health_timeout = 150ms;
    config_.maintenance_interval = 10ms;
    config_.idle_timeout = 50ms;
    return *this;
  }

  operator PoolConfig() const { return config_; }  // NOLINT(google-explicit-constructor): the builder's point

 private:
  PoolConfig config_;
};

/// Suspends the calling coroutine for `d` on the pool's clock.
asio::awaitable<void> pause(clock::duration d);

/// Checks `done()` every 2 ms (the test's own observer; the pool never polls)
/// until it holds, or `limit` passes; returns whether it held.
asio::awaitable<bool> eventually(std::function<bool()> done, clock::duration limit = 5s);

/// Handlers that wait on it stay in flight until the test opens it.
class Gate {
 public:
  explicit Gate(const asio::any_io_executor& ex) : timer_(ex, timer::time_point::max()) {}

  /// Waits until the gate is open; at once when it already is.
  asio::awaitable<void> pass() { co_await timer_.async_wait(asio::as_tuple(asio::use_awaitable)); }

  /// Lets every waiting handler through, and every later one at once.
  void open() { timer_.expires_at(timer::time_point::min()); }

 private:
  timer timer_;
};

/// Runs `ioc` on `threads` threads until it runs out of work, or fails the
/// test when `limit` passes first: the watchdog of every test that could hang.
bool run_until_idle(asio::io_context& ioc, int threads, std::chrono::steady_clock::duration limit = 30s);

/// Runs `ioc` on this thread until it runs out of work or `limit` passes,
/// going on after each `Escaped` that a handler throws out of run(), as any
/// Asio handler's exception escapes; returns how many did.
template <class Escaped>
int run_counting_escapes(asio::io_context& ioc, std::chrono::steady_clock::duration limit) {
  int escaped = 0;
  const auto until = std::chrono::steady_clock::now() + limit;
  while (!ioc.stopped() && std::chrono::steady_clock::now() < until) {
    try {
      ioc.run_until(until);
    } catch (const Escaped&) {
      ++escaped;
      ioc.restart();
    }
  }
  return escaped;
}

}  // namespace coropool::test
