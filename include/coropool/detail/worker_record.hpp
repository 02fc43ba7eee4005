#pragma once

// One worker coroutine's bookkeeping, its fields grouped by who may touch them.

#include "coropool/detail/asio.hpp"
#include "coropool/detail/completion.hpp"
#include "coropool/detail/memory.hpp"
#include "coropool/detail/request.hpp"
#include "coropool/detail/worker_histogram.hpp"
#include "coropool/error.hpp"
#include "coropool/worker_state.hpp"

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

namespace coropool::detail {

struct key_state;

/// One worker: a coroutine on its own strand that loads its key's model and
/// serves the key's queue. Its key owns it; the key, in turn, lives as long
/// as the pool's core, which the worker's coroutine holds: a plain pointer
/// back makes no cycle.
struct worker_record : std::enable_shared_from_this<worker_record> {
  worker_record(std::uint64_t worker_id, key_state* owner, const executor& ex)
      : id(worker_id), key(owner), strand(asio::make_strand(ex)) {}
  worker_record(const worker_record&) = delete;
  worker_record& operator=(const worker_record&) = delete;

  const std::uint64_t id;
  key_state* const key;  // null only in the key queue's unit tests
  const strand_type strand;

  /// Any thread.
  struct shared_fields {
    // Set on the pool strand, read by the worker and its key's queue: a stop
    // that arrives before the coroutine has an operation to cancel is still seen.
    std::atomic<bool> stop_requested{false};
    // Set on the pool strand before the coroutine is cancelled: what a stream
    // cut short by that cancellation tells its reader. errc{}: not cancelled.
    std::atomic<errc> cancelled_because{errc{}};
    worker_state_cell state;
    std::atomic<std::uint64_t> served{0};
    // A health ping is on its way through the worker's strand: the next
    // sweep sends none until it is answered (a blocked thread gets one).
    std::atomic<bool> ping_pending{false};
  } shared;

  /// The worker's own strand.
  struct own_fields {
    asio::cancellation_signal stop_signal;   // emitted there, where the coroutine runs
    bool finished = false;                   // its coroutine has ended
    clock::time_point last_progress;         // when it last loaded, or answered or started a request
    const request_base* handling = nullptr;  // the request whose handler it is running
    bool interrupted = false;                // stop_signal was emitted for that request's deadline
    bool woken = false;                      // its last park parked it: what wakes it was handed over
    // A batching worker waiting for its batch to fill: the timer it waits on
    // until the batch is to start, and which wait (key_queue's collect_gen;
    // 0: none) a nudge from the key queue may cut short.
    std::optional<timer_type> batch_timer;
    std::uint64_t collect_wait = 0;
  } own;

  /// The pool's strand.
  struct pool_fields {
    bool ready = false;
    bool retired = false;        // out of routing: evicted, stopped or declared dead
    bool declared_dead = false;  // by the health sweep
    bool memory_victim = false;  // evicted to make room for another key's spawn
    clock::time_point last_pong;
    clock::time_point reported_progress;      // own.last_progress, as its latest pong told
    std::shared_ptr<worker_record> replaces;  // restart: the worker this one takes over from
    memory_reservation reservation;           // its key's footprint, held until it ends
  } pool;

  /// Its key's queue lock (see key_queue).
  struct queue_fields {
    // While the coroutine waits for a request (it is then among the key's
    // idle workers). Like a pending operation, it keeps its executor's work
    // count up meanwhile.
    std::unique_ptr<completion<request_ptr>> parked;
    request_ptr current;           // the request it is handling
    clock::time_point idle_since;  // when it parked
    // Batching (a pool with a batch handler; see key_queue, "Batching").
    std::size_t batch_limit = 0;     // its max_batch_size; 0: it serves one request at a time (`current`)
    clock::duration batch_delay{};   // its max_batch_delay
    std::vector<request_ptr> batch;  // its units, from the first that joined until they are answered
    bool collecting = false;         // among the key's collectors: arrivals join its batch
    bool batch_started = false;      // its handler runs: nothing joins any more
    clock::time_point batch_first;   // when its batch's first unit joined
    clock::time_point go_at = clock::time_point::max();  // when its wait for more ends
    std::uint64_t collect_gen = 0;                       // the latest wait it registered (own.collect_wait)
  } queue;

  /// Written by the worker's coroutine alone, outside any lock; read by
  /// stats() from any thread (see worker_histogram). A worker serving one
  /// request at a time records here what its key's KeyStats::latency and
  /// queue_time show; a batching worker's go to its key queue's, under its
  /// lock. On a line of their own: the key's lock holder writes `queue`.
  struct alignas(64) recorded_fields {
    worker_histogram latency;
    worker_histogram queue_time;
  } recorded;
};

}  // namespace coropool::detail
