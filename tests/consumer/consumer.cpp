// The program every consumer check builds: one pool, one cold key, one wait.

#include <coropool.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include <chrono>
#include <cstdio>
#include <string>

namespace asio = boost::asio;

struct Model {
  std::string key;
};

int main() {
  asio::io_context ioc;
  coropool::Pool<int, int> pool{ioc, coropool::PoolConfig{},
                                [](const std::string& key) -> asio::awaitable<Model> { co_return Model{key}; },
                                [](Model&, int x) -> asio::awaitable<int> { co_return x + 1; }};
  bool ready = false;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        co_await pool.wait_for_workers("consumer", std::chrono::seconds(5));
        ready = pool.has_workers("consumer");
        co_await pool.async_shutdown(std::chrono::seconds(1), asio::use_awaitable);
      },
      asio::detached);
  ioc.run();
  std::printf("coropool %d consumer: %s\n", COROPOOL_VERSION, ready ? "ok" : "FAILED");
  return ready ? 0 : 1;
}
