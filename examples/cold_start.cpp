// Cold start: a thousand callers need a model nobody has loaded yet. They all
// wait on one spawn wave (two loads, not a thousand), a key whose model is
// broken fails its callers at once with the loader's error, and a caller with
// too short a deadline gives up alone. Then the pool shuts down cleanly.

#include <coropool.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include <atomic>
#include <chrono>
#include <iostream>
#include <stdexcept>
#include <string>
#include <thread>

namespace asio = boost::asio;
using namespace std::chrono_literals;

struct Model {
  std::string name;
};

int main() {
  asio::io_context ioc(2);
  std::atomic<int> loads{0};

  coropool::PoolConfig config;
  config.cold_start_workers = 2;
  coropool::Pool<std::string, std::string> pool{
      ioc, config,
      [&](const std::string& key) -> asio::awaitable<Model> {
        ++loads;
        asio::steady_timer weights(co_await asio::this_coro::executor, 300ms);  // a slow load
        co_await weights.async_wait(asio::use_awaitable);
        if (key == "broken") throw std::runtime_error("weights for 'broken' fail their checksum");
        co_return Model{key};
      },
      [](Model& model, std::string request) -> asio::awaitable<std::string> { co_return model.name + ": " + request; }};

  std::atomic<int> ready{0};
  for (int i = 0; i < 1000; ++i) {
    asio::co_spawn(
        ioc,
        [&]() -> asio::awaitable<void> {
          co_await pool.wait_for_workers("bert", 5s);
          ++ready;
        },
        asio::detached);
  }

  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        try {
          co_await pool.wait_for_workers("broken", 5s);
        } catch (const coropool::spawn_error& e) {
          std::cout << "broken: " << e.code().message() << " (" << e.what() << ")\n";
        }
      },
      asio::detached);

  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        auto [ec] = co_await pool.async_wait_for_workers("gpt", 50ms, asio::as_tuple(asio::use_awaitable));
        std::cout << "gpt with a 50 ms deadline: " << ec.message() << "\n";
      },
      asio::detached);

  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        asio::steady_timer settle(co_await asio::this_coro::executor, 1s);
        co_await settle.async_wait(asio::use_awaitable);
        std::cout << "bert: " << ready << " callers woken, " << pool.worker_count("bert") << " workers ready, " << loads
                  << " loads in all (bert 2, broken 2, gpt 2)\n";
        co_await pool.async_shutdown(5s, asio::use_awaitable);
        std::cout << "shut down\n";
      },
      asio::detached);

  std::thread second([&] { ioc.run(); });
  ioc.run();
  second.join();
  return ready == 1000 ? 0 : 1;
}
