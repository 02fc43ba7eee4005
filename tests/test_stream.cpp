#include <coropool/stream.hpp>

#include <catch2/catch.hpp>

#include "support.hpp"

#include <optional>

using namespace coropool;
using namespace coropool::test;

namespace {

/// What the stream handlers of these tests did.
struct Generation {
  std::atomic<int> started{0};
  std::atomic<int> written{0};
  std::atomic<int> stopped{0};   // ended by a failed write: the reader left
  std::atomic<int> threw{0};     // ended by its own exception
  std::atomic<int> finished{0};  // returned normally
};

/// Streams `request` chunks 0, 1, ...; a negative request streams three and then throws.
auto counting_stream(Generation& g) {
  return [&g](Model&, int request, StreamWriter<int>& out) -> asio::awaitable<void> {
    g.started.fetch_add(1);
    const int n = request < 0 ? 3 : request;
    try {
      for (int i = 0; i < n; ++i) {
        co_await out.write(i);
        g.written.fetch_add(1);
      }
    } catch (const boost::system::system_error&) {
      g.stopped.fetch_add(1);
      throw;
    }
    if (request < 0) {
      g.threw.fetch_add(1);
      throw model_error("out of memory at token 3");
    }
    g.finished.fetch_add(1);
  };
}

using StreamPool = Pool<int, int>;

}  // namespace

TEST_CASE("a stream delivers its chunks in order, then its end", "[stream]") {
  asio::io_context ioc;
  Generation g;
  StreamPool pool(ioc, TestConfig().stream_buffer(4), scripted_loader(std::make_shared<LoadScript>()), echo_handler(),
                  counting_stream(g));
  std::vector<int> chunks;
  bool ended = false;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        auto stream = pool.submit_stream("llm", 100);
        while (auto chunk = co_await stream.next()) chunks.push_back(*chunk);
        ended = true;
        const auto after_end = co_await stream.next();
        CHECK_FALSE(after_end);  // the end stays the end
        co_await pool.async_shutdown(1s, asio::use_awaitable);
      },
      asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  REQUIRE(chunks.size() == 100);
  for (int i = 0; i < 100; ++i) CHECK(chunks[static_cast<std::size_t>(i)] == i);
  CHECK(ended);
  CHECK(g.finished == 1);
}

TEST_CASE("a slow reader holds the writer back", "[stream]") {
  asio::io_context ioc;
  Generation g;
  StreamPool pool(ioc, TestConfig().stream_buffer(4), scripted_loader(std::make_shared<LoadScript>()), echo_handler(),
                  counting_stream(g));
  int most_ahead = 0;
  int read = 0;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        auto stream = pool.submit_stream("llm", 50);
        while (auto chunk = co_await stream.next()) {
          ++read;
          co_await pause(1ms);
          most_ahead = std::max(most_ahead, g.written.load() - read);
        }
        co_await pool.async_shutdown(1s, asio::use_awaitable);
      },
      asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(read == 50);
  CHECK(most_ahead <= 5);  // the buffer's 4, and one handed over as the reader took one
  CHECK(most_ahead >= 3);  // the writer did run ahead, up to the buffer
}

TEST_CASE("a stream handler's exception ends the stream in-band, after its chunks", "[stream]") {
  asio::io_context ioc;
  Generation g;
  StreamPool pool(ioc, TestConfig().stream_buffer(16), scripted_loader(std::make_shared<LoadScript>()), echo_handler(),
                  counting_stream(g));
  std::vector<int> chunks;
  std::string error;
  int after = 0;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        auto stream = pool.submit_stream("llm", -1);
        try {
          while (auto chunk = co_await stream.next()) chunks.push_back(*chunk);
        } catch (const model_error& e) {
          error = e.what();
        }
        after = co_await pool.submit("llm", 1);  // the worker serves on
        co_await pool.async_shutdown(1s, asio::use_awaitable);
      },
      asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(chunks == std::vector<int>{0, 1, 2});
  CHECK(error == "out of memory at token 3");
  CHECK(after == 2);
}

TEST_CASE("a reader that leaves stops the generation and frees the worker", "[stream]") {
  asio::io_context ioc;
  Generation g;
  StreamPool pool(ioc, TestConfig().stream_buffer(2), scripted_loader(std::make_shared<LoadScript>()), echo_handler(),
                  counting_stream(g));
  int after = 0;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        {
          auto stream = pool.submit_stream("llm", 1'000'000);
          // Read outside CHECK: GCC 12 may evaluate a co_await inside the macro twice.
          const auto first = co_await stream.next();
          const auto second = co_await stream.next();
          CHECK(first == std::optional<int>(0));
          CHECK(second == std::optional<int>(1));
        }                                         // destroyed mid-stream
        after = co_await pool.submit("llm", 41);  // one worker: it must be free again
        co_await pool.async_shutdown(1s, asio::use_awaitable);
      },
      asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(after == 42);
  CHECK(g.stopped == 1);
  CHECK(g.written < 10);
}

TEST_CASE("a stream withdrawn while queued is never handled", "[stream]") {
  asio::io_context ioc;
  Generation g;
  Gate gate(ioc.get_executor());
  StreamPool pool(
      ioc, TestConfig().stream_buffer(2), scripted_loader(std::make_shared<LoadScript>()),
      [&](Model&, int request) -> asio::awaitable<int> {
        co_await gate.pass();
        co_return request + 1;
      },
      counting_stream(g));
  int answer = 0;
  std::string refused;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        co_await pool.wait_for_workers("llm", 5s);
        pool.async_submit("llm", 1, [&](std::exception_ptr, int v) { answer = v; });  // holds the worker
        {
          auto stream = pool.submit_stream("llm", 5);
          co_await pause(2ms);
          CHECK(pool.queued_requests("llm") == 1);
        }
        CHECK(pool.queued_requests("llm") == 0);
        gate.open();
        co_await pause(5ms);
        // Without a stream handler, a stream ends with invalid_argument.
        StreamPool plain(co_await asio::this_coro::executor, TestConfig().stream_buffer(2),
                         scripted_loader(std::make_shared<LoadScript>()), echo_handler());
        auto stream = plain.submit_stream("llm", 5);
        try {
          [[maybe_unused]] auto chunk = co_await stream.next();
        } catch (const boost::system::system_error& e) {
          refused = e.code() == errc::invalid_argument ? "invalid_argument" : e.code().message();
        }
        co_await plain.async_shutdown(1s, asio::use_awaitable);
        co_await pool.async_shutdown(1s, asio::use_awaitable);
      },
      asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(answer == 2);
  CHECK(g.started == 0);
  CHECK(refused == "invalid_argument");
}

TEST_CASE("try_submit_stream ends at once with queue_full when the queue is full, and streams when there is room",
          "[stream]") {
  asio::io_context ioc;
  Generation g;
  Gate gate(ioc.get_executor());
  StreamPool pool(
      ioc, TestConfig().stream_buffer(2).queue(1), scripted_loader(std::make_shared<LoadScript>()),
      [&](Model&, int request) -> asio::awaitable<int> {
        co_await gate.pass();
        co_return request + 1;
      },
      counting_stream(g));
  std::vector<int> answers, chunks;
  std::string refused;
  std::size_t queued_after_refusal = 99;
  std::uint64_t rejected = 0;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        co_await pool.wait_for_workers("llm", 5s);
        for (int i : {1, 2}) {  // 1 holds the worker, 2 fills the queue
          pool.async_submit("llm", i, [&](std::exception_ptr, int v) { answers.push_back(v); });
        }
        co_await pause(2ms);
        REQUIRE(pool.queued_requests("llm") == 1);
        {
          // The gate is shut: a stream that waited for room would never end.
          auto stream = pool.try_submit_stream("llm", 3);
          try {
            [[maybe_unused]] auto chunk = co_await stream.next();
          } catch (const boost::system::system_error& e) {
            refused = e.code() == errc::queue_full ? "queue_full" : e.code().message();
          }
        }
        queued_after_refusal = pool.queued_requests("llm");
        rejected = pool.stats().keys.at("llm").rejected;
        gate.open();
        co_await pause(5ms);
        auto stream = pool.try_submit_stream("llm", 3);  // room now
        while (auto chunk = co_await stream.next()) chunks.push_back(*chunk);
        co_await pool.async_shutdown(1s, asio::use_awaitable);
      },
      asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(refused == "queue_full");
  CHECK(queued_after_refusal == 1);  // the refused stream took no place
  CHECK(rejected == 1);
  CHECK(answers == std::vector<int>{2, 3});
  CHECK(chunks == std::vector<int>{0, 1, 2});
  CHECK(g.started == 1);
}

TEST_CASE("many streams across two threads end exactly once", "[stream][concurrency]") {
  asio::io_context ioc(2);
  Generation g;
  PoolConfig config = TestConfig().stream_buffer(3);
  config.max_workers_per_key = 4;
  StreamPool pool(ioc, config, scripted_loader(std::make_shared<LoadScript>()), echo_handler(), counting_stream(g));
  constexpr int streams = 400;
  std::atomic<int> complete{0}, failed{0}, left{0}, bad_order{0};
  std::atomic<int> done{0};
  for (int s = 0; s < streams; ++s) {
    asio::co_spawn(
        asio::make_strand(ioc),
        [&, s]() -> asio::awaitable<void> {
          const int length = s % 7 == 0 ? -1 : 20;
          auto stream = pool.submit_stream("k" + std::to_string(s % 3), length);
          int expect = 0;
          try {
            while (auto chunk = co_await stream.next()) {
              if (*chunk != expect++) bad_order.fetch_add(1);
              if (s % 5 == 1 && expect == 3) {
                stream.close();  // a reader that leaves early
                left.fetch_add(1);
                break;
              }
            }
            if (s % 5 != 1 || expect < 3) complete.fetch_add(1);
          } catch (const model_error&) {
            failed.fetch_add(1);
          }
          if (done.fetch_add(1) + 1 == streams) co_await pool.async_shutdown(1s, asio::use_awaitable);
        },
        asio::detached);
  }
  REQUIRE(run_until_idle(ioc, 2));
  CHECK(complete + failed + left == streams);
  CHECK(bad_order == 0);
  CHECK(g.started == streams);
  CHECK(g.finished + g.stopped + g.threw == streams);  // every generation ended, one way
}
