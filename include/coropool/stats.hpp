#pragma once

/// @file
/// `coropool::PoolStats`: a snapshot of a pool's counters and gauges
/// (coropool/prometheus.hpp renders it in the Prometheus text format).

#include "coropool/worker_state.hpp"

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>

namespace coropool {

/// A key's circuit breaker state.
enum class breaker_state : unsigned char { closed, open, half_open };

/// The state's name, lower case.
constexpr std::string_view to_string(breaker_state s) noexcept {
  switch (s) {
    case breaker_state::closed:
      return "closed";
    case breaker_state::open:
      return "open";
    case breaker_state::half_open:
      return "half_open";
  }
  return "unknown";
}

/// Request latencies (submission to answer) in power-of-two buckets of
/// microseconds: bucket i counts latencies in [2^(i-1), 2^i) µs (bucket 0:
/// below 1 µs; the last: everything longer).
struct LatencyHistogram {
  static constexpr std::size_t bucket_count = 32;
  std::array<std::uint64_t, bucket_count> buckets{};
  std::uint64_t count = 0;
  double sum_us = 0;

  /// The bucket's upper bound in microseconds.
  static constexpr double upper_bound_us(std::size_t bucket) noexcept {
    return static_cast<double>(std::uint64_t{1} << bucket);
  }

  void record(double us) noexcept {
    const auto whole = us < 1 ? std::uint64_t{0} : static_cast<std::uint64_t>(us);
    std::size_t bucket = static_cast<std::size_t>(std::bit_width(whole));
    if (bucket >= bucket_count) bucket = bucket_count - 1;
    ++buckets[bucket];
    ++count;
    sum_us += us;
  }

  /// The upper bound of the bucket holding quantile `q` (0 < q <= 1); 0 when empty.
  double quantile_us(double q) const noexcept {
    if (count == 0) return 0;
    const auto rank = static_cast<std::uint64_t>(q * static_cast<double>(count) + 0.999999);
    std::uint64_t seen = 0;
    for (std::size_t i = 0; i < bucket_count; ++i) {
      seen += buckets[i];
      if (seen >= rank) return upper_bound_us(i);
    }
    return upper_bound_us(bucket_count - 1);
  }

  LatencyHistogram& operator+=(const LatencyHistogram& other) noexcept {
    for (std::size_t i = 0; i < bucket_count; ++i) buckets[i] += other.buckets[i];
    count += other.count;
    sum_us += other.sum_us;
    return *this;
  }
};

/// One key's counters (since the pool was constructed) and gauges (now).
struct KeyStats {
  std::array<std::size_t, worker_state_count> workers{};  ///< Workers by worker_state.
  std::size_t queued = 0;                                 ///< Requests in the queue.
  std::size_t waiting_for_room = 0;                       ///< Callers held back by a full queue.
  std::size_t waiters = 0;                                ///< Callers in wait_for_workers.
  std::size_t in_flight = 0;                              ///< Requests being handled.
  std::uint64_t submitted = 0;                            ///< Requests accepted into the key.
  std::uint64_t completed = 0;                            ///< Answered with a Response.
  std::uint64_t failed = 0;     ///< Answered with the handler's exception, or a pool error not counted below.
  std::uint64_t timed_out = 0;  ///< Completed with errc::request_timeout.
  std::uint64_t cancelled = 0;  ///< Cancelled by their callers.
  std::uint64_t rejected = 0;   ///< Refused: queue_full, circuit_open, shutting_down.
  std::uint64_t loads = 0;      ///< Loads started.
  std::uint64_t load_failures = 0;
  std::uint64_t evictions = 0;  ///< Workers stopped by idle eviction, evict() or the memory governor.
  std::uint64_t restarts = 0;   ///< Workers replaced by restart().
  std::uint64_t deaths = 0;     ///< Workers declared dead, or whose coroutine died.
  breaker_state breaker = breaker_state::closed;
  std::uint64_t breaker_opened = 0;   ///< Times the breaker opened.
  std::uint64_t memory_reserved = 0;  ///< Bytes reserved by the key's workers.
  LatencyHistogram latency;

  /// The number of workers in state `s`.
  std::size_t workers_in(worker_state s) const noexcept { return workers[static_cast<std::size_t>(s)]; }
};

/// A pool's snapshot: every key, and the pool-wide figures.
struct PoolStats {
  std::map<std::string, KeyStats> keys;
  std::uint64_t rejected = 0;         ///< Refused before reaching a key (empty key, shutdown).
  std::uint64_t memory_budget = 0;    ///< PoolConfig::memory_budget, in bytes.
  std::uint64_t memory_reserved = 0;  ///< Bytes reserved by all workers.

  /// Every key's figures summed.
  KeyStats total() const {
    KeyStats t;
    for (const auto& [name, k] : keys) {
      for (std::size_t i = 0; i < worker_state_count; ++i) t.workers[i] += k.workers[i];
      t.queued += k.queued;
      t.waiting_for_room += k.waiting_for_room;
      t.waiters += k.waiters;
      t.in_flight += k.in_flight;
      t.submitted += k.submitted;
      t.completed += k.completed;
      t.failed += k.failed;
      t.timed_out += k.timed_out;
      t.cancelled += k.cancelled;
      t.rejected += k.rejected;
      t.loads += k.loads;
      t.load_failures += k.load_failures;
      t.evictions += k.evictions;
      t.restarts += k.restarts;
      t.deaths += k.deaths;
      t.breaker_opened += k.breaker_opened;
      t.memory_reserved += k.memory_reserved;
      t.latency += k.latency;
    }
    t.rejected += rejected;
    return t;
  }
};

}  // namespace coropool
