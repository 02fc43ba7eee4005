#pragma once

// Shared helpers of coropool's tests.

#include <coropool.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>

#include <atomic>
#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace coropool::test {

using namespace std::chrono_literals;

/// What the tests' workers load: remembers its key.
struct Model {
  std::string key;
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
    asio::steady_timer timer(co_await asio::this_coro::executor, script->delay);
    auto [ec] = co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
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

/// A config whose logger is silent, so test output stays readable.
PoolConfig quiet_config();

/// Runs `ioc` on `threads` threads until it runs out of work, or fails the
/// test when `limit` passes first: the watchdog of every test that could hang.
bool run_until_idle(asio::io_context& ioc, int threads, std::chrono::steady_clock::duration limit = 30s);

}  // namespace coropool::test
