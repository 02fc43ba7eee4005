// coropool_bench: workloads measured as JSON lines, one object per row.
//
//   coropool_bench [workload...]     no argument runs them all
//   COROPOOL_BENCH_THREADS=N         io threads per row (default 2)
//
// cold_start_wake  callers arrive over 100 ms at a cold key whose load takes
//                  200 ms; latency = each caller's resume time minus the
//                  instant the load ended.
// starvation       a 1 ms heartbeat timer's lag while 1,000 callers wait.
// idle_wait_cpu    CPU seconds the process uses while 10,000 callers wait 1 s.
// roundtrip        C client coroutines in closed loops submit to 4 workers of
//                  one key (queue 1,024) whose handle returns value + 1:
//                  requests per second and each request's latency.
// memory           heap bytes added per queued request and per idle worker.
// core_handoff     one cache line passed back and forth between two threads:
//                  what any hand-off between the io threads costs here.
//
// The first three run for impl "coropool" and for "poll50ms", the old
// system's fixed loop: check has_workers, then sleep 50 ms on a timer.
// cold_start_wake also runs "asio-floor": the same callers woken with no pool
// at all. roundtrip also runs "asio-channels": the same workload written by
// hand with a concurrent_channel request queue and a reply channel per request,
// "asio-floor" (one post to a worker strand and one back, no pool), and
// "coropool-context-per-thread" (one io_context and one Pool per io thread).

#include <coropool.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/concurrent_channel.hpp>
#include <boost/asio/io_context.hpp>

#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>

#include <sys/resource.h>

#include <malloc.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace asio = boost::asio;
using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

namespace {

// The io threads of every row: 2 (the target machine's cores) unless COROPOOL_BENCH_THREADS says otherwise.
const int io_threads = [] {
  const char* threads = std::getenv("COROPOOL_BENCH_THREADS");
  return threads ? std::max(1, std::atoi(threads)) : 2;
}();

struct Model {};
using BenchPool = coropool::Pool<int, int>;

coropool::PoolConfig quiet_config() {
  coropool::PoolConfig config;
  config.logger = std::make_shared<spdlog::logger>("bench", std::make_shared<spdlog::sinks::null_sink_mt>());
  return config;
}

/// A loader that takes `duration` and stamps the moment the first load ended.
auto timed_loader(clock_type::duration duration, std::atomic<clock_type::rep>* loaded_at) {
  return [duration, loaded_at](const std::string&) -> asio::awaitable<Model> {
    asio::steady_timer timer(co_await asio::this_coro::executor, duration);
    co_await timer.async_wait(asio::use_awaitable);
    clock_type::rep none = 0;
    if (loaded_at) loaded_at->compare_exchange_strong(none, clock_type::now().time_since_epoch().count());
    co_return Model{};
  };
}

auto no_handler() {
  return [](Model&, int x) -> asio::awaitable<int> { co_return x; };
}

/// The old system's wait: check, then sleep 50 ms on a timer. Its spawn is
/// started once per row by start_spawn().
asio::awaitable<void> poll_wait(BenchPool& pool, std::string key) {
  asio::steady_timer timer(co_await asio::this_coro::executor);
  while (!pool.has_workers(key)) {
    timer.expires_after(50ms);
    co_await timer.async_wait(asio::use_awaitable);
  }
}

asio::awaitable<void> wait(bool polling, BenchPool& pool, std::string key) {
  if (polling) {
    co_await poll_wait(pool, key);
  } else {
    co_await pool.wait_for_workers(key, 60s);
  }
}

/// Waits as `wait` does; the last of `remaining` callers shuts the pool down.
asio::awaitable<void> wait_then_shut_down(bool polling, BenchPool& pool, std::atomic<int>& remaining) {
  co_await wait(polling, pool, "model");
  if (--remaining == 0) co_await pool.async_shutdown(0s, asio::use_awaitable);
}

void start_spawn(bool polling, BenchPool& pool) {
  if (polling) pool.async_wait_for_workers("model", 60s, asio::detached);
}

void run_threads(asio::io_context& ioc) {
  std::vector<std::thread> threads;
  for (int i = 1; i < io_threads; ++i) threads.emplace_back([&] { ioc.run(); });
  ioc.run();
  for (auto& t : threads) t.join();
}

struct Percentiles {
  double p50, p99, max;
};

Percentiles percentiles(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  auto at = [&](double q) { return values[static_cast<std::size_t>(q * static_cast<double>(values.size() - 1))]; };
  return {at(0.50), at(0.99), values.back()};
}

const char* impl_name(bool polling) { return polling ? "poll50ms" : "coropool"; }

double cpu_seconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& tv) {
    return static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) / 1e6;
  };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

/// Spawns `waiters` callers arriving over the first 100 ms (at once, for one):
/// each awaits `park()`, stamps its resume time in `resumed`, then calls `resumed_one()`.
template <class Park, class ResumedOne>
void spawn_callers(asio::io_context& ioc, int waiters, Park& park, ResumedOne& resumed_one,
                   std::vector<clock_type::time_point>& resumed) {
  resumed.assign(static_cast<std::size_t>(waiters), {});  // one slot per caller: no lock
  std::mt19937 random(42);
  std::uniform_int_distribution<int> arrival_us(0, 99'999);
  for (int i = 0; i < waiters; ++i) {
    const auto arrival = std::chrono::microseconds(waiters == 1 ? 0 : arrival_us(random));
    asio::co_spawn(
        ioc,
        [&, arrival, i]() -> asio::awaitable<void> {
          asio::steady_timer arrive(co_await asio::this_coro::executor, arrival);
          co_await arrive.async_wait(asio::use_awaitable);
          co_await park();
          resumed[static_cast<std::size_t>(i)] = clock_type::now();
          resumed_one();
        },
        asio::detached);
  }
}

void append_latencies(const std::vector<clock_type::time_point>& resumed, clock_type::time_point from,
                      std::vector<double>& latency_us) {
  for (auto t : resumed) latency_us.push_back(std::chrono::duration<double, std::micro>(t - from).count());
}

/// One cold start of `waiters` callers; appends each caller's wake latency.
void cold_start_once(bool polling, int waiters, std::vector<double>& latency_us) {
  asio::io_context ioc(io_threads);
  std::atomic<clock_type::rep> loaded_at{0};
  BenchPool pool(ioc, quiet_config(), timed_loader(200ms, &loaded_at), no_handler());
  std::atomic<int> remaining{waiters};
  start_spawn(polling, pool);
  auto park = [&] { return wait(polling, pool, "model"); };
  auto resumed_one = [&] {
    if (--remaining == 0) pool.async_shutdown(1s, asio::detached);
  };
  std::vector<clock_type::time_point> resumed;
  spawn_callers(ioc, waiters, park, resumed_one, resumed);
  run_threads(ioc);
  append_latencies(resumed, clock_type::time_point{clock_type::duration(loaded_at.load())}, latency_us);
}

/// The floor under any design on Asio coroutines: the same callers, parked as
/// bare completion handlers (no pool, no deadline timers) and woken when the
/// 200 ms "load" ends by batches of 64 direct calls posted to the io_context,
/// as coropool wakes them. What coropool adds is the distance to this row.
void cold_start_floor_once(int waiters, std::vector<double>& latency_us) {
  asio::io_context ioc(io_threads);
  std::mutex mutex;
  std::vector<asio::any_completion_handler<void()>> parked;
  bool woken = false;
  clock_type::time_point woke_at;
  auto park = [&] {
    return asio::async_initiate<const asio::use_awaitable_t<>&, void()>(
        [&](auto handler) {
          std::lock_guard lock(mutex);
          if (woken) {
            asio::post(ioc, std::move(handler));
          } else {
            parked.emplace_back(std::move(handler));
          }
        },
        asio::use_awaitable);
  };
  auto resumed_one = [] {};
  std::vector<clock_type::time_point> resumed;
  spawn_callers(ioc, waiters, park, resumed_one, resumed);
  asio::steady_timer load(ioc, 200ms);
  load.async_wait([&](boost::system::error_code) {
    std::vector<asio::any_completion_handler<void()>> all;
    {
      std::lock_guard lock(mutex);
      woken = true;
      woke_at = clock_type::now();
      all = std::move(parked);
    }
    for (std::size_t first = 0; first < all.size(); first += 64) {
      std::vector<asio::any_completion_handler<void()>> batch;
      for (std::size_t j = first; j < std::min(all.size(), first + 64); ++j) batch.push_back(std::move(all[j]));
      asio::post(ioc, [batch = std::move(batch)]() mutable {
        for (auto& handler : batch) std::move(handler)();
      });
    }
  });
  run_threads(ioc);
  append_latencies(resumed, woke_at, latency_us);
}

void cold_start_wake() {
  enum class Impl { coropool, poll50ms, asio_floor };
  for (Impl impl : {Impl::coropool, Impl::poll50ms, Impl::asio_floor}) {
    auto once = [impl](int waiters, std::vector<double>& latency_us) {
      if (impl == Impl::asio_floor) {
        cold_start_floor_once(waiters, latency_us);
      } else {
        cold_start_once(impl == Impl::poll50ms, waiters, latency_us);
      }
    };
    const char* name = impl == Impl::asio_floor ? "asio-floor" : impl_name(impl == Impl::poll50ms);
    std::vector<double> warm_up;  // pays the first-touch page faults, untimed
    once(100, warm_up);
    // Small waves repeat, so that their percentiles rest on more than one sample.
    for (auto [waiters, repetitions] : {std::pair{1, 25}, std::pair{100, 5}, std::pair{10'000, 3}}) {
      std::vector<double> latency_us;
      for (int r = 0; r < repetitions; ++r) once(waiters, latency_us);
      const auto p = percentiles(latency_us);
      std::printf(
          "{\"bench\":\"cold_start_wake\",\"impl\":\"%s\",\"threads\":%d,\"params\":{\"waiters\":%d,\"load_ms\":200,"
          "\"arrivals_ms\":100,\"repetitions\":%d},\"p50_us\":%.1f,\"p99_us\":%.1f,\"max_us\":%.1f}\n",
          name, io_threads, waiters, repetitions, p.p50, p.p99, p.max);
      std::fflush(stdout);
    }
  }
}

void starvation() {
  constexpr int waiters = 1000;
  constexpr auto period = 1ms;
  constexpr int beats = 1000;
  for (bool polling : {false, true}) {
    asio::io_context ioc(io_threads);
    BenchPool pool(ioc, quiet_config(), timed_loader(beats * period + 200ms, nullptr), no_handler());
    std::atomic<int> remaining{waiters};
    start_spawn(polling, pool);
    for (int i = 0; i < waiters; ++i) {
      asio::co_spawn(ioc, wait_then_shut_down(polling, pool, remaining), asio::detached);
    }
    std::vector<double> lag_us;
    asio::co_spawn(
        ioc,
        [&]() -> asio::awaitable<void> {
          asio::steady_timer heartbeat(co_await asio::this_coro::executor);
          auto next = clock_type::now();
          for (int i = 0; i < beats; ++i) {
            next += period;
            heartbeat.expires_at(next);
            co_await heartbeat.async_wait(asio::use_awaitable);
            lag_us.push_back(std::chrono::duration<double, std::micro>(clock_type::now() - next).count());
          }
        },
        asio::detached);
    run_threads(ioc);
    const auto p = percentiles(lag_us);
    std::printf(
        "{\"bench\":\"starvation\",\"impl\":\"%s\",\"threads\":%d,\"params\":{\"waiters\":%d,\"heartbeat_ms\":1,"
        "\"beats\":%d},\"p50_lag_us\":%.1f,\"p99_lag_us\":%.1f,\"max_lag_us\":%.1f}\n",
        impl_name(polling), io_threads, waiters, beats, p.p50, p.p99, p.max);
    std::fflush(stdout);
  }
}

void idle_wait_cpu() {
  constexpr int waiters = 10'000;
  for (bool polling : {false, true}) {
    asio::io_context ioc(io_threads);
    BenchPool pool(ioc, quiet_config(), timed_loader(1500ms, nullptr), no_handler());
    std::atomic<int> remaining{waiters};
    start_spawn(polling, pool);
    for (int i = 0; i < waiters; ++i) {
      asio::co_spawn(ioc, wait_then_shut_down(polling, pool, remaining), asio::detached);
    }
    double cpu = 0;
    asio::co_spawn(
        ioc,
        [&]() -> asio::awaitable<void> {
          // Let every caller park first, then measure one idle second.
          asio::steady_timer timer(co_await asio::this_coro::executor, 250ms);
          co_await timer.async_wait(asio::use_awaitable);
          const double before = cpu_seconds();
          timer.expires_after(1s);
          co_await timer.async_wait(asio::use_awaitable);
          cpu = cpu_seconds() - before;
        },
        asio::detached);
    run_threads(ioc);
    std::printf(
        "{\"bench\":\"idle_wait_cpu\",\"impl\":\"%s\",\"threads\":%d,\"params\":{\"waiters\":%d,\"seconds\":1},"
        "\"cpu_s\":%.4f}\n",
        impl_name(polling), io_threads, waiters, cpu);
    std::fflush(stdout);
  }
}

// --- roundtrip ---

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
  asio::io_context ioc(io_threads);
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
  for (int s = 0; s < io_threads; ++s) {
    auto shard = std::make_unique<Shard>();
    shard->system = std::make_unique<System>(shard->ioc, roundtrip_workers / io_threads);
    // Ready before the clock starts: each context runs on this thread until then.
    bool ready = false;
    asio::co_spawn(shard->ioc, shard->system->ready(), [&](std::exception_ptr e) {
      if (e) std::abort();
      ready = true;
    });
    while (!ready) shard->ioc.run_one();
    shards.push_back(std::move(shard));
  }
  const int per_context = requests / io_threads;
  std::atomic<int> clients_left{clients};
  std::vector<ClientLatencies> latency(static_cast<std::size_t>(clients));
  clock_type::time_point end;
  for (int c = 0; c < clients; ++c) {
    Shard* shard = shards[static_cast<std::size_t>(c % io_threads)].get();
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
  return roundtrip_result(per_context * io_threads, end - start, latency);
}

/// The floor under any request path on Asio: no pool, no queue, no
/// coroutine; per request, one post onto one of 4 worker strands and one post
/// back to the client's executor, where the client's callback makes its next
/// request. What this machine's two io threads do before any design is added.
RoundtripResult roundtrip_asio_floor(int clients, int requests) {
  asio::io_context ioc(io_threads);
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

void print_roundtrip(const char* impl, int clients, int requests, int health_interval_ms, const RoundtripResult& r) {
  char health[48] = "";
  if (health_interval_ms > 0) std::snprintf(health, sizeof health, ",\"health_interval_ms\":%d", health_interval_ms);
  std::printf(
      "{\"bench\":\"roundtrip\",\"impl\":\"%s\",\"threads\":%d,\"params\":{\"clients\":%d,\"workers\":%d,"
      "\"queue\":%zu,\"requests\":%d%s},\"req_per_s\":%.0f,\"p50_us\":%.1f,\"p99_us\":%.1f}\n",
      impl, io_threads, clients, roundtrip_workers, roundtrip_queue, requests, health, r.req_per_s, r.latency.p50,
      r.latency.p99);
  std::fflush(stdout);
}

void roundtrip() {
  // About a second per row at the rates this machine reaches.
  constexpr int requests = 1'500'000;
  constexpr int baseline_requests = 400'000;
  // The rows with and without health pings are compared: each is the median
  // of three runs, alternated so that both see the same machine (one run on
  // this VM moves by 10 % or more from the next).
  constexpr int runs = 3;
  auto median = [](std::vector<RoundtripResult> r) {
    std::sort(r.begin(), r.end(), [](const auto& a, const auto& b) { return a.req_per_s < b.req_per_s; });
    return r[r.size() / 2];
  };
  for (int clients : {1, 16, 256}) {
    std::vector<RoundtripResult> quiet;
    std::vector<RoundtripResult> pinged;
    for (int run = 0; run < runs; ++run) {
      quiet.push_back(roundtrip_shared<PoolSystem>(clients, requests, 0));
      pinged.push_back(roundtrip_shared<PoolSystem>(clients, requests, 10));
    }
    print_roundtrip("coropool", clients, requests, 0, median(quiet));
    print_roundtrip("coropool", clients, requests, 10, median(pinged));
    print_roundtrip("asio-channels", clients, baseline_requests, 0,
                    roundtrip_shared<ChannelSystem>(clients, baseline_requests));
    print_roundtrip("asio-floor", clients, requests, 0, roundtrip_asio_floor(clients, requests));
    if (clients % io_threads == 0 && roundtrip_workers % io_threads == 0) {
      print_roundtrip("coropool-context-per-thread", clients, requests, 0,
                      roundtrip_per_context<PoolSystem>(clients, requests));
      print_roundtrip("asio-channels-context-per-thread", clients, baseline_requests, 0,
                      roundtrip_per_context<ChannelSystem>(clients, baseline_requests));
    }
  }
}

// --- idle_cpu ---

/// CPU used by a pool whose keys are all loaded and idle, at the default
/// health interval: the price of the pings and the maintenance tick.
void idle_cpu() {
  constexpr int keys = 100;
  constexpr int workers_per_key = 4;
  constexpr auto measured = 10s;
  asio::io_context ioc(io_threads);
  coropool::PoolConfig config = quiet_config();
  config.cold_start_workers = workers_per_key;
  config.max_workers_per_key = workers_per_key;
  config.compute_threads = 1;
  BenchPool pool(ioc, config, timed_loader(1ms, nullptr), no_handler());
  double cpu = 0;
  std::size_t live = 0;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        for (int k = 0; k < keys; ++k) co_await pool.wait_for_workers("model" + std::to_string(k), 10s);
        asio::steady_timer timer(co_await asio::this_coro::executor, 250ms);  // the last loads finish
        co_await timer.async_wait(asio::use_awaitable);
        const double before = cpu_seconds();
        timer.expires_after(measured);
        co_await timer.async_wait(asio::use_awaitable);
        cpu = cpu_seconds() - before;
        for (int k = 0; k < keys; ++k) live += pool.live_worker_count("model" + std::to_string(k));
        co_await pool.async_shutdown(1s, asio::use_awaitable);
      },
      asio::detached);
  run_threads(ioc);
  if (live != static_cast<std::size_t>(keys * workers_per_key)) std::abort();  // idle, not evicted
  std::printf(
      "{\"bench\":\"idle_cpu\",\"impl\":\"coropool\",\"threads\":%d,\"params\":{\"keys\":%d,"
      "\"workers_per_key\":%d,\"seconds\":%d},\"cpu_s\":%.4f}\n",
      io_threads, keys, workers_per_key, static_cast<int>(measured.count()), cpu);
  std::fflush(stdout);
}

// --- core_handoff ---

/// What one hand-off between two threads costs on this machine, with no
/// Asio and no pool: two threads pass a counter back and forth through one
/// cache line, spinning. Every request path that lets two io threads touch
/// the same data pays this per line and per direction.
void core_handoff() {
  constexpr int round_trips = 1'000'000;
  alignas(64) std::atomic<int> turn{0};
  std::thread other([&] {
    for (int i = 0; i < round_trips; ++i) {
      while (turn.load(std::memory_order_acquire) != 2 * i + 1) {
      }
      turn.store(2 * i + 2, std::memory_order_release);
    }
  });
  const auto start = clock_type::now();
  for (int i = 0; i < round_trips; ++i) {
    turn.store(2 * i + 1, std::memory_order_release);
    while (turn.load(std::memory_order_acquire) != 2 * i + 2) {
    }
  }
  const auto elapsed = clock_type::now() - start;
  other.join();
  std::printf(
      "{\"bench\":\"core_handoff\",\"impl\":\"atomic\",\"threads\":2,\"params\":{\"round_trips\":%d},"
      "\"round_trip_ns\":%.0f}\n",
      round_trips, std::chrono::duration<double, std::nano>(elapsed).count() / round_trips);
  std::fflush(stdout);
}

// --- memory ---

/// Heap bytes in use. Unlike the resident set, it does not depend on whether
/// earlier rows left freed pages behind for the allocator to reuse: it is what
/// the resident set grows by on a fresh heap.
double heap_bytes() {
  const struct mallinfo2 info = mallinfo2();
  return static_cast<double>(info.uordblks + info.hblkhd);
}

void memory() {
  constexpr int queued = 200'000;
  constexpr int idle_workers = 2'000;
  double per_request = 0;
  double per_worker = 0;
  // Idle workers first: memory the queued requests free later would hide them.
  {
    asio::io_context ioc(1);
    coropool::PoolConfig config = quiet_config();
    config.cold_start_workers = idle_workers;
    config.max_workers_per_key = idle_workers;
    config.compute_threads = 1;
    asio::steady_timer settle(ioc);
    const double before = heap_bytes();
    BenchPool pool(ioc, config, timed_loader(1ms, nullptr), no_handler());
    pool.async_wait_for_workers("model", 10s, [&](boost::system::error_code) {
      settle.expires_after(50ms);  // the rest of the wave loads and parks meanwhile
      settle.async_wait([&](boost::system::error_code) {
        per_worker = (heap_bytes() - before) / idle_workers;
        pool.async_shutdown(0s, asio::detached);
      });
    });
    ioc.run();
  }
  {
    // One worker stuck on its first request; the rest queue behind it.
    asio::io_context ioc(1);
    coropool::PoolConfig config = quiet_config();
    config.cold_start_workers = 1;
    config.max_workers_per_key = 1;
    config.queue_capacity = queued;
    config.compute_threads = 1;
    asio::steady_timer gate(ioc, asio::steady_timer::time_point::max());
    BenchPool pool(ioc, config, timed_loader(1ms, nullptr), [&](Model&, int x) -> asio::awaitable<int> {
      co_await gate.async_wait(asio::as_tuple(asio::use_awaitable));
      co_return x;
    });
    pool.async_wait_for_workers("model", 10s, [&](boost::system::error_code) {
      pool.async_submit("model", -1, [](std::exception_ptr, int) {});
      ioc.poll();
      const double before = heap_bytes();
      for (int i = 0; i < queued; ++i) pool.async_submit("model", i, [](std::exception_ptr, int) {});
      per_request = (heap_bytes() - before) / queued;
      gate.cancel();
      pool.async_shutdown(0s, asio::detached);
    });
    ioc.run();
  }
  std::printf(
      "{\"bench\":\"memory\",\"impl\":\"coropool\",\"threads\":1,\"params\":{\"queued\":%d,\"idle_workers\":%d,"
      "\"request_bytes\":%zu},\"bytes_per_queued_request\":%.0f,\"bytes_per_idle_worker\":%.0f}\n",
      queued, idle_workers, sizeof(int), per_request, per_worker);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char* argv[]) {
  const std::map<std::string, std::function<void()>> workloads{{"cold_start_wake", cold_start_wake},
                                                               {"starvation", starvation},
                                                               {"idle_wait_cpu", idle_wait_cpu},
                                                               {"idle_cpu", idle_cpu},
                                                               {"roundtrip", roundtrip},
                                                               {"core_handoff", core_handoff},
                                                               {"memory", memory}};
  std::vector<std::string> chosen(argv + 1, argv + argc);
  if (chosen.empty()) {
    for (const auto& [name, run] : workloads) chosen.push_back(name);
  }
  for (const auto& name : chosen) {
    auto it = workloads.find(name);
    if (it == workloads.end()) {
      std::fprintf(stderr, "coropool_bench: unknown workload '%s'\n", name.c_str());
      return 2;
    }
    it->second();
  }
  return 0;
}
