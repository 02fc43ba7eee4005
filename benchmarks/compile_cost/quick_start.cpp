#include <coropool.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include <chrono>
#include <iostream>
#include <string>

namespace asio = boost::asio;
using namespace std::chrono_literals;

struct Model {
  std::string name;
};

// Loads one worker's model; slow, and may throw.
asio::awaitable<Model> load(const std::string& key) {
  asio::steady_timer weights(co_await asio::this_coro::executor, 100ms);  // stands in for reading weights
  co_await weights.async_wait(asio::use_awaitable);
  co_return Model{key};
}

// Serves one request with a loaded model.
asio::awaitable<std::string> handle(Model& model, std::string request) {
  co_return model.name + " answers " + request;
}

int main() {
  asio::io_context ioc;
  coropool::Pool<std::string, std::string> pool{ioc, coropool::PoolConfig{}, load, handle};

  asio::co_spawn(ioc, [&]() -> asio::awaitable<void> {
    std::string answer = co_await pool.submit("bert", "hello");  // spawns bert once, queues, answers
    std::cout << answer << "\n";
    co_await pool.wait_for_workers("bert", 5s);  // ready at once now
    std::cout << "bert has " << pool.worker_count("bert") << " worker(s) ready\n";
    co_await pool.async_shutdown(5s, asio::use_awaitable);
  }, asio::detached);
  ioc.run();
  return 0;
}
