#pragma once

/// @file
/// `coropool::PoolConfig`: the knobs of a pool, with the defaults of the system it replaces.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <boost/asio/any_io_executor.hpp>

#include "coropool/detail/time.hpp"

namespace spdlog {
class logger;
}

namespace coropool {

/// Dynamic batching of one key (PoolConfig::batching): how many queued
/// requests a worker takes at once, and how long it waits for more.
///
/// A worker that becomes free takes what is queued, up to `max_batch_size`,
/// at once, and requests that arrive before its batch starts join it. A
/// batch that is not full waits for more at most `max_batch_delay` after its
/// first request joined it, and never into the last `max_batch_delay`
/// before a deadline of the requests it holds (each keeps at least that much
/// of its time for the handler); a full batch starts at once. Needs a pool made with a
/// batch handler (coropool::batched()).
struct BatchConfig {
  /// The most requests in one batch (1 to 65,536); 1, the default, is no batching.
  std::size_t max_batch_size = 1;
  /// How long a batch that is not full waits for more after its first
  /// request joined it (zero or more); 0, the default, waits for none: a
  /// batch takes what is queued and what arrives before it starts (Triton's
  /// `max_queue_delay_microseconds` and TF Serving's `batch_timeout_micros`
  /// default to 0 as well).
  std::chrono::steady_clock::duration max_batch_delay = std::chrono::steady_clock::duration::zero();
};

namespace detail {
/// Whether `b` is in the range BatchConfig's fields state.
inline bool batch_config_valid(const BatchConfig& b) noexcept {
  return b.max_batch_size >= 1 && b.max_batch_size <= 65536 &&
         b.max_batch_delay >= std::chrono::steady_clock::duration::zero();
}
}  // namespace detail

/// Configuration of a `coropool::Pool`. Every field has a default; set only what differs.
///
/// @code
/// coropool::PoolConfig cfg;
/// cfg.cold_start_workers = 1;
/// cfg.spawn_timeout = std::chrono::seconds(10);
/// @endcode
struct PoolConfig {
  /// Workers a cold key's spawn wave loads at once (at least 1).
  std::size_t cold_start_workers = 2;

  /// The most workers one key may have; scale-up adds one at a time while
  /// requests queue and every worker is busy (at least `cold_start_workers`).
  std::size_t max_workers_per_key = 4;

  /// Requests one key's queue holds; a submit beyond it waits for room
  /// (`async_submit`) or fails with `errc::queue_full` (`async_try_submit`). At least 1.
  std::size_t queue_capacity = 100;

  /// How long a request may take from its submission to its answer,
  /// queueing included; then its caller gets `errc::request_timeout` (positive).
  /// The default of requests whose SubmitOptions set no deadline.
  std::chrono::steady_clock::duration request_timeout = std::chrono::seconds(30);

  /// The longest a request may ask for with SubmitOptions: a request's own
  /// timeout or deadline may shorten it, never lengthen it (Triton's
  /// `allow_timeout_override` rule). The default, `max()`, caps nothing.
  /// At least `request_timeout`.
  std::chrono::steady_clock::duration max_request_timeout = std::chrono::steady_clock::duration::max();

  /// The priority levels and their weights: level 0 is the highest, and
  /// `priority_weights.size()` levels exist (1 to 16). A worker that takes a
  /// request serves the levels in proportion to their weights (stride
  /// scheduling: of 16 requests taken while all five default levels wait,
  /// 8, 4, 2, 1 and 1), so no level starves: the request at the head of
  /// level `L` is taken within `sum over j != L of (ceil(w_j / w_L) + 1)`
  /// requests of other levels (19 for the default's level 4, 4 for its
  /// level 0). Within a level, first in first out. Each weight is 1 to 1024.
  /// With one level the queue is the plain FIFO it was before levels existed.
  std::vector<unsigned> priority_weights = {8, 4, 2, 1, 1};

  /// Dynamic batching for every key (see BatchConfig); off by default.
  BatchConfig batching;

  /// Batching for one key, overriding `batching`: called with the key's name
  /// once per worker, on the worker's strand before its load starts. Empty,
  /// the default: every key batches as `batching` says. A result out of
  /// range fails that worker's load with `errc::invalid_argument`.
  std::function<BatchConfig(const std::string& key)> batching_for_key;

  /// Chunks a stream buffers between its worker and its reader (at least 1);
  /// a writer waits for room beyond it.
  std::size_t stream_buffer = 16;

  /// Threads of the compute executor the pool owns (see `Pool::compute_executor`);
  /// 0 means one per hardware thread. Unused when `compute_executor` is set.
  std::size_t compute_threads = 0;

  /// An executor for blocking model code that the user owns; when empty the
  /// pool creates its own `asio::thread_pool` of `compute_threads` threads.
  std::optional<boost::asio::any_io_executor> compute_executor;

  /// Workers a key keeps once it has been spawned: idle eviction stops
  /// workers down to this many, and maintenance refills a key below it
  /// (a warm key). At most `max_workers_per_key`.
  std::size_t min_workers_per_key = 0;

  /// Keys spawned when the pool is constructed, before any request (none may
  /// be empty). They are warm: kept at `min_workers_per_key` afterwards.
  std::vector<std::string> warm_keys;

  /// How often the pool pings each loaded worker (positive).
  std::chrono::steady_clock::duration health_interval = std::chrono::seconds(1);

  /// A worker that has not answered a ping for this long is declared dead:
  /// its request fails with `errc::worker_lost` and a replacement is spawned
  /// where needed. At least `health_interval`.
  std::chrono::steady_clock::duration health_timeout = std::chrono::seconds(5);

  /// Workers parked for this long with nothing to do are stopped, down to
  /// `min_workers_per_key` (positive).
  std::chrono::steady_clock::duration idle_timeout = std::chrono::seconds(60);

  /// How often idle eviction and the refill of warm keys run (positive).
  std::chrono::steady_clock::duration maintenance_interval = std::chrono::seconds(1);

  /// The pool-wide budget for workers' declared footprints, in bytes; 0
  /// means 80 % of physical memory (read once).
  std::uint64_t memory_budget = 0;

  /// A worker's declared footprint for a key, in bytes, reserved before its
  /// load and released when it ends. Empty: 0 (not metered).
  std::function<std::uint64_t(const std::string& key)> worker_footprint;

  /// Called on the pool's strand whenever the reserved total changes, with
  /// the new total and the budget: a hook for metrics and tests. Must not
  /// throw. (If the execution context is destroyed while workers still hold
  /// reservations, their releases are reported from its destructor.)
  std::function<void(std::uint64_t reserved, std::uint64_t budget)> on_memory_change;

  /// Consecutive failures (load failures, handler exceptions, workers lost)
  /// that open a key's circuit breaker; 0 disables the breaker.
  std::size_t failure_threshold = 5;

  /// How long an open breaker refuses everything before it lets probes through (positive).
  std::chrono::steady_clock::duration open_duration = std::chrono::seconds(60);

  /// Requests a half-open breaker lets through; as many successes close it,
  /// a failure opens it again (at least 1).
  std::size_t half_open_probes = 3;

  /// Which exceptions of `load` and `handle` count as failures for the
  /// breaker. Empty: every exception except cancellation
  /// (`operation_aborted`). Called outside the pool's locks; must not throw.
  std::function<bool(const std::exception_ptr&)> breaker_counts;

  /// The deadline `wait_for_workers(key)` uses when the caller gives none (positive).
  std::chrono::steady_clock::duration spawn_timeout = std::chrono::seconds(30);

  /// Where the pool logs spawns, load failures and timeouts. Null means
  /// `spdlog::default_logger()` as it is when the pool is constructed.
  std::shared_ptr<spdlog::logger> logger;
};

/// One request's own scheduling, for `Pool::submit` and its kin. Every
/// field has a default; set only what differs.
///
/// @code
/// coropool::SubmitOptions urgent;
/// urgent.timeout = std::chrono::milliseconds(200);
/// urgent.priority = 0;
/// @endcode
struct SubmitOptions {
  /// The pool's clock (`std::chrono::steady_clock`; see `Pool::clock`).
  using clock = detail::clock;

  /// The request's time limit, from its submission to its answer: it covers
  /// waiting for room, a cold key's load, the queue and the handler. Empty:
  /// `PoolConfig::request_timeout`. Capped at `PoolConfig::max_request_timeout`.
  /// Zero or negative is refused with `errc::invalid_argument`.
  std::optional<clock::duration> timeout;

  /// An absolute deadline, for a deadline that came with the request (a
  /// client's, less what was spent before the submit). When both are set,
  /// the earlier holds. A deadline already past completes the request at
  /// once with `errc::request_timeout` (counted in KeyStats::timed_out): it
  /// is the caller's deadline that passed, not a mistake in the call.
  std::optional<clock::time_point> deadline;

  /// The request's priority level: 0 is the highest, below
  /// `PoolConfig::priority_weights.size()`; beyond it is refused with
  /// `errc::invalid_argument`. Empty: the middle level,
  /// `priority_weights.size() / 2` (2 of the default 0..4).
  std::optional<unsigned> priority;
};

}  // namespace coropool
