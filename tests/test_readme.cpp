#include <coropool.hpp>

#include <catch2/catch.hpp>

#include "readme_snippets.hpp"
#include "support.hpp"

using namespace coropool;
using namespace coropool::test;

TEST_CASE("the README's quick start runs", "[readme]") { CHECK(readme_snippet_1::main() == 0); }

TEST_CASE("the README's waiting snippet runs", "[readme]") {
  asio::io_context ioc;
  auto config = readme_snippet_2::snippet_config();
  config.logger = quiet_config().logger;
  auto script = std::make_shared<LoadScript>();
  IntPool pool(ioc, config, scripted_loader(script), echo_handler());
  bool finished = false;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        co_await readme_snippet_2::wait_in_every_form(pool);
        finished = true;
        co_await pool.async_shutdown(1s, asio::use_awaitable);
      },
      asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(finished);
  CHECK(script->started == 2);
}
