#pragma once

// key_queue: one key's requests, from acceptance to their one completion.
//
// Who runs it. Any thread: callers submitting and cancelling, workers taking
// and answering, the deadline timer, the pool's strand. Every member takes
// the queue's lock (a spin_mutex) for a few list operations and returns what
// is to happen once the lock is released: a request to complete, a parked
// worker to wake. The lock is never held across a suspension or while user
// code runs; completing a request only defers its caller's handler.
//
// Declared here; the bodies are in detail/impl/, by topic: key_queue.ipp (the
// request path), key_queue_batching.ipp, key_queue_deadlines.ipp and
// key_queue_control.ipp (what the pool's strand asks), each COROPOOL_DECL.
//
// Where a request is. From acceptance until it is done, a request is in
// `outstanding_` (ordered by deadline, holding a reference to it) and in
// exactly one of: its level's `waiting_room` (the queue was full), its
// level's `queued`, a worker's hands (worker_record::queue.current). Idle
// workers exist only when nothing is queued; room waiters only when the
// queue is full.
//
// Priorities. Each level has its own FIFO. A worker takes from the non-empty
// level with the smallest pass, which then advances by its stride (a large
// constant over its weight): stride scheduling, so that levels are served in
// proportion to their weights. A level that was empty rejoins one stride
// after the pass of the last request taken (virtual_time_): it cannot hoard
// turns while empty, the others cannot have run far ahead of it, and a
// higher level that arrives with a lower one is served first (its stride is
// shorter). Every pass of a non-empty level is thus within one of its strides
// of virtual_time_, which bounds how many requests of level j can be taken
// before the head of level L: ceil(w_j / w_L) + 1 (PoolConfig::priority_weights).
// A full queue makes room for a higher level by holding back the newest
// request of the lowest level below it: that request waits for room again,
// first among its level's.
//
// Exactly once. A caller is completed by whoever moves its request's phase
// to `done` under the lock (claim), and only by them: every member that
// claims hands the request back to its own caller, which completes it after
// unlocking. A path that comes later (an answer after the timeout, a
// cancellation after the answer) finds `done` and does nothing.
//
// Nothing of the user's under the lock. A request's last reference is never
// dropped under it (its Request's destructor would run there): a coalesced
// run that ends gives the map's reference to retired_, which scoped_lock
// drops after unlocking. The Request of a new run is moved (make_run)
// before the lock is taken.
//
// Exceptions. Under the lock, every step of enqueue() that may throw (an
// allocation) comes before its first change but the breaker's, so that one
// that does leaves the queue as it was (a half-open probe it took is given
// back); the request is then refused, never accepted, and its caller is
// completed with the exception (admission::error).
//
// Deadlines. One timer per key, at the earliest deadline of its outstanding
// requests (`outstanding_`, a deadline_index). Requests with the pool's
// request_timeout arrive in deadline order: they are inserted at the end of
// its list, in constant time, and never move the timer; a request with a
// shorter deadline goes to its heap and re-arms the timer. It is left armed
// when requests finish early: it then fires once, finds nothing due, and is
// not re-armed (or the pool disarms it when the key has no worker left).
// Armed whenever a request is outstanding, it also keeps the pool's
// execution context running for the callers that run there (see
// request_work); that is why requests that never time out arm it at max(),
// where it never fires.
//
// A deadline ends its request wherever it is: a queued one is never handed
// to a worker (take checks, should the timer be late), and the handler of
// one in flight is told by its coroutine's cancellation (interrupt_handler),
// while its caller is completed at once and the late answer discarded.

#include "coropool/config.hpp"
#include "coropool/detail/asio.hpp"
#include "coropool/detail/breaker.hpp"
#include "coropool/detail/compilation.hpp"
#include "coropool/detail/completion.hpp"
#include "coropool/detail/deadline_index.hpp"
#include "coropool/detail/request.hpp"
#include "coropool/detail/spin_mutex.hpp"
#include "coropool/detail/worker_record.hpp"
#include "coropool/error.hpp"
#include "coropool/stats.hpp"

#include <spdlog/logger.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace coropool::detail {

class key_queue {
 public:
  using worker_ptr = std::shared_ptr<worker_record>;

  struct settings {
    std::size_t capacity;                                               // PoolConfig::queue_capacity
    clock::duration request_timeout;                                    // PoolConfig::request_timeout
    clock::duration max_request_timeout = clock::duration::max();       // PoolConfig::max_request_timeout
    std::vector<unsigned> priority_weights = std::vector<unsigned>{1};  // PoolConfig::priority_weights
  };

  /// `owner` is kept alive by the armed deadline timer (the pool's core, which
  /// owns this queue); `log`, if not null, outlives the queue.
  key_queue(std::string key_name, const executor& ex, settings limits, circuit_breaker breaker,
            std::weak_ptr<const void> owner, spdlog::logger* log);
  key_queue(const key_queue&) = delete;
  key_queue& operator=(const key_queue&) = delete;

  ~key_queue();

  /// What enqueue() decided; its caller acts on it after the lock.
  struct admission {
    error_code refused;                             // set: complete the request with it (or `error`)
    std::exception_ptr error;                       // what threw, when that refused it (see "Exceptions")
    std::unique_ptr<completion<request_ptr>> wake;  // set: a parked worker's, to complete with `handed`
    request_ptr handed;   // the run a coalesced request started; null: the request itself (no reference to count)
    bool joined = false;  // attached to a run already waiting or handled
    // A collecting worker whose wait is to end now (its batch filled, or an
    // earlier deadline joined it): nudge_collector() after the lock.
    std::pair<worker_ptr, std::uint64_t> nudge;
    bool collected = false;  // joined a batch that was waiting for more
  };

  /// Ends the wait `gen` of a collecting worker, on its strand (see admission::nudge).
  static void nudge_collector(std::pair<worker_ptr, std::uint64_t>& nudge);

  /// Accepts `r` (its priority set and checked by the caller): hands it to a
  /// parked worker, queues it, or (when the queue is full) makes room by
  /// holding back a lower level's newest request, or makes it wait for room;
  /// refuses it when the key is closed, its breaker is open, its deadline has
  /// passed, or the queue is full and `wait_for_room` is false, or when an
  /// allocation throws (admission::error), the queue then as it was.
  admission enqueue(const request_ptr& r, bool wait_for_room, const SubmitOptions& options = {});

  /// enqueue() for a request whose identity is `identity` (coalesce_key):
  /// attaches it to the run of an identical request that is waiting or
  /// being handled, or starts a run, made by `make_run` from `r` and
  /// admitted as enqueue() admits a request, with `r` its first caller. A
  /// run takes one place in the queue, the highest level and the latest
  /// deadline of its callers; each caller keeps its own deadline and
  /// cancellation, and the run is withdrawn (or its answer discarded) when
  /// its last caller has left. `make_run` runs outside the lock (it moves
  /// the user's Request); what it throws refuses `r`, as in enqueue().
  admission enqueue_coalesced(const request_ptr& r, bool wait_for_room, const SubmitOptions& options,
                              std::string identity, request_ptr (*make_run)(request_base&));

  /// Batching (a worker whose queue.batch_limit is set). A worker's batch
  /// holds its units (requests, or runs of coalesced ones), each in_flight
  /// with that worker, from the first that joins until they are answered.
  /// While the batch has room and has not started, the worker is among the
  /// key's collectors: an arrival joins the oldest collector's batch instead
  /// of being queued (nothing is queued while one collects, streams aside,
  /// which are served alone). A unit that ends in the batch (cancelled, past
  /// its deadline) stays there, done, and is left out when the batch starts.

  /// Makes `w` a batching worker (batches up to `limit`, waiting up to
  /// `delay` for more), before it first takes a request.
  void set_batching(worker_record& w, std::size_t limit, clock::duration delay);

  /// `w` is to stop once its batch is done: no arrival joins it any more,
  /// and a wait for more ends now (the caller nudges the worker).
  std::pair<worker_ptr, std::uint64_t> stop_collecting(worker_record& w);

  /// A worker's coroutine has ended: what it still holds (a batch it
  /// refilled before its stop was seen, or held when it was cancelled) is
  /// claimed, each counted with `ec`, for the caller to complete; it leaves
  /// the collectors. Unlike claim_current(), nothing counts against the
  /// breaker: the pool stopped it.
  std::vector<request_ptr> release_held(worker_record& w, error_code ec);

  /// Tops up `w`'s batch from the queue, up to its limit, in the order the
  /// levels are served; it then collects while it has room. Whether it holds any unit.
  bool fill_batch(worker_record& w);

  /// When `w`'s batch is to start: `now` when it collects no more (full,
  /// a stream, stopped); else the earlier of `delay` after its first unit
  /// joined and the earliest deadline of its units. A later instant is
  /// registered as the worker's wait `gen`, which an arrival that fills the
  /// batch or brings an earlier deadline ends early (admission::nudge).
  clock::time_point batch_start_time(worker_record& w, clock::duration delay, clock::time_point now,
                                     std::uint64_t& gen);

  /// Starts `w`'s batch: nothing joins it any more. Returns its units not
  /// done, in order, and in `handling` what names its handler for
  /// interrupt_handler (worker_record::own.handling). Empty when every unit
  /// ended meanwhile: the batch is then gone.
  std::vector<request_ptr> start_batch(worker_record& w, clock::time_point now, const request_base*& handling);

  /// The worker has run its batch over `units` (start_batch's): claims each
  /// answer that still goes to a caller into `deliveries` (the unit's index,
  /// and the unit, or each caller of a run), counted completed or failed by
  /// `errors`; records the breaker once for a batch that failed as a whole
  /// (`batch_error`: `batch_failure` says whether it counts), else once per
  /// unit (`failures`); then refills the batch. Whether a next batch has units.
  bool finish_batch(worker_record& w, const std::vector<request_ptr>& units, const std::vector<char>& errors,
                    const std::vector<char>& failures, bool batch_error, bool batch_failure, clock::time_point now,
                    std::vector<std::pair<std::size_t, request_ptr>>& deliveries);

  /// Withdraws `r`: true when it was claimed here, and its caller is then to
  /// be completed with `operation_aborted`; false when it was done already.
  bool cancel(request_base& r);

  /// The worker's next request, if one is queued and the worker is not stopped.
  request_ptr take(worker_record& w);

  /// take(), or, when nothing is queued, parks `w`: `make_parked()` makes
  /// the completion that a request (or null, to leave) is later handed to.
  /// Returns the request taken, and whether the worker was parked; neither
  /// when it is to leave now (stopped, or its key closed or draining).
  template <class MakeParked>
  std::pair<request_ptr, bool> take_or_park(worker_record& w, MakeParked&& make_parked) {
    const auto now = clock::now();
    std::vector<request_ptr> expired;
    std::pair<request_ptr, bool> result{nullptr, false};
    {
      scoped_lock lock(*this);
      if (auto r = take_locked(w, now, expired)) {
        result.first = std::move(r);
      } else if (!closed_ && !draining_ && !w.shared.stop_requested.load(std::memory_order_relaxed)) {
        w.queue.parked = make_parked();
        w.shared.state.transition(worker_state::idle);
        w.queue.idle_since = now;
        idle_.push_back(&w);
        result.second = true;
      }
    }
    fail_expired(expired);
    if (result.first) record_taken(w, *result.first, now);
    return result;
  }

  /// The worker `w`, not batching, took `r` at `now`: its queue time goes
  /// to w.recorded (on w's coroutine, outside the lock). A request handed to
  /// it while it was parked was handed at its acceptance: it records 0.
  static void record_taken(worker_record& w, const request_base& r, clock::time_point now);

  /// The worker is done with `r`: whether its answer goes to the caller
  /// (false when `r` was completed meanwhile: timed out, cancelled, shut down).
  bool claim_answer(request_base& r, worker_record& w, bool error);

  /// claim_answer() and then take(), under one lock: a worker pays one lock
  /// per request. Records the outcome with the breaker and, for an answer
  /// that goes to its caller, its latency.
  /// For a run, `answer` is false and `callers` receives the callers it
  /// answers, each claimed (none when every caller had left).
  request_ptr claim_answer_and_take(request_base& r, worker_record& w, bool& answer, std::vector<request_ptr>& callers,
                                    bool error, bool failure, clock::time_point now, double latency_us);

  /// The worker was lost: claims the request it holds (every caller of a
  /// run), if not done, and counts the loss against the breaker. The caller
  /// completes them with `ec`.
  std::vector<request_ptr> claim_current(worker_record& w, error_code ec);

  /// Completes every outstanding request with `ec` (and `error`, where the
  /// pool made one); none is dropped.
  void fail_all(error_code ec, const std::exception_ptr& error = nullptr);

  /// Completes with `request_timeout` every request due by `now`, and re-arms
  /// the timer at the next deadline. What the deadline timer runs.
  void expire(clock::time_point now);

  /// Disarms the deadline timer if no request is outstanding: a key with no
  /// worker and no request then leaves no pending operation. (It is left
  /// armed on the request path itself, where a cancellation per request
  /// would cost a scheduler operation each.)
  void disarm_if_idle();

  /// Takes parked workers off the idle list, oldest first: at most
  /// `at_most`, each parked for at least `idle_for` at `now`. The caller
  /// stops them and hands them null (see pool_core::stop_parked).
  std::vector<worker_ptr> release_idle(std::size_t at_most, clock::time_point now = {},
                                       clock::duration idle_for = clock::duration::zero());

  /// Takes `w` off the idle list, if it is parked.
  worker_ptr release_idle(const worker_record& w);

  /// What close() and start_draining() leave to their caller, after the lock.
  struct closing {
    std::vector<worker_ptr> parked;                            // to stop (pool_core::stop_parked)
    std::vector<std::pair<worker_ptr, std::uint64_t>> nudges;  // waits to end (nudge_collector)
  };

  /// Shutdown: refuses new requests from now on; queued ones still drain to
  /// the workers, which leave once the queue is empty. Returns the parked
  /// workers, and the batches waiting for more, which start now.
  closing close();

  /// evict(): workers leave once the queue is empty, while new requests are
  /// still accepted (for the next wave). Returns as close() does.
  closing start_draining();

  void stop_draining();

  /// What the pool's strand needs to decide whether the key needs another worker.
  struct backlog_view {
    bool backlog = false;  // requests queued or waiting for room
    bool idle = false;     // workers parked
    bool draining = false;
  };
  backlog_view backlog() const;

  /// Calls `f(worker, idle_since)` for every parked worker, under the lock.
  template <class F>
  void for_each_idle(F&& f) const {
    std::lock_guard lock(mutex_);
    for (worker_record* w : idle_) f(w->shared_from_this(), w->queue.idle_since);
  }

  /// Whether `w` still holds a request whose deadline passed `grace` before
  /// `now`: its handler was told at the deadline and has not ended since.
  bool overdue(const worker_record& w, clock::time_point now, clock::duration grace) const;

  std::size_t queued() const;

  /// Whether the breaker refuses everything at `now` (waiters and loads are refused then).
  bool breaker_refuses(clock::time_point now);

  /// A load ended in failure; `counts` says whether it counts against the breaker.
  void record_load_failure(bool counts, clock::time_point now);

  /// The request counters, latency and breaker of KeyStats, as of `now`.
  void read_stats(KeyStats& s, clock::time_point now) const;

  /// The execution context is being destroyed: drops every request's handler
  /// and every parked worker without calling them, as Asio drops its own
  /// pending operations, so that the coroutines they own are destroyed.
  void abandon() noexcept;

  /// Shutdown is over: nothing is outstanding, and the timer's handler may release the pool.
  void disarm();

 private:
  /// One priority level's requests (see "Priorities" above).
  struct level {
    request_list queued;
    request_list waiting_room;  // held back by a full queue, first come first
    std::uint64_t stride = 0;   // stride_unit / its weight
    std::uint64_t pass = 0;     // its next turn, in virtual time
  };
  /// Divisible by every weight up to 16; larger weights round their stride down.
  static constexpr std::uint64_t stride_unit = 720720;

  /// The queue's lock, for a member's scope; the runs retired under it
  /// (retired_) are released after it is unlocked, so that a run's last
  /// reference, and its Request, never go under the lock.
  class scoped_lock {
   public:
    explicit scoped_lock(key_queue& q) noexcept : q_(q) { q_.mutex_.lock(); }
    scoped_lock(const scoped_lock&) = delete;
    scoped_lock& operator=(const scoped_lock&) = delete;
    ~scoped_lock() {
      request_base* retired = q_.retired_;
      if (retired) q_.retired_ = nullptr;
      q_.mutex_.unlock();
      if (retired) release_retired(retired);
    }

   private:
    key_queue& q_;
  };
  static void release_retired(request_base* retired) noexcept;

  // Every *_locked member runs under mutex_; the bodies, with what each does,
  // are in detail/impl/key_queue*.ipp.

  // Admission and the levels (key_queue.ipp).
  clock::time_point accept_time_locked(clock::time_point read);
  clock::time_point deadline_of_locked(const SubmitOptions& options, clock::time_point now) const;
  enum class coalescing { accepted, refused, needs_run };
  coalescing enqueue_coalesced_locked(request_base& r, bool wait_for_room, const SubmitOptions& options,
                                      std::string& identity, request_ptr& made, clock::time_point now,
                                      admission& result);
  void prepare_accept_locked(clock::time_point deadline);
  bool refuse_locked(request_base& r, clock::time_point deadline, clock::time_point now, admission& result);
  void refused_locked(request_base& r);
  void refuse_thrown_locked(request_base& r, admission& result);
  bool admit_locked(request_base& unit, bool wait_for_room, clock::time_point now, admission& result);
  void accept_locked(request_base& r, clock::time_point deadline, clock::time_point now);
  void push_queued_locked(request_base& r);
  void unqueue_locked(request_base& r);
  void withdraw_locked(request_base& r);
  bool hold_back_below_locked(std::uint8_t priority);
  void promote_room_waiter_locked();
  level& next_level_locked();

  // Coalesced runs (key_queue.ipp).
  void raise_priority_locked(request_base& run, std::uint8_t priority);
  void end_run_locked(request_base& run);
  void claim_callers_locked(request_base& run, std::vector<request_ptr>& callers, std::uint64_t& counter);

  // Taking, answering and claiming (key_queue.ipp).
  request_ptr take_locked(worker_record& w, clock::time_point now, std::vector<request_ptr>& expired);
  void hand_locked(request_base& r, worker_record& w, clock::time_point now);
  void release_worker_locked(worker_record& w);
  bool claim_answer_locked(request_base& r, worker_record& w, bool error, request_ptr& list_ref);
  void claim_unit_locked(request_base& unit, std::vector<request_ptr>& lost, error_code ec);
  void claim_locked(request_base& r);
  void unlink_claimed_locked(request_base& r);
  std::uint64_t& outcome_counter_locked(error_code ec);

  // Batching (key_queue_batching.ipp).
  void join_collector_locked(request_base& unit, clock::time_point now, admission& result);
  void start_collecting_locked(worker_record& w);
  void stop_collecting_locked(worker_record& w);
  void fill_batch_locked(worker_record& w, clock::time_point now, std::vector<request_ptr>& expired);
  static clock::time_point latest_start(clock::time_point deadline, clock::duration delay);
  static clock::time_point earliest_deadline_locked(request_base& unit);

  // Deadlines (key_queue_deadlines.ipp).
  void expire_locked(request_base& r, std::vector<request_ptr>& expired);
  bool expire_callers_locked(request_base& run, clock::time_point now, std::vector<request_ptr>& expired);
  void fail_expired(std::vector<request_ptr>& expired);
  request_base* abandoned_handler_locked(worker_record& w) const;
  static void interrupt_handler(const worker_ptr& w, const request_ptr& r);
  std::vector<request_ptr> claim_due_locked(clock::time_point due);
  void arm_timer_locked(clock::time_point at);

  // The strand's side (key_queue_control.ipp).
  closing closing_locked();

  const std::string name_;
  const settings limits_;
  const std::weak_ptr<const void> owner_;
  spdlog::logger* const log_;

  // Everything below: under mutex_. The fields every request touches come
  // first, with the lock, on as few cache lines as they fit in: each line a
  // critical section touches moves between the cores that take the lock in
  // turn, and under load that is most of its cost (spread over half again
  // as many lines, they made `coropool_bench roundtrip` 2-15 % slower at 256
  // clients: benchmarks/reports/2026-12-01-issue12-w1-layout.md).
  alignas(64) mutable spin_mutex mutex_;
  bool closed_ = false;
  bool draining_ = false;
  bool timer_armed_ = false;
  std::uint32_t nonempty_levels_ = 0;  // bit i: level i has requests queued
  std::size_t queued_ = 0;             // over every level: what queue_capacity bounds
  std::size_t waiting_room_ = 0;       // over every level
  clock::time_point armed_at_;
  clock::time_point last_accepted_;  // see accept_time_locked
  std::uint64_t virtual_time_ = 0;   // the pass of the last request taken
  // Parked workers, oldest first. Plain pointers: a parked worker's suspended
  // coroutine owns its record, and the request path pays no reference count;
  // the strand's rare uses get the owner from shared_from_this().
  std::vector<worker_record*> idle_;
  request_base* retired_ = nullptr;  // runs ended under the lock, chained by run_info::next_retired (see scoped_lock)
  std::vector<worker_record*> collectors_;  // batches waiting for more, oldest first (see "Batching")
  std::vector<level> levels_;               // by priority, 0 the highest
  deadline_index outstanding_;
  struct {
    std::uint64_t submitted = 0, completed = 0, failed = 0, timed_out = 0, cancelled = 0, rejected = 0;
    std::uint64_t expired_before_dispatch = 0, expired_in_handler = 0, held_back = 0, coalesced = 0;
    std::uint64_t batches = 0;
  } counters_;  // see KeyStats
  circuit_breaker breaker_;
  // Batching workers' and coalesced runs' callers'; a worker serving one
  // request at a time records its own (worker_record::recorded).
  LatencyHistogram latency_;
  LatencyHistogram queue_time_;
  std::vector<std::uint64_t> batch_sizes_;  // batches run, by their size
  LatencyHistogram batch_wait_;             // how long each batch's first unit waited for the batch to start
  // The runs of coalesced requests that wait or are being handled, by
  // identity; each holds a reference, and has at least one caller.
  std::unordered_map<std::string, request_base*> runs_;
  timer_type timer_;  // at the earliest deadline of the outstanding requests
};

}  // namespace coropool::detail

#if defined(COROPOOL_HEADER_ONLY)
#include "coropool/detail/impl/key_queue.ipp"
#include "coropool/detail/impl/key_queue_batching.ipp"
#include "coropool/detail/impl/key_queue_control.ipp"
#include "coropool/detail/impl/key_queue_deadlines.ipp"
#endif
