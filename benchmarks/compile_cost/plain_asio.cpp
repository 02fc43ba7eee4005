// The README's quick start written on plain Asio channels, what compile_cost.sh
// compares it with: the same program, with what the quick start uses and no
// more. A key's workers are spawned on its first request (two, the pool's
// default), each loads its model once and then serves the key's bounded queue
// (a concurrent_channel of 100, the pool's default); a reply channel per
// request carries the answer or the handler's exception; wait_for_workers has a
// deadline; shutdown lets the queues drain and stops the workers still running
// at its deadline; spdlog writes the log lines. What the pool does unasked
// (health pings, request timeouts, idle eviction, scale-up, the breaker, the
// memory budget, retries) is left out: the quick start does not use it.

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/concurrent_channel.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <spdlog/spdlog.h>

#include <array>
#include <chrono>
#include <exception>
#include <iostream>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

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

/// Workers per key, loaded on the key's first request, and one request queue per key.
/// All of it runs on the io_context's one thread.
class Workers {
 public:
  explicit Workers(asio::io_context& ioc) : ioc_(ioc), deadline_(ioc) {}

  /// Queues `request` for `key`'s workers, spawning them on the key's first request.
  asio::awaitable<std::string> submit(const std::string& key, std::string request) {
    auto reply = std::make_shared<reply_channel>(ioc_, 1);
    Job job{std::move(request), reply};  // named: GCC 12 destroys a braced temporary of a co_await expression twice
    co_await key_for(key).jobs.async_send(std::exception_ptr(), std::move(job), asio::use_awaitable);
    co_return co_await reply->async_receive(asio::use_awaitable);
  }

  /// Returns once `key` has a loaded worker; throws if `timeout` passes first.
  asio::awaitable<void> wait_for_workers(const std::string& key, std::chrono::steady_clock::duration timeout) {
    Key& k = key_for(key);
    if (k.ready > 0) co_return;
    asio::steady_timer timer(ioc_, timeout);
    k.waiters.push_back(&timer);
    auto [ec] = co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
    std::erase(k.waiters, &timer);
    if (!ec) throw std::runtime_error("no worker of '" + key + "' ready in time");
  }

  std::size_t worker_count(const std::string& key) const {
    auto it = keys_.find(key);
    return it == keys_.end() ? 0 : it->second->ready;
  }

  /// Queues one end-of-work job per worker behind each key's requests; the
  /// workers end as they take them. Those still running at `timeout` are cancelled.
  asio::awaitable<void> shutdown(std::chrono::steady_clock::duration timeout) {
    spdlog::info("shutting down ({} worker(s) running)", running_);
    if (running_ > 0) {
      deadline_.expires_after(timeout);  // the last worker to end cancels it
      for (auto& [name, k] : keys_) asio::co_spawn(ioc_, end_after_queue(*k), asio::detached);
      auto [ec] = co_await deadline_.async_wait(asio::as_tuple(asio::use_awaitable));
      if (!ec) {
        spdlog::info("shutdown deadline reached, stopping {} worker(s)", running_);
        for (auto& [name, k] : keys_) {
          k->jobs.close();
          for (auto& stop : k->stop) stop.emit(asio::cancellation_type::terminal);
        }
      }
    }
    spdlog::info("shut down");
  }

 private:
  using reply_channel = asio::experimental::concurrent_channel<void(std::exception_ptr, std::string)>;
  struct Job {
    std::string request;
    std::shared_ptr<reply_channel> reply;
  };
  using job_channel = asio::experimental::concurrent_channel<void(std::exception_ptr, Job)>;

  static constexpr std::size_t workers_per_key = 2;
  static constexpr std::size_t queue_capacity = 100;

  struct Key {
    Key(asio::io_context& ioc, std::string key) : name(std::move(key)), jobs(ioc, queue_capacity) {}
    std::string name;
    job_channel jobs;                                             // a job without a reply channel ends a worker
    std::array<asio::cancellation_signal, workers_per_key> stop;  // one per worker: shutdown's deadline
    std::size_t ready = 0;                                        // workers loaded and serving
    std::vector<asio::steady_timer*> waiters;                     // wait_for_workers calls, woken by the first load
  };

  Key& key_for(const std::string& key) {
    auto& k = keys_[key];
    if (!k) {
      k = std::make_unique<Key>(ioc_, key);
      spdlog::info("key '{}' is cold, spawning {} worker(s)", key, workers_per_key);
      for (std::size_t i = 0; i < workers_per_key; ++i) {
        ++running_;
        asio::co_spawn(ioc_, serve(*k), asio::bind_cancellation_slot(k->stop[i].slot(), asio::detached));
      }
    }
    return *k;
  }

  asio::awaitable<void> serve(Key& k) {
    try {
      Model model = co_await load(k.name);
      ++k.ready;
      spdlog::info("key '{}' worker ready", k.name);
      for (auto* waiter : k.waiters) waiter->cancel();
      for (;;) {
        auto [closed, job] = co_await k.jobs.async_receive(asio::as_tuple(asio::use_awaitable));
        if (closed || !job.reply) break;
        std::exception_ptr failed;
        std::string answer;
        try {
          answer = co_await handle(model, std::move(job.request));
        } catch (...) {
          failed = std::current_exception();
        }
        co_await job.reply->async_send(failed, std::move(answer), asio::use_awaitable);
      }
    } catch (const std::exception& e) {
      spdlog::warn("key '{}' worker failed: {}", k.name, e.what());
    }
    if (--running_ == 0) deadline_.cancel();
  }

  asio::awaitable<void> end_after_queue(Key& k) {
    for (std::size_t i = 0; i < workers_per_key; ++i) {
      Job end;  // named: GCC 12 destroys a braced temporary of a co_await expression twice
      co_await k.jobs.async_send(std::exception_ptr(), std::move(end), asio::as_tuple(asio::use_awaitable));
    }
  }

  asio::io_context& ioc_;
  std::map<std::string, std::unique_ptr<Key>> keys_;
  std::size_t running_ = 0;      // workers spawned and not yet ended
  asio::steady_timer deadline_;  // shutdown's deadline
};

int main() {
  asio::io_context ioc;
  Workers workers{ioc};

  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        std::string answer = co_await workers.submit("bert", "hello");  // spawns bert once, queues, answers
        std::cout << answer << "\n";
        co_await workers.wait_for_workers("bert", 5s);  // ready at once now
        std::cout << "bert has " << workers.worker_count("bert") << " worker(s) ready\n";
        co_await workers.shutdown(5s);
      },
      asio::detached);
  ioc.run();
  return 0;
}
