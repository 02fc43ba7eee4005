// Streaming: a "generate" model writes tokens one at a time. One reader takes
// the whole answer; a second reader stops after five tokens, which stops the
// generation and frees the worker for the next request; a third prompt makes
// the model fail half-way, and its reader gets the tokens so far, then the error.

#include <coropool.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include <chrono>
#include <iostream>
#include <stdexcept>
#include <string>

namespace asio = boost::asio;
using namespace std::chrono_literals;

struct Model {};

int main() {
  asio::io_context ioc;
  coropool::PoolConfig config;
  config.cold_start_workers = 1;
  config.max_workers_per_key = 1;  // one worker: the early exit must free it
  config.stream_buffer = 4;        // a slow reader holds the writer 4 tokens ahead at most

  coropool::Pool<std::string, std::string> pool{
      ioc, config, [](const std::string&) -> asio::awaitable<Model> { co_return Model{}; },
      [](Model&, std::string prompt) -> asio::awaitable<std::string> { co_return "echo: " + prompt; },
      [](Model&, std::string prompt, coropool::StreamWriter<std::string>& out) -> asio::awaitable<void> {
        for (int i = 0; i < 20; ++i) {
          if (prompt == "fail" && i == 3) throw std::runtime_error("the model ran out of memory");
          co_await out.write(prompt + "#" + std::to_string(i) + " ");
        }
      }};

  bool as_described = false;  // every step below went as its output line says
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        auto whole = pool.submit_stream("llm", "hello");
        int tokens = 0;
        while (auto token = co_await whole.next()) ++tokens;
        std::cout << "hello: " << tokens << " tokens, then the end\n";

        {
          auto partial = pool.submit_stream("llm", "long");
          for (int i = 0; i < 5; ++i) std::cout << *co_await partial.next();
          std::cout << "... the reader leaves\n";
        }  // destroying the stream stops the writer
        std::cout << co_await pool.submit("llm", "the worker is free") << "\n";

        auto failing = pool.submit_stream("llm", "fail");
        int before_failure = 0;
        try {
          while (auto token = co_await failing.next()) {
            std::cout << *token;
            ++before_failure;
          }
        } catch (const std::runtime_error& e) {
          std::cout << "then: " << e.what() << "\n";
          as_described = tokens == 20 && before_failure == 3;
        }
        co_await pool.async_shutdown(1s, asio::use_awaitable);
      },
      asio::detached);
  ioc.run();
  return as_described ? 0 : 1;
}
