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
#include <vector>

namespace coropool {

/// A key's circuit breaker state (see PoolConfig::failure_threshold).
enum class breaker_state : unsigned char {
  closed,    ///< Requests pass; consecutive failures are counted.
  open,      ///< Everything is refused with `errc::circuit_open` for `PoolConfig::open_duration`.
  half_open  ///< `PoolConfig::half_open_probes` requests pass as probes; the rest are refused.
};

/// The state's name, lower case, as `to_prometheus` writes it.
///
/// @param s The state.
/// @return `"closed"`, `"open"` or `"half_open"`.
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

namespace detail {
/// The bucket of a LatencyHistogram of `bucket_count` buckets that `us` falls into.
constexpr std::size_t latency_bucket(double us, std::size_t bucket_count) noexcept {
  const auto whole = us < 1 ? std::uint64_t{0} : static_cast<std::uint64_t>(us);
  const auto bucket = static_cast<std::size_t>(std::bit_width(whole));
  return bucket < bucket_count ? bucket : bucket_count - 1;
}
}  // namespace detail

/// Request latencies (submission to answer) in power-of-two buckets of
/// microseconds: bucket i counts latencies in [2^(i-1), 2^i) µs (bucket 0:
/// below 1 µs; the last: everything longer).
///
/// A plain value: `Pool::stats()` copies each key's into its snapshot.
///
/// @code
/// const coropool::KeyStats& k = pool.stats().keys.at("bert");
/// std::cout << "p99 <= " << k.latency.quantile_us(0.99) << " us of " << k.latency.count << '\n';
/// @endcode
struct LatencyHistogram {
  /// The number of buckets: the last starts at 2^30 µs (about 18 minutes).
  static constexpr std::size_t bucket_count = 32;
  /// How many latencies fell into each bucket (not cumulative).
  std::array<std::uint64_t, bucket_count> buckets{};
  /// How many latencies were recorded: the sum of `buckets`.
  std::uint64_t count = 0;
  /// The sum of every latency recorded, in microseconds (the mean is `sum_us / count`).
  double sum_us = 0;

  /// The bucket's upper bound in microseconds.
  ///
  /// @param bucket The bucket's index, below `bucket_count`.
  /// @return 2^bucket. The last bucket's is nominal: it also counts every
  /// longer latency (Prometheus's `+Inf`).
  static constexpr double upper_bound_us(std::size_t bucket) noexcept {
    return static_cast<double>(std::uint64_t{1} << bucket);
  }

  /// Counts one latency in its bucket, `count` and `sum_us`.
  ///
  /// @param us The latency in microseconds; below 1 (negative included) goes to bucket 0.
  void record(double us) noexcept {
    ++buckets[detail::latency_bucket(us, bucket_count)];
    ++count;
    sum_us += us;
  }

  /// The upper bound of the bucket holding quantile `q` (0 < q <= 1); 0 when empty.
  ///
  /// @param q The quantile: 0.5 for the median, 0.99 for p99.
  /// @return The upper bound, in microseconds, of the bucket in which the
  /// `q`-quantile latency lies; 0 when nothing was recorded.
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

  /// Adds `other`'s counts to this histogram's, as PoolStats::total() sums the keys.
  ///
  /// @param other The histogram to add.
  /// @return `*this`.
  LatencyHistogram& operator+=(const LatencyHistogram& other) noexcept {
    for (std::size_t i = 0; i < bucket_count; ++i) buckets[i] += other.buckets[i];
    count += other.count;
    sum_us += other.sum_us;
    return *this;
  }
};

/// One key's counters (since the pool was constructed) and gauges (now).
///
/// The request counters reconcile: `submitted` equals `completed + failed +
/// timed_out + cancelled` plus the requests not completed yet (queued,
/// waiting for room or being handled). Each caller is counted once, in the
/// bucket named after what it saw; `rejected` callers were never submitted.
struct KeyStats {
  /// Workers whose coroutine runs, by worker_state (index with
  /// workers_in()). A worker leaves the count when its coroutine ends, before
  /// it is marked failed or dead: those two entries read 0.
  std::array<std::size_t, worker_state_count> workers{};
  std::size_t queued = 0;  ///< Requests in the queue, waiting for a worker.
  /// `queued` by priority level (index 0 the highest), one entry per level.
  std::vector<std::size_t> queued_by_priority;
  std::size_t waiting_for_room = 0;  ///< Callers held back by a full queue.
  std::size_t waiters = 0;           ///< Callers in wait_for_workers.
  std::size_t in_flight = 0;         ///< Requests being handled: the workers in worker_state::processing.
  std::uint64_t submitted = 0;       ///< Requests accepted into the key.
  /// Requests a worker answered with a Response; a stream counts here once a
  /// worker has started it (what it ends with is in-band).
  std::uint64_t completed = 0;
  /// Requests answered with the handler's exception, or completed by the pool
  /// with an error after their acceptance that has no counter of its own
  /// (`worker_lost`, `shutting_down`, `spawn_failed`, `memory_exhausted`).
  std::uint64_t failed = 0;
  /// Requests completed with errc::request_timeout, whether the key's timer,
  /// a worker finding them expired, or the health sweep (a handler that
  /// ignored its deadline's cancellation) ended them.
  /// The sum of `expired_before_dispatch` and `expired_in_handler`.
  std::uint64_t timed_out = 0;
  /// Requests whose deadline passed before a worker took them (waiting for
  /// room, for a cold key's load, or in the queue), those submitted with a
  /// deadline already past included. None of them reached a handler.
  std::uint64_t expired_before_dispatch = 0;
  /// Requests whose deadline passed while their handler ran: the caller was
  /// completed at the deadline and the handler cancelled.
  std::uint64_t expired_in_handler = 0;
  /// Requests held back by a full queue to make room for a higher priority
  /// (each waited for room again; see PoolConfig::priority_weights).
  std::uint64_t held_back = 0;
  /// Requests that attached to an identical request's run instead of
  /// queueing (see `Pool::Options::coalesce_key`); each is also counted in
  /// `submitted` and in the bucket of its own outcome.
  std::uint64_t coalesced = 0;
  /// Batches run (see BatchConfig): handler calls of a batching worker, a
  /// batch of one included.
  std::uint64_t batches = 0;
  /// Batches run by their size: `batch_sizes[n]` batches held `n` requests
  /// (a run of coalesced requests counts one). Empty until a batch runs.
  std::vector<std::uint64_t> batch_sizes;
  /// How long the first request of each batch waited, from joining the
  /// batch until the batch started: the price of BatchConfig::max_batch_delay.
  LatencyHistogram batch_wait;
  /// Requests completed with `operation_aborted`: cancelled by their callers,
  /// or withdrawn by a Stream's close().
  std::uint64_t cancelled = 0;
  std::uint64_t rejected = 0;  ///< Refused on arrival: queue_full, circuit_open, shutting_down.
  std::uint64_t loads = 0;     ///< Loads started (spawn waves, scale-up, refills, restarts).
  /// Loads that ended without a model (`load` threw) while the pool was not
  /// shutting down.
  std::uint64_t load_failures = 0;
  /// Workers stopped by idle eviction or by the memory governor (one each),
  /// plus one for each evict() of the key, however many workers it stopped.
  std::uint64_t evictions = 0;
  /// Replacements restart() started: counted when the replacement's load
  /// starts, whether or not it succeeds.
  std::uint64_t restarts = 0;
  std::uint64_t deaths = 0;  ///< Workers declared dead by the health sweep, or whose coroutine died.
  /// The key's circuit breaker now. An open breaker whose
  /// `PoolConfig::open_duration` has passed reads as half_open, as the next
  /// request will find it (taking the snapshot changes nothing).
  breaker_state breaker = breaker_state::closed;
  std::uint64_t breaker_opened = 0;   ///< Times the breaker opened.
  std::uint64_t memory_reserved = 0;  ///< Bytes reserved by the key's workers.
  /// Latencies of the requests a worker answered (with a Response or the
  /// handler's exception), from the key's acceptance to the answer. Requests
  /// the pool ended (timed out, cancelled, failed by the pool) and streams are
  /// not recorded.
  LatencyHistogram latency;
  /// Time from acceptance until a worker took the request (waiting for room,
  /// a cold key's load and the queue), for every request handed to a worker:
  /// with `latency`, whether a key is queueing or computing.
  LatencyHistogram queue_time;

  /// The number of workers in state `s`.
  ///
  /// @param s The state.
  /// @return `workers[s]`.
  std::size_t workers_in(worker_state s) const noexcept { return workers[static_cast<std::size_t>(s)]; }
};

/// A pool's snapshot: every key, and the pool-wide figures.
///
/// A value the caller owns, made by `Pool::stats()`.
///
/// @code
/// coropool::PoolStats stats = pool.stats();
/// coropool::KeyStats all = stats.total();
/// std::cout << all.completed << " of " << all.submitted << " answered\n" << coropool::to_prometheus(stats);
/// @endcode
struct PoolStats {
  /// Every key the pool has seen (a submit, a wait, a command or a warm key
  /// made it; none is forgotten), by name.
  std::map<std::string, KeyStats> keys;
  std::uint64_t rejected = 0;  ///< Refused before reaching a key: an empty key, or after shutdown began.
  /// The budget in force, in bytes: PoolConfig::memory_budget, or 80 % of
  /// physical memory when that is 0.
  std::uint64_t memory_budget = 0;
  std::uint64_t memory_reserved = 0;  ///< Bytes reserved by all workers.

  /// Every key's figures summed.
  ///
  /// @return A KeyStats whose counters, gauges and latency histogram are the
  /// sums over `keys`, with the pool-wide `rejected` added to its own; its
  /// `breaker` is left `closed`, meaning nothing.
  KeyStats total() const {
    KeyStats t;
    for (const auto& [name, k] : keys) {
      for (std::size_t i = 0; i < worker_state_count; ++i) t.workers[i] += k.workers[i];
      t.queued += k.queued;
      if (t.queued_by_priority.size() < k.queued_by_priority.size()) {
        t.queued_by_priority.resize(k.queued_by_priority.size());
      }
      for (std::size_t i = 0; i < k.queued_by_priority.size(); ++i) t.queued_by_priority[i] += k.queued_by_priority[i];
      t.waiting_for_room += k.waiting_for_room;
      t.waiters += k.waiters;
      t.in_flight += k.in_flight;
      t.submitted += k.submitted;
      t.completed += k.completed;
      t.failed += k.failed;
      t.timed_out += k.timed_out;
      t.expired_before_dispatch += k.expired_before_dispatch;
      t.expired_in_handler += k.expired_in_handler;
      t.held_back += k.held_back;
      t.coalesced += k.coalesced;
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
      t.queue_time += k.queue_time;
      t.batches += k.batches;
      if (t.batch_sizes.size() < k.batch_sizes.size()) t.batch_sizes.resize(k.batch_sizes.size());
      for (std::size_t i = 0; i < k.batch_sizes.size(); ++i) t.batch_sizes[i] += k.batch_sizes[i];
      t.batch_wait += k.batch_wait;
    }
    t.rejected += rejected;
    return t;
  }
};

}  // namespace coropool
