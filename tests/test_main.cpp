#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

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

bool run_until_idle(asio::io_context& ioc, int threads, std::chrono::steady_clock::duration limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  std::vector<std::thread> extra;
  for (int i = 1; i < threads; ++i) extra.emplace_back([&] { ioc.run_until(deadline); });
  ioc.run_until(deadline);
  for (auto& t : extra) t.join();
  return ioc.stopped();
}

}  // namespace coropool::test

int main(int argc, char* argv[]) { return Catch::Session().run(argc, argv); }
