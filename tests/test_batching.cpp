// Dynamic batching through a running pool: how batches form (up to
// max_batch_size, a full one at once, a lone request after max_batch_delay,
// never late for a deadline), and every fault inside a batch (a throwing
// handler, a result vector of the wrong size, per-item exceptions, an item
// cancelled or past its deadline while its batch runs, shutdown).

#include <coropool/batch.hpp>
#include <coropool/pool.hpp>
#include <coropool/prometheus.hpp>

#include <catch2/catch.hpp>

#include "support.hpp"

#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace coropool;
using namespace coropool::test;

namespace {

PoolConfig batching(std::size_t max_batch_size, clock::duration max_batch_delay) {
  PoolConfig config = TestConfig();
  config.batching.max_batch_size = max_batch_size;
  config.batching.max_batch_delay = max_batch_delay;
  return config;
}

/// A batch handler that records each batch's requests and answers request + 1.
auto recording_batch(std::vector<std::vector<int>>& batches) {
  return [&batches](Model&, std::span<int> requests) -> asio::awaitable<std::vector<outcome<int>>> {
    batches.emplace_back(requests.begin(), requests.end());
    std::vector<outcome<int>> results;
    for (int r : requests) results.emplace_back(r + 1);
    co_return results;
  };
}

}  // namespace

TEST_CASE("requests that arrive together form one batch, which starts at once when full", "[batching]") {
  asio::io_context ioc;
  std::vector<std::vector<int>> batches;
  IntPool pool(ioc, batching(4, 10s), scripted_loader(std::make_shared<LoadScript>()),
               batched(recording_batch(batches)));
  std::vector<Outcome> out(4);
  asio::co_spawn(ioc,
                 shutdown_after(pool,
                                [&]() -> asio::awaitable<void> {
                                  co_await pool.wait_for_workers("bert");
                                  for (int i = 0; i < 3; ++i) {
                                    asio::co_spawn(ioc, submit_recording(pool, i, {}, out[i]), asio::detached);
                                  }
                                  co_await submit_recording(pool, 3, {}, out[3]);
                                }),
                 asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  for (int i = 0; i < 4; ++i) {
    CHECK(out[i].completions == 1);
    CHECK(out[i].value == i + 1);
    CHECK(out[i].took < 5s);  // the full batch did not wait its 10 s
  }
  REQUIRE(batches.size() == 1);
  CHECK(batches[0] == std::vector<int>{0, 1, 2, 3});
  const auto k = pool.stats().keys.at("bert");
  CHECK(k.batches == 1);
  REQUIRE(k.batch_sizes.size() > 4);
  CHECK(k.batch_sizes[4] == 1);
  CHECK(k.batch_wait.count == 1);
  const std::string text = to_prometheus(pool.stats());
  CHECK_THAT(text, Catch::Contains("coropool_batches_total{key=\"bert\"} 1\n"));
  CHECK_THAT(text, Catch::Contains("coropool_batch_size_bucket{key=\"bert\",le=\"2\"} 0\n"));
  CHECK_THAT(text, Catch::Contains("coropool_batch_size_bucket{key=\"bert\",le=\"4\"} 1\n"));
  CHECK_THAT(text, Catch::Contains("coropool_batch_size_sum{key=\"bert\"} 4\n"));
  CHECK_THAT(text, Catch::Contains("coropool_batch_wait_seconds_count{key=\"bert\"} 1\n"));
}

TEST_CASE("a queue deeper than max_batch_size is served in full batches, in order", "[batching]") {
  asio::io_context ioc;
  Gate gate(ioc.get_executor());
  std::vector<std::vector<int>> batches;
  IntPool pool(ioc, batching(3, clock::duration::zero()), scripted_loader(std::make_shared<LoadScript>()),
               batched([&](Model&, std::span<int> requests) -> asio::awaitable<std::vector<outcome<int>>> {
                 co_await gate.pass();
                 batches.emplace_back(requests.begin(), requests.end());
                 co_return std::vector<outcome<int>>(requests.begin(), requests.end());
               }));
  std::vector<Outcome> out(7);
  asio::co_spawn(ioc,
                 shutdown_after(pool,
                                [&]() -> asio::awaitable<void> {
                                  co_await pool.wait_for_workers("bert");
                                  asio::co_spawn(ioc, submit_recording(pool, 0, {}, out[0]), asio::detached);
                                  co_await pause(10ms);  // 0 runs alone, held by the gate
                                  for (int i = 1; i < 7; ++i) {
                                    asio::co_spawn(ioc, submit_recording(pool, i, {}, out[i]), asio::detached);
                                  }
                                  co_await pause(10ms);
                                  gate.open();
                                  co_await eventually([&] { return out[6].completions == 1; });
                                }),
                 asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  for (int i = 0; i < 7; ++i) CHECK(out[i].value == i);
  CHECK(batches == std::vector<std::vector<int>>{{0}, {1, 2, 3}, {4, 5, 6}});
}

TEST_CASE("a lone request waits max_batch_delay for company, then runs alone", "[batching]") {
  asio::io_context ioc;
  std::vector<std::vector<int>> batches;
  IntPool pool(ioc, batching(8, 40ms), scripted_loader(std::make_shared<LoadScript>()),
               batched(recording_batch(batches)));
  Outcome lone;
  asio::co_spawn(ioc,
                 shutdown_after(pool,
                                [&]() -> asio::awaitable<void> {
                                  co_await pool.wait_for_workers("bert");
                                  co_await submit_recording(pool, 7, {}, lone);
                                }),
                 asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(lone.value == 8);
  CHECK(lone.took >= 40ms);
  CHECK(lone.took < 2s);
  CHECK(batches == std::vector<std::vector<int>>{{7}});
  CHECK(pool.stats().keys.at("bert").batch_wait.quantile_us(1.0) >= 40'000);
}

TEST_CASE("a batch never waits for more into its requests' deadlines", "[batching][deadline]") {
  asio::io_context ioc;
  std::vector<std::vector<int>> batches;
  IntPool pool(ioc, batching(8, 10s), scripted_loader(std::make_shared<LoadScript>()),
               batched(recording_batch(batches)));
  Outcome hurried;
  SubmitOptions options;
  options.timeout = 200ms;
  asio::co_spawn(ioc,
                 shutdown_after(pool,
                                [&]() -> asio::awaitable<void> {
                                  co_await pool.wait_for_workers("bert");
                                  co_await submit_recording(pool, 1, options, hurried);
                                }),
                 asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(hurried.error == error_code{});
  CHECK(hurried.value == 2);
  CHECK(hurried.took < 200ms);
}

TEST_CASE("a batch handler that throws fails every item once, and counts once against the breaker",
          "[batching][faults]") {
  asio::io_context ioc;
  PoolConfig config = batching(4, 10s);
  config.failure_threshold = 2;
  IntPool pool(ioc, config, scripted_loader(std::make_shared<LoadScript>()),
               batched([](Model&, std::span<int>) -> asio::awaitable<std::vector<outcome<int>>> {
                 throw model_error("GPU fell off the bus");
                 co_return std::vector<outcome<int>>{};
               }));
  std::vector<Outcome> out(4);
  asio::co_spawn(ioc,
                 shutdown_after(pool,
                                [&]() -> asio::awaitable<void> {
                                  co_await pool.wait_for_workers("bert");
                                  for (int i = 0; i < 3; ++i) {
                                    asio::co_spawn(ioc, submit_recording(pool, i, {}, out[i]), asio::detached);
                                  }
                                  co_await submit_recording(pool, 3, {}, out[3]);
                                }),
                 asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  for (auto& o : out) {
    CHECK(o.completions == 1);
    CHECK(o.what == "GPU fell off the bus");
  }
  const auto k = pool.stats().keys.at("bert");
  CHECK(k.failed == 4);
  CHECK(k.breaker_opened == 0);  // one failure, not four
}

TEST_CASE("a result vector of the wrong size fails every item with the sizes, and the worker serves on",
          "[batching][faults]") {
  asio::io_context ioc;
  int calls = 0;
  IntPool pool(ioc, batching(2, 10s), scripted_loader(std::make_shared<LoadScript>()),
               batched([&](Model&, std::span<int> requests) -> asio::awaitable<std::vector<outcome<int>>> {
                 if (++calls == 1) co_return std::vector<outcome<int>>{outcome<int>(1)};
                 co_return std::vector<outcome<int>>(requests.begin(), requests.end());
               }));
  std::vector<Outcome> out(2);
  Outcome after;
  asio::co_spawn(ioc,
                 shutdown_after(pool,
                                [&]() -> asio::awaitable<void> {
                                  co_await pool.wait_for_workers("bert");
                                  asio::co_spawn(ioc, submit_recording(pool, 10, {}, out[0]), asio::detached);
                                  co_await submit_recording(pool, 11, {}, out[1]);
                                  co_await eventually([&] { return out[0].completions == 1; });
                                  SubmitOptions quick;
                                  quick.timeout = 5s;
                                  co_await submit_recording(pool, 12, quick, after);
                                }),
                 asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  for (auto& o : out) {
    CHECK(o.completions == 1);
    CHECK(o.what == "coropool: the batch handler returned 1 results for 2 requests");
  }
  CHECK(after.value == 12);
}

TEST_CASE("an item's own exception reaches only its caller", "[batching][faults]") {
  asio::io_context ioc;
  IntPool pool(ioc, batching(3, 10s), scripted_loader(std::make_shared<LoadScript>()),
               batched([](Model&, std::span<int> requests) -> asio::awaitable<std::vector<outcome<int>>> {
                 std::vector<outcome<int>> results;
                 for (int r : requests) {
                   if (r < 0) {
                     results.emplace_back(std::make_exception_ptr(model_error("negative input")));
                   } else {
                     results.emplace_back(r * 10);
                   }
                 }
                 co_return results;
               }));
  std::vector<Outcome> out(3);
  asio::co_spawn(ioc,
                 shutdown_after(pool,
                                [&]() -> asio::awaitable<void> {
                                  co_await pool.wait_for_workers("bert");
                                  asio::co_spawn(ioc, submit_recording(pool, 1, {}, out[0]), asio::detached);
                                  asio::co_spawn(ioc, submit_recording(pool, -1, {}, out[1]), asio::detached);
                                  co_await submit_recording(pool, 3, {}, out[2]);
                                  co_await eventually([&] { return out[1].completions == 1; });
                                }),
                 asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(out[0].value == 10);
  CHECK(out[1].what == "negative input");
  CHECK(out[2].value == 30);
  const auto k = pool.stats().keys.at("bert");
  CHECK(k.completed == 2);
  CHECK(k.failed == 1);
}

TEST_CASE("an item cancelled while its batch runs completes at once, the batch runs on for the rest",
          "[batching][faults]") {
  asio::io_context ioc;
  Gate gate(ioc.get_executor());
  bool handler_cancelled = false;
  IntPool pool(ioc, batching(2, 10s), scripted_loader(std::make_shared<LoadScript>()),
               batched([&](Model&, std::span<int> requests) -> asio::awaitable<std::vector<outcome<int>>> {
                 co_await gate.pass();
                 handler_cancelled =
                     (co_await asio::this_coro::cancellation_state).cancelled() != asio::cancellation_type::none;
                 co_return std::vector<outcome<int>>(requests.begin(), requests.end());
               }));
  asio::cancellation_signal cancel;
  Outcome cancelled, kept;
  asio::co_spawn(ioc,
                 shutdown_after(pool,
                                [&]() -> asio::awaitable<void> {
                                  co_await pool.wait_for_workers("bert");
                                  asio::co_spawn(ioc, submit_recording(pool, 1, {}, cancelled),
                                                 asio::bind_cancellation_slot(cancel.slot(), asio::detached));
                                  asio::co_spawn(ioc, submit_recording(pool, 2, {}, kept), asio::detached);
                                  co_await pause(20ms);  // the batch of two runs, held by the gate
                                  cancel.emit(asio::cancellation_type::terminal);
                                  co_await eventually([&] { return cancelled.completions == 1; });
                                  CHECK(kept.completions == 0);
                                  gate.open();
                                  co_await eventually([&] { return kept.completions == 1; });
                                }),
                 asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(cancelled.error == asio::error::operation_aborted);
  CHECK(kept.value == 2);
  CHECK_FALSE(handler_cancelled);  // one caller still waited for it
}

TEST_CASE("an item past its deadline while its batch runs times out then, the rest wait for the batch",
          "[batching][deadline]") {
  asio::io_context ioc;
  Gate gate(ioc.get_executor());
  IntPool pool(ioc, batching(2, 10s), scripted_loader(std::make_shared<LoadScript>()),
               batched([&](Model&, std::span<int> requests) -> asio::awaitable<std::vector<outcome<int>>> {
                 co_await gate.pass();
                 co_return std::vector<outcome<int>>(requests.begin(), requests.end());
               }));
  Outcome hurried, patient;
  SubmitOptions short_deadline;
  short_deadline.timeout = 30s;  // its batch is full at once, so the batcher does not wait for it
  asio::co_spawn(ioc,
                 shutdown_after(pool,
                                [&]() -> asio::awaitable<void> {
                                  co_await pool.wait_for_workers("bert");
                                  SubmitOptions o;
                                  o.deadline = clock::now() + 50ms;
                                  asio::co_spawn(ioc, submit_recording(pool, 2, {}, patient), asio::detached);
                                  asio::co_spawn(ioc, submit_recording(pool, 1, o, hurried), asio::detached);
                                  co_await eventually([&] { return hurried.completions == 1; });
                                  CHECK(patient.completions == 0);
                                  gate.open();
                                  co_await eventually([&] { return patient.completions == 1; });
                                }),
                 asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(hurried.error == errc::request_timeout);
  CHECK(hurried.took < 2s);
  CHECK(patient.value == 2);
  CHECK(pool.stats().keys.at("bert").expired_in_handler == 1);
}

TEST_CASE("shutdown's deadline during a batch completes each item exactly once", "[batching][faults]") {
  asio::io_context ioc;
  Gate never(ioc.get_executor());
  IntPool pool(ioc, batching(3, 10s), scripted_loader(std::make_shared<LoadScript>()),
               batched([&](Model&, std::span<int> requests) -> asio::awaitable<std::vector<outcome<int>>> {
                 co_await never.pass();  // cancelled by shutdown's deadline
                 co_return std::vector<outcome<int>>(requests.begin(), requests.end());
               }));
  std::vector<Outcome> out(3);
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        co_await pool.wait_for_workers("bert");
        for (int i = 0; i < 3; ++i) {
          asio::co_spawn(ioc, submit_recording(pool, i, {}, out[i]), asio::detached);
        }
        co_await pause(20ms);
        co_await pool.async_shutdown(50ms, asio::as_tuple(asio::use_awaitable));
      },
      asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  for (auto& o : out) {
    CHECK(o.completions == 1);
    CHECK(o.error == errc::shutting_down);
  }
}

TEST_CASE("a worker declared dead during its batch: each item completes once with worker_lost", "[batching][faults]") {
  asio::io_context ioc;
  PoolConfig config = batching(3, 10s);
  config.health_interval = 10ms;
  config.health_timeout = 50ms;
  IntPool pool(ioc, config, scripted_loader(std::make_shared<LoadScript>()),
               batched([](Model&, std::span<int> requests) -> asio::awaitable<std::vector<outcome<int>>> {
                 std::this_thread::sleep_for(300ms);  // blocks its thread: no pong meanwhile
                 co_return std::vector<outcome<int>>(requests.begin(), requests.end());
               }));
  std::vector<Outcome> out(3);
  asio::co_spawn(ioc,
                 shutdown_after(pool,
                                [&]() -> asio::awaitable<void> {
                                  co_await pool.wait_for_workers("bert");
                                  for (int i = 0; i < 2; ++i) {
                                    asio::co_spawn(ioc, submit_recording(pool, i, {}, out[i]), asio::detached);
                                  }
                                  co_await submit_recording(pool, 2, {}, out[2]);
                                  co_await eventually([&] { return out[0].completions + out[1].completions == 2; });
                                }),
                 asio::detached);
  // Two threads: the sweep runs on one while the batch blocks the other.
  REQUIRE(run_until_idle(ioc, 2));
  for (auto& o : out) {
    CHECK(o.completions == 1);
    CHECK(o.error == errc::worker_lost);
  }
  CHECK(pool.stats().keys.at("bert").deaths >= 1);
}

TEST_CASE("a worker told to stop while its batch waits for more starts the batch at once", "[batching][faults]") {
  asio::io_context ioc;
  std::vector<std::vector<int>> batches;
  IntPool pool(ioc, batching(8, 10s), scripted_loader(std::make_shared<LoadScript>()),
               batched(recording_batch(batches)));
  Outcome lone;
  asio::co_spawn(ioc,
                 shutdown_after(pool,
                                [&]() -> asio::awaitable<void> {
                                  co_await pool.wait_for_workers("bert");
                                  asio::co_spawn(ioc, submit_recording(pool, 5, {}, lone), asio::detached);
                                  co_await pause(20ms);  // it waits in a batch, for 10 s at most
                                  CHECK(lone.completions == 0);
                                  co_await pool.async_evict("bert", asio::use_awaitable);
                                }),
                 asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(lone.value == 6);
  CHECK(lone.took < 5s);
  CHECK(batches == std::vector<std::vector<int>>{{5}});
}

TEST_CASE("an item cancelled while queued leaves the queue and is never in a batch", "[batching][faults]") {
  asio::io_context ioc;
  Gate gate(ioc.get_executor());
  std::vector<std::vector<int>> batches;
  IntPool pool(ioc, batching(4, clock::duration::zero()), scripted_loader(std::make_shared<LoadScript>()),
               batched([&](Model&, std::span<int> requests) -> asio::awaitable<std::vector<outcome<int>>> {
                 batches.emplace_back(requests.begin(), requests.end());
                 co_await gate.pass();
                 co_return std::vector<outcome<int>>(requests.begin(), requests.end());
               }));
  asio::cancellation_signal cancel;
  Outcome first, cancelled, kept;
  asio::co_spawn(ioc,
                 shutdown_after(pool,
                                [&]() -> asio::awaitable<void> {
                                  co_await pool.wait_for_workers("bert");
                                  asio::co_spawn(ioc, submit_recording(pool, 1, {}, first), asio::detached);
                                  co_await pause(10ms);  // 1 runs alone, held by the gate: the next ones queue
                                  asio::co_spawn(ioc, submit_recording(pool, 2, {}, cancelled),
                                                 asio::bind_cancellation_slot(cancel.slot(), asio::detached));
                                  asio::co_spawn(ioc, submit_recording(pool, 3, {}, kept), asio::detached);
                                  co_await pause(10ms);
                                  CHECK(pool.queued_requests("bert") == 2);
                                  cancel.emit(asio::cancellation_type::terminal);
                                  co_await eventually([&] { return cancelled.completions == 1; });
                                  CHECK(pool.queued_requests("bert") == 1);
                                  gate.open();
                                  co_await eventually([&] { return kept.completions == 1; });
                                }),
                 asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(cancelled.error == asio::error::operation_aborted);
  CHECK(first.value == 1);
  CHECK(kept.value == 3);
  CHECK(batches == std::vector<std::vector<int>>{{1}, {3}});
}

TEST_CASE("batching_for_key sets each key's batches, one out of range fails that key's load", "[batching]") {
  asio::io_context ioc;
  std::vector<std::vector<int>> batches;
  PoolConfig config = TestConfig();
  config.batching_for_key = [](const std::string& key) {
    BatchConfig b;
    if (key == "bulk") {
      b.max_batch_size = 4;
      b.max_batch_delay = 10s;
    } else if (key == "broken") {
      b.max_batch_size = 0;
    }
    return b;
  };
  IntPool pool(ioc, config, scripted_loader(std::make_shared<LoadScript>()), batched(recording_batch(batches)));
  std::vector<Outcome> bulk(4), solo(2);
  error_code broken;
  asio::co_spawn(
      ioc,
      shutdown_after(pool,
                     [&]() -> asio::awaitable<void> {
                       co_await pool.wait_for_workers("bulk");
                       for (int i = 0; i < 4; ++i) {
                         asio::co_spawn(ioc, submit_recording(pool, 10 + i, {}, bulk[i], "bulk"), asio::detached);
                       }
                       co_await eventually([&] { return bulk[3].completions == 1; });
                       co_await pool.wait_for_workers("solo");
                       for (int i = 0; i < 2; ++i) {
                         asio::co_spawn(ioc, submit_recording(pool, 20 + i, {}, solo[i], "solo"), asio::detached);
                       }
                       co_await eventually([&] { return solo[1].completions == 1; });
                       auto [e] =
                           co_await pool.async_wait_for_workers("broken", 5s, asio::as_tuple(asio::use_awaitable));
                       broken = e;
                     }),
      asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  for (int i = 0; i < 4; ++i) CHECK(bulk[i].value == 11 + i);
  for (int i = 0; i < 2; ++i) CHECK(solo[i].value == 21 + i);
  CHECK(pool.stats().keys.at("bulk").batch_sizes.at(4) == 1);  // one batch of four
  CHECK(pool.stats().keys.at("solo").batch_sizes.at(1) == 2);  // the default: no batching
  CHECK(broken == errc::spawn_failed);
}

TEST_CASE("memory eviction never takes a worker in a batch: a spawn that needs its memory fails, the batch completes",
          "[batching][faults][memory]") {
  asio::io_context ioc;
  Gate gate(ioc.get_executor());
  PoolConfig config = batching(3, 10s);
  config.memory_budget = 100;
  config.worker_footprint = [](const std::string&) { return std::uint64_t{100}; };  // one worker fits
  IntPool pool(ioc, config, scripted_loader(std::make_shared<LoadScript>()),
               batched([&](Model&, std::span<int> requests) -> asio::awaitable<std::vector<outcome<int>>> {
                 co_await gate.pass();
                 co_return std::vector<outcome<int>>(requests.begin(), requests.end());
               }));
  std::vector<Outcome> held(3);
  Outcome other;
  asio::co_spawn(ioc,
                 shutdown_after(pool,
                                [&]() -> asio::awaitable<void> {
                                  co_await pool.wait_for_workers("bert");
                                  for (int i = 0; i < 3; ++i) {
                                    asio::co_spawn(ioc, submit_recording(pool, i, {}, held[i]), asio::detached);
                                  }
                                  co_await pause(10ms);  // a full batch runs, held by the gate
                                  SubmitOptions patient;
                                  patient.timeout = 10s;
                                  asio::co_spawn(
                                      ioc,
                                      [&]() -> asio::awaitable<void> {
                                        auto [e, v] = co_await pool.async_submit("gpt", 7, patient,
                                                                                 asio::as_tuple(asio::use_awaitable));
                                        other.error = error_of(e);
                                        other.value = v;
                                        ++other.completions;
                                      },
                                      asio::detached);
                                  // bert's worker holds a batch: not idle, not evicted, and gpt does not fit.
                                  co_await eventually([&] { return other.completions == 1; });
                                  CHECK(held[0].completions == 0);
                                  gate.open();
                                  co_await eventually([&] { return held[2].completions == 1; });
                                }),
                 asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  for (int i = 0; i < 3; ++i) {
    CHECK(held[i].completions == 1);
    CHECK(held[i].value == i);
  }
  CHECK(other.error == errc::memory_exhausted);
  CHECK(pool.stats().keys.at("bert").evictions == 0);
}

TEST_CASE("batching without a batch handler, or out of range, is refused at construction", "[batching]") {
  asio::io_context ioc;
  auto load = scripted_loader(std::make_shared<LoadScript>());
  CHECK_THROWS_AS(IntPool(ioc, batching(2, 0ms), load, echo_handler()), boost::system::system_error);
  std::vector<std::vector<int>> batches;
  CHECK_THROWS_AS(IntPool(ioc, batching(0, 0ms), load, batched(recording_batch(batches))), boost::system::system_error);
  CHECK_THROWS_AS(IntPool(ioc, batching(2, -1ms), load, batched(recording_batch(batches))),
                  boost::system::system_error);
}
