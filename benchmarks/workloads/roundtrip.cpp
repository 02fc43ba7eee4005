// roundtrip: C client coroutines in closed loops submit to 4 workers of one
// key (queue 1,024) whose handle returns value + 1: requests per second and
// each request's latency. Rows for "coropool" (with and without health pings),
// "asio-channels": the same workload written by hand with a concurrent_channel
// request queue and a reply channel per request, "asio-floor" (one post to a
// worker strand and one back, no pool), and the "-context-per-thread" shapes
// (one io_context and one system per io thread).

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/concurrent_channel.hpp>
#include <boost/asio/strand.hpp>

#include <algorithm>
#include <cstdlib>
#include <exception>
#include <functional>
#include <memory>
#include <string_view>

#include "callers.hpp"

namespace coropool_bench {
namespace {

struct RoundtripResult {
  double req_per_s;
  Percentiles latency;
};

/// One client's latencies, on cache lines of its own: clients on different
/// threads appending side by side would otherwise write to one line per
/// request, a hand-off between the cores the systems measured do not make.
struct alignas(64) ClientLatencies : std::vector<double> {};

/// The rate of `requests` made in `elapsed`, and the latency percentiles of all clients.
RoundtripResult roundtrip_result(int requests, clock_type::duration elapsed,
                                 const std::vector<ClientLatencies>& latency) {
  std::vector<double> all;
  for (const auto& l : latency) all.insert(all.end(), l.begin(), l.end());
  return {requests / std::chrono::duration<double>(elapsed).count(), percentiles(std::move(all))};
}

/// One closed-loop client: takes request numbers from `next` until
/// `requests`, awaits `roundtrip(i)` for each and records its latency.
template <class Roundtrip>
asio::awaitable<void> closed_loop_client(std::atomic<int>& next, int requests, std::size_t expected,
                                         ClientLatencies& mine, Roundtrip roundtrip) {
  mine.reserve(expected);
  for (int i = next++; i < requests; i = next++) {
    const auto t0 = clock_type::now();
    const int answer = co_await roundtrip(i);
    mine.push_back(std::chrono::duration<double, std::micro>(clock_type::now() - t0).count());
    if (answer != i + 1) std::abort();
  }
}

/// Runs `clients` closed-loop clients, each calling `roundtrip(value)` until
/// `requests` have been made in all; `ready()` must complete before timing starts.
template <class Ready, class Roundtrip, class Stop>
RoundtripResult run_roundtrip(asio::io_context& ioc, int clients, int requests, Ready ready, Roundtrip roundtrip,
                              Stop stop) {
  std::atomic<int> next{0};
  std::atomic<int> clients_left{clients};
  std::vector<ClientLatencies> latency(static_cast<std::size_t>(clients));
  clock_type::time_point start;
  clock_type::time_point end;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        co_await ready();
        start = clock_type::now();
        for (int c = 0; c < clients; ++c) {
          asio::co_spawn(
              ioc,
              [&, c]() -> asio::awaitable<void> {
                co_await closed_loop_client(next, requests, static_cast<std::size_t>(requests / clients + 1),
                                            latency[static_cast<std::size_t>(c)], roundtrip);
                if (--clients_left == 0) {
                  end = clock_type::now();
                  co_await stop();
                }
              },
              asio::detached);
        }
      },
      asio::detached);
  run_threads(ioc);
  return roundtrip_result(requests, end - start, latency);
}

constexpr int roundtrip_workers = 4;
constexpr std::size_t roundtrip_queue = 1024;

/// The workload on coropool: `workers` workers of one key.
/// `health_interval_ms` 0: the default interval (1 s), so no ping falls in a row.
class PoolSystem {
 public:
  PoolSystem(asio::io_context& ioc, int workers, int health_interval_ms = 0)
      : pool_(ioc, config(workers, health_interval_ms), timed_loader(1ms, nullptr),
              [](Model&, int x) -> asio::awaitable<int> { co_return x + 1; }) {}

  asio::awaitable<void> ready() { return pool_.wait_for_workers("model", 10s); }
  asio::awaitable<int> roundtrip(int i) { return pool_.submit("model", i); }
  asio::awaitable<void> stop() { return pool_.async_shutdown(1s, asio::use_awaitable); }

 private:
  static coropool::PoolConfig config(int workers, int health_interval_ms) {
    coropool::PoolConfig config = quiet_config();
    if (health_interval_ms > 0) config.health_interval = std::chrono::milliseconds(health_interval_ms);
    config.cold_start_workers = static_cast<std::size_t>(workers);
    config.max_workers_per_key = static_cast<std::size_t>(workers);
    config.queue_capacity = roundtrip_queue;
    config.compute_threads = 1;
    return config;
  }

  BenchPool pool_;
};

/// The same workload with Asio's own channels and no pool, what a careful
/// hand-written design reaches: a concurrent_channel request queue read by
/// `workers` coroutines, and a reply channel per request.
class ChannelSystem {
 public:
  ChannelSystem(asio::io_context& ioc, int workers) : ioc_(ioc), queue_(ioc, roundtrip_queue) {
    for (int w = 0; w < workers; ++w) {
      asio::co_spawn(
          ioc,
          [this]() -> asio::awaitable<void> {
            for (;;) {
              auto [ec, job] = co_await queue_.async_receive(asio::as_tuple(asio::use_awaitable));
              if (ec) co_return;  // closed
              co_await job.reply->async_send(boost::system::error_code(), job.value + 1, asio::use_awaitable);
            }
          },
          asio::detached);
    }
  }

  asio::awaitable<void> ready() { co_return; }

  asio::awaitable<int> roundtrip(int i) {
    auto reply = std::make_shared<reply_channel>(ioc_, 1);
    Job job{i, reply};  // named: GCC 12 destroys a braced temporary of a co_await expression twice
    co_await queue_.async_send(boost::system::error_code(), std::move(job), asio::use_awaitable);
    co_return co_await reply->async_receive(asio::use_awaitable);
  }

  asio::awaitable<void> stop() {
    queue_.close();
    co_return;
  }

 private:
  using reply_channel = asio::experimental::concurrent_channel<void(boost::system::error_code, int)>;
  struct Job {
    int value;
    std::shared_ptr<reply_channel> reply;
  };
  using request_channel = asio::experimental::concurrent_channel<void(boost::system::error_code, Job)>;

  asio::io_context& ioc_;
  request_channel queue_;
};

/// A system on one io_context run by every io thread.
template <class System, class... Args>
RoundtripResult roundtrip_shared(int clients, int requests, Args... args) {
  asio::io_context ioc(io_threads());
  System system(ioc, roundtrip_workers, args...);
  return run_roundtrip(
      ioc, clients, requests, [&] { return system.ready(); }, [&](int i) { return system.roundtrip(i); },
      [&] { return system.stop(); });
}

/// The same workload in Asio's "io_context per core" shape: one io_context
/// per io thread, each with its own System of workers / io_threads workers
/// and clients / io_threads of the clients. No request crosses threads, so
/// this is what the same code does when the io threads share nothing; with
/// one shared io_context every hand-off between the threads moves cache lines
/// from one core to the other (see core_handoff).
template <class System>
RoundtripResult roundtrip_per_context(int clients, int requests) {
  struct Shard {
    asio::io_context ioc{1};
    std::unique_ptr<System> system;
    std::atomic<int> next{0};
    int clients_left = 0;  // only this shard's thread touches it
  };
  std::vector<std::unique_ptr<Shard>> shards;
  for (int s = 0; s < io_threads(); ++s) {
    auto shard = std::make_unique<Shard>();
    shard->system = std::make_unique<System>(shard->ioc, roundtrip_workers / io_threads());
    // Ready before the clock starts: each context runs on this thread until then.
    bool ready = false;
    asio::co_spawn(shard->ioc, shard->system->ready(), [&](std::exception_ptr e) {
      if (e) std::abort();
      ready = true;
    });
    while (!ready) shard->ioc.run_one();
    shards.push_back(std::move(shard));
  }
  const int per_context = requests / io_threads();
  std::atomic<int> clients_left{clients};
  std::vector<ClientLatencies> latency(static_cast<std::size_t>(clients));
  clock_type::time_point end;
  for (int c = 0; c < clients; ++c) {
    Shard* shard = shards[static_cast<std::size_t>(c % io_threads())].get();
    ++shard->clients_left;
    asio::co_spawn(
        shard->ioc,
        [&, c, shard]() -> asio::awaitable<void> {
          co_await closed_loop_client(shard->next, per_context, static_cast<std::size_t>(requests / clients + 1),
                                      latency[static_cast<std::size_t>(c)],
                                      [shard](int i) { return shard->system->roundtrip(i); });
          if (--clients_left == 0) end = clock_type::now();
          if (--shard->clients_left == 0) co_await shard->system->stop();
        },
        asio::detached);
  }
  const auto start = clock_type::now();
  std::vector<std::thread> threads;
  for (std::size_t s = 1; s < shards.size(); ++s) threads.emplace_back([&, s] { shards[s]->ioc.run(); });
  shards[0]->ioc.run();
  for (auto& t : threads) t.join();
  return roundtrip_result(per_context * io_threads(), end - start, latency);
}

/// The floor under any request path on Asio: no pool, no queue, no
/// coroutine; per request, one post onto one of 4 worker strands and one post
/// back to the client's executor, where the client's callback makes its next
/// request. What this machine's two io threads do before any design is added.
RoundtripResult roundtrip_asio_floor(int clients, int requests) {
  asio::io_context ioc(io_threads());
  std::vector<asio::strand<asio::io_context::executor_type>> workers;
  for (int w = 0; w < roundtrip_workers; ++w) workers.push_back(asio::make_strand(ioc));
  std::atomic<int> next{0};
  std::atomic<int> clients_left{clients};
  std::vector<ClientLatencies> latency(static_cast<std::size_t>(clients));
  clock_type::time_point end;
  std::function<void(int)> request = [&](int c) {
    const int i = next++;
    if (i >= requests) {
      if (--clients_left == 0) end = clock_type::now();
      return;
    }
    const auto t0 = clock_type::now();
    asio::post(workers[static_cast<std::size_t>(i % roundtrip_workers)], [&, c, i, t0] {
      const int answer = i + 1;
      asio::post(ioc, [&, c, i, t0, answer] {
        latency[static_cast<std::size_t>(c)].push_back(
            std::chrono::duration<double, std::micro>(clock_type::now() - t0).count());
        if (answer != i + 1) std::abort();
        request(c);
      });
    });
  };
  for (int c = 0; c < clients; ++c) {
    latency[static_cast<std::size_t>(c)].reserve(static_cast<std::size_t>(requests / clients + 1));
    asio::post(ioc, [&, c] { request(c); });
  }
  const auto start = clock_type::now();
  run_threads(ioc);
  return roundtrip_result(requests, end - start, latency);
}

void write_roundtrip(const char* impl, int clients, int requests, int health_interval_ms, const RoundtripResult& r) {
  Row row("roundtrip", impl, io_threads());
  row.param("clients", clients).param("workers", roundtrip_workers).param("queue", roundtrip_queue);
  row.param("requests", requests);
  if (health_interval_ms > 0) row.param("health_interval_ms", health_interval_ms);
  row.metric("req_per_s", r.req_per_s, 0).metric("p50_us", r.latency.p50, 1).metric("p99_us", r.latency.p99, 1);
  row.write();
}

}  // namespace

void roundtrip() {
  // About a second per row at the rates this machine reaches.
  constexpr int requests = 1'500'000;
  constexpr int baseline_requests = 400'000;
  // The rows with and without health pings are compared: each is the median
  // of three runs, alternated so that both see the same machine (one run on
  // this VM moves by 10 % or more from the next).
  // COROPOOL_BENCH_ROUNDTRIP=quick: one run of the "coropool" row without
  // pings and the "asio-floor" row, nothing else: a few seconds per client
  // count, for comparing builds in many alternated rounds (benchmarks/README.md).
  const char* mode = std::getenv("COROPOOL_BENCH_ROUNDTRIP");
  const bool quick = mode && std::string_view(mode) == "quick";
  const int runs = quick ? 1 : 3;
  auto median = [](std::vector<RoundtripResult> r) {
    std::sort(r.begin(), r.end(), [](const auto& a, const auto& b) { return a.req_per_s < b.req_per_s; });
    return r[r.size() / 2];
  };
  // COROPOOL_BENCH_CLIENTS=256 runs only the rows of those clients (a comma-separated list).
  std::vector<int> client_counts{1, 16, 256};
  if (const char* only = std::getenv("COROPOOL_BENCH_CLIENTS")) {
    client_counts.clear();
    for (const char* p = only; *p;) {
      char* end = nullptr;
      const long c = std::strtol(p, &end, 10);
      if (end == p) break;
      if (c > 0) client_counts.push_back(static_cast<int>(c));
      p = *end == ',' ? end + 1 : end;
    }
  }
  for (int clients : client_counts) {
    std::vector<RoundtripResult> quiet;
    std::vector<RoundtripResult> pinged;
    for (int run = 0; run < runs; ++run) {
      quiet.push_back(roundtrip_shared<PoolSystem>(clients, requests, 0));
      if (!quick) pinged.push_back(roundtrip_shared<PoolSystem>(clients, requests, 10));
    }
    write_roundtrip("coropool", clients, requests, 0, median(quiet));
    if (quick) {
      write_roundtrip("asio-floor", clients, requests, 0, roundtrip_asio_floor(clients, requests));
      continue;
    }
    write_roundtrip("coropool", clients, requests, 10, median(pinged));
    write_roundtrip("asio-channels", clients, baseline_requests, 0,
                    roundtrip_shared<ChannelSystem>(clients, baseline_requests));
    write_roundtrip("asio-floor", clients, requests, 0, roundtrip_asio_floor(clients, requests));
    if (clients % io_threads() == 0 && roundtrip_workers % io_threads() == 0) {
      write_roundtrip("coropool-context-per-thread", clients, requests, 0,
                      roundtrip_per_context<PoolSystem>(clients, requests));
      write_roundtrip("asio-channels-context-per-thread", clients, baseline_requests, 0,
                      roundtrip_per_context<ChannelSystem>(clients, baseline_requests));
    }
  }
}

}  // namespace coropool_bench
