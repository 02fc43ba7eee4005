#pragma once

// Everything the pool knows of one key, grouped by who may touch it.

#include "coropool/config.hpp"
#include "coropool/detail/asio.hpp"
#include "coropool/detail/breaker.hpp"
#include "coropool/detail/completion.hpp"
#include "coropool/detail/key_queue.hpp"
#include "coropool/detail/waiter_list.hpp"
#include "coropool/detail/worker_record.hpp"

#include <spdlog/logger.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace coropool::detail {

struct key_state {
  key_state(std::string key_name, const executor& ex, const PoolConfig& config, std::weak_ptr<const void> owner,
            spdlog::logger* log)
      : name(std::move(key_name)),
        queue(name, ex,
              {config.queue_capacity, config.request_timeout, config.max_request_timeout, config.priority_weights},
              circuit_breaker(config.failure_threshold, config.open_duration, config.half_open_probes),
              std::move(owner), log) {}
  key_state(const key_state&) = delete;
  key_state& operator=(const key_state&) = delete;

  const std::string name;

  /// The request path: any thread, under the queue's own lock.
  key_queue queue;

  /// Callers of wait_for_workers: pool strand.
  waiter_list waiters;

  /// Any thread: what submitters and stats() read; written on the pool strand.
  struct gauges {
    std::atomic<std::size_t> ready_workers{0};
    std::atomic<std::size_t> live_workers{0};       // loading or serving
    std::atomic<bool> attention_pending{false};     // a submit has posted attend() and it has not run yet
    std::atomic<std::uint64_t> memory_reserved{0};  // by its workers
    // Lifecycle events (see KeyStats).
    std::atomic<std::uint64_t> loads{0};
    std::atomic<std::uint64_t> load_failures{0};
    std::atomic<std::uint64_t> deaths{0};
    std::atomic<std::uint64_t> evictions{0};
    std::atomic<std::uint64_t> restarts{0};
  } gauges;

  /// Pool strand: spawning and the routable workers.
  struct spawn_fields {
    std::size_t loading = 0;  // loads in flight: the current spawn wave or scale-up
    std::exception_ptr last_failure;
    std::vector<std::shared_ptr<worker_record>> workers;  // routable: loading or serving, not retired
    bool warm = false;                                    // spawned and not evicted since: kept at min_workers_per_key
    std::size_t memory_pending = 0;                       // spawns waiting for evicted workers to free memory
    bool memory_short = false;                            // the last spawn found no room in the budget
    bool scale_up_failed = false;            // a load failed while the key served: scale-up waits for the next tick
    std::optional<std::uint64_t> footprint;  // PoolConfig::worker_footprint, asked once
  } spawn;

  /// Pool strand: the orchestrator's commands under way.
  struct command_fields {
    struct scale_op {
      std::size_t target;
      std::shared_ptr<completion<error_code>> done;
    };
    std::vector<scale_op> scale_ops;
    std::vector<std::shared_ptr<completion<error_code>>> evict_ops;
    std::vector<std::weak_ptr<worker_record>> restart_left;  // workers a restart has still to replace
    std::vector<std::shared_ptr<completion<error_code>>> restart_ops;
  } commands;

  /// Every worker whose coroutine runs, retired ones included, for stats():
  /// changed on the pool strand, read from any thread, under roster_mutex.
  /// What the workers that left the roster recorded (worker_record::recorded)
  /// is added to `recorded_latency` and `recorded_queue_time` as they leave.
  mutable std::mutex roster_mutex;
  std::vector<std::shared_ptr<worker_record>> roster;
  LatencyHistogram recorded_latency;
  LatencyHistogram recorded_queue_time;
};

}  // namespace coropool::detail
