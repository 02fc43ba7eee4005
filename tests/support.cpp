// The definitions of support.hpp's harness, compiled into each test program
// (each with its own clock: see support.hpp).

#include "support.hpp"

#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>

namespace coropool::test {

PoolConfig quiet_config() {
  static const auto logger =
      std::make_shared<spdlog::logger>("coropool-test", std::make_shared<spdlog::sinks::null_sink_mt>());
  PoolConfig config;
  config.logger = logger;
  return config;
}

asio::awaitable<void> pause(clock::duration d) {
  timer t(co_await asio::this_coro::executor, d);
  co_await t.async_wait(asio::use_awaitable);
}

asio::awaitable<bool> eventually(std::function<bool()> done, clock::duration limit) {
  timer t(co_await asio::this_coro::executor);
  const auto until = clock::now() + limit;
  while (!done()) {
    if (clock::now() > until) co_return false;
    t.expires_after(2ms);
    co_await t.async_wait(asio::use_awaitable);
  }
  co_return true;
}

bool run_until_idle(asio::io_context& ioc, int threads, std::chrono::steady_clock::duration limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  std::vector<std::thread> extra;
  for (int i = 1; i < threads; ++i) extra.emplace_back([&] { ioc.run_until(deadline); });
  ioc.run_until(deadline);
  for (auto& t : extra) t.join();
  return ioc.stopped();
}

}  // namespace coropool::test
