// cold_start_wake: callers arrive over 100 ms at a cold key whose load takes
// 200 ms; latency = each caller's resume time minus the instant the load ended.
// Rows for "coropool", "poll50ms" (callers.hpp) and "asio-floor": the same
// callers woken with no pool at all.

#include <boost/asio/any_completion_handler.hpp>

#include <algorithm>
#include <mutex>
#include <random>
#include <utility>

#include "callers.hpp"

namespace coropool_bench {
namespace {

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
  asio::io_context ioc(io_threads());
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
  asio::io_context ioc(io_threads());
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

}  // namespace

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
      Row("cold_start_wake", name, io_threads())
          .param("waiters", waiters)
          .param("load_ms", 200)
          .param("arrivals_ms", 100)
          .param("repetitions", repetitions)
          .metric("p50_us", p.p50, 1)
          .metric("p99_us", p.p99, 1)
          .metric("max_us", p.max, 1)
          .write();
    }
  }
}

}  // namespace coropool_bench
