// Serving requests: 64 clients send 200 requests each to a "sentiment" model
// whose inference is blocking CPU code, run on the pool's compute executor so
// the io threads stay free. Some inputs make the model throw (the caller gets
// that exception), one client gives up on a request after 1 ms (cancellation),
// and the pool then shuts down, draining what is queued.

#include <coropool.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/thread_pool.hpp>

#include <atomic>
#include <chrono>
#include <exception>
#include <iostream>
#include <stdexcept>
#include <string>
#include <thread>

namespace asio = boost::asio;
using namespace std::chrono_literals;
using namespace asio::experimental::awaitable_operators;

struct Model {
  std::string name;

  // Blocking, CPU-bound: must not run on an io thread.
  int score(const std::string& text) const {
    if (text.empty()) throw std::invalid_argument("empty input");
    if (text.size() > 100) std::this_thread::sleep_for(20ms);  // a long text takes long
    int score = 0;
    for (char c : text) score = (score * 31 + c) % 1000;
    return score;
  }
};

int main() {
  asio::io_context ioc(2);
  asio::thread_pool compute(2);  // where blocking model code runs
  coropool::PoolConfig config;
  config.cold_start_workers = 2;
  config.max_workers_per_key = 4;
  config.compute_executor = compute.get_executor();
  // Bad input is the caller's fault, not the model's: it must not open the key's circuit breaker.
  config.breaker_counts = [](const std::exception_ptr& e) {
    try {
      std::rethrow_exception(e);
    } catch (const std::invalid_argument&) {
      return false;
    } catch (...) {
      return true;
    }
  };

  coropool::Pool<std::string, int> pool{
      ioc, config, [](const std::string& key) -> asio::awaitable<Model> { co_return Model{key}; },
      [&](Model& model, std::string text) -> asio::awaitable<int> {
        co_return co_await coropool::offload(compute.get_executor(), [&] { return model.score(text); });
      }};

  std::atomic<int> answered{0}, rejected{0}, cancelled{0}, clients{64};
  for (int c = 0; c < 64; ++c) {
    asio::co_spawn(
        ioc,
        [&, c]() -> asio::awaitable<void> {
          for (int i = 0; i < 200; ++i) {
            const std::string text = (i % 50 == 0) ? "" : "review " + std::to_string(c * 1000 + i);
            try {
              co_await pool.submit("sentiment", text);
              ++answered;
            } catch (const std::invalid_argument&) {
              ++rejected;  // the model's own exception, unchanged
            }
          }
          if (--clients == 0) {
            // One more caller, who will not wait more than 1 ms.
            asio::steady_timer patience(co_await asio::this_coro::executor, 1ms);
            auto first =
                co_await (pool.submit("sentiment", std::string(200, 'x')) || patience.async_wait(asio::use_awaitable));
            if (first.index() == 1) ++cancelled;
            co_await pool.async_shutdown(5s, asio::use_awaitable);
            std::cout << answered << " answered, " << rejected << " rejected by the model, " << cancelled
                      << " given up, " << pool.live_worker_count("sentiment") << " workers left after shutdown\n";
          }
        },
        asio::detached);
  }

  std::thread second([&] { ioc.run(); });
  ioc.run();
  second.join();
  return answered + rejected == 64 * 200 ? 0 : 1;
}
