#include <coropool.hpp>

#include <catch2/catch.hpp>

#include "readme_snippets.hpp"
#include "support.hpp"

using namespace coropool;
using namespace coropool::test;

// Each C++ block of the README is compiled into readme_snippet_<name>, after
// the `<!-- snippet: name -->` comment above it (cmake/readme-snippets.cmake).

TEST_CASE("the README's quick start runs", "[readme]") { CHECK(readme_snippet_quick_start::main() == 0); }

TEST_CASE("the README's waiting snippet runs", "[readme]") {
  asio::io_context ioc;
  auto config = readme_snippet_waiting::snippet_config();
  config.logger = quiet_config().logger;
  auto script = std::make_shared<LoadScript>();
  IntPool pool(ioc, config, scripted_loader(script), echo_handler());
  bool finished = false;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        co_await readme_snippet_waiting::wait_in_every_form(pool);
        finished = true;
        co_await pool.async_shutdown(1s, asio::use_awaitable);
      },
      asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(finished);
  CHECK(script->started == 2);
}

TEST_CASE("the README's submitting snippet runs", "[readme]") {
  asio::io_context ioc;
  auto script = std::make_shared<LoadScript>();
  IntPool pool(ioc, quiet_config(), scripted_loader(script), echo_handler());
  int sum = 0;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        sum = co_await readme_snippet_submitting::submit_in_every_form(pool);
        co_await pool.async_shutdown(1s, asio::use_awaitable);
      },
      asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(sum == 2 + 3 + 4 + 6);  // each answer is its request + 1
}

TEST_CASE("the README's streams snippet runs", "[readme]") {
  asio::io_context ioc;
  auto pool = readme_snippet_streams::make_llm_pool(
      ioc,
      [](const std::string&) -> asio::awaitable<readme_snippet_streams::Llm> {
        co_return readme_snippet_streams::Llm{};
      },
      [](readme_snippet_streams::Llm&, std::string s) -> asio::awaitable<std::string> { co_return s; });
  int chunks = 0;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        chunks = co_await readme_snippet_streams::read_stream(pool);
        co_await pool.async_shutdown(1s, asio::use_awaitable);
      },
      asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(chunks == 3);
}

TEST_CASE("the README's blocking-code snippet runs", "[readme]") {
  asio::io_context ioc;
  readme_snippet_blocking::Scorer scorer(ioc);
  int score = 0;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        score = co_await scorer.score("four");
        co_await scorer.pool().async_shutdown(1s, asio::use_awaitable);
      },
      asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(score == 4);
}

TEST_CASE("the README's operating snippet runs", "[readme][lifecycle]") {
  asio::io_context ioc;
  auto config = readme_snippet_operating::operated_config();
  config.logger = quiet_config().logger;
  auto script = std::make_shared<LoadScript>();
  IntPool pool(ioc, config, scripted_loader(script), echo_handler());
  std::string metrics;
  std::size_t left_after_evict = 99;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        metrics = co_await readme_snippet_operating::operate(pool);
        left_after_evict = pool.live_worker_count("bert");
        co_await pool.async_shutdown(1s, asio::use_awaitable);
      },
      asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(left_after_evict == 0);
  // Three workers after scale, each replaced by restart: six loads at least.
  CHECK(script->started >= 6);
  CHECK(metrics.find("coropool_loads_total{key=\"bert\"} " + std::to_string(script->started) + "\n") !=
        std::string::npos);
  CHECK(metrics.find("coropool_restarts_total{key=\"bert\"} 3\n") != std::string::npos);
  CHECK(metrics.find("coropool_memory_budget_bytes 8589934592\n") != std::string::npos);
}

TEST_CASE("the README's io_context-per-core snippet runs", "[readme][concurrency]") {
  CHECK(readme_snippet_context_per_core::serve_on_every_core(2) == 84);
}

TEST_CASE("the README's scheduling snippet runs", "[readme]") {
  asio::io_context ioc;
  auto pool = readme_snippet_scheduling::make_classifier_pool(ioc);
  std::vector<std::string> answers;
  for (int i = 0; i < 2; ++i) {
    asio::co_spawn(
        ioc,
        [&]() -> asio::awaitable<void> {
          answers.push_back(co_await readme_snippet_scheduling::classify_urgently(pool, "abc"));
        },
        asio::detached);
  }
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        co_await eventually([&] { return answers.size() == 2; });
        co_await pool.async_shutdown(1s, asio::use_awaitable);
      },
      asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(answers == std::vector<std::string>{"odd", "odd"});
  const auto k = pool.stats().keys.at("classifier");
  CHECK(k.coalesced == 1);  // the second asked while the first waited for the cold key: one run
  CHECK(k.completed == 2);
  CHECK(k.queued_by_priority.size() == 5);
}
