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
            std::weak_ptr<const void> owner, spdlog::logger* log)
      : name_(std::move(key_name)),
        limits_(std::move(limits)),
        owner_(std::move(owner)),
        log_(log),
        breaker_(breaker),
        timer_(ex) {
    levels_.resize(limits_.priority_weights.size());
    for (std::size_t i = 0; i < levels_.size(); ++i) levels_[i].stride = stride_unit / limits_.priority_weights[i];
  }
  key_queue(const key_queue&) = delete;
  key_queue& operator=(const key_queue&) = delete;

  ~key_queue() {
    // Requests still here were abandoned with their execution context.
    for (auto& l : levels_) {
      l.queued.clear();
      l.waiting_room.clear();
    }
    outstanding_.clear_and_dispose([](request_base* r) { intrusive_ptr_release(r); });
  }

  /// What enqueue() decided; its caller acts on it after the lock.
  struct admission {
    error_code refused;                             // set: complete the request with it
    std::unique_ptr<completion<request_ptr>> wake;  // set: a parked worker's, to complete with `handed`
    request_ptr handed;   // the run a coalesced request started; null: the request itself (no reference to count)
    bool joined = false;  // attached to a run already waiting or handled
    // A collecting worker whose wait is to end now (its batch filled, or an
    // earlier deadline joined it): nudge_collector() after the lock.
    std::pair<worker_ptr, std::uint64_t> nudge;
    bool collected = false;  // joined a batch that was waiting for more
  };

  /// Ends the wait `gen` of a collecting worker, on its strand (see admission::nudge).
  static void nudge_collector(std::pair<worker_ptr, std::uint64_t>& nudge) {
    if (!nudge.first) return;
    auto& w = *nudge.first;
    asio::post(w.strand, task([w = std::move(nudge.first), gen = nudge.second] {
                 if (w->own.collect_wait == gen && w->own.batch_timer) w->own.batch_timer->cancel();
               }));
  }

  /// Accepts `r` (its priority set and checked by the caller): hands it to a
  /// parked worker, queues it, or (when the queue is full) makes room by
  /// holding back a lower level's newest request, or makes it wait for room;
  /// refuses it when the key is closed, its breaker is open, its deadline has
  /// passed, or the queue is full and `wait_for_room` is false.
  admission enqueue(const request_ptr& r, bool wait_for_room, const SubmitOptions& options = {}) {
    admission result;
    std::lock_guard lock(mutex_);
    const auto now = clock::now();  // under the lock: common deadlines are inserted in order
    const auto deadline = deadline_of_locked(options, now);
    if (refuse_locked(*r, deadline, now, result)) return result;
    r->deadline = deadline;  // before admission: a collecting batch may have to start before it
    if (!admit_locked(*r, wait_for_room, now, result)) {
      refused_locked(*r);
      return result;
    }
    accept_locked(*r, deadline, now);
    return result;
  }

  /// enqueue() for a request whose identity is `identity` (coalesce_key):
  /// attaches it to the run of an identical request that is waiting or
  /// being handled, or starts a run, made by `make_run` from `r` and
  /// admitted as enqueue() admits a request, with `r` its first caller. A
  /// run takes one place in the queue, the highest level and the latest
  /// deadline of its callers; each caller keeps its own deadline and
  /// cancellation, and the run is withdrawn (or its answer discarded) when
  /// its last caller has left.
  admission enqueue_coalesced(const request_ptr& r, bool wait_for_room, const SubmitOptions& options,
                              std::string identity, request_ptr (*make_run)(request_base&)) {
    admission result;
    std::lock_guard lock(mutex_);
    const auto now = clock::now();
    const auto deadline = deadline_of_locked(options, now);
    if (refuse_locked(*r, deadline, now, result)) return result;
    request_base* run = nullptr;
    if (auto it = runs_.find(identity); it != runs_.end()) {
      run = it->second;
      result.joined = true;
      ++counters_.coalesced;
      if (r->priority < run->priority) raise_priority_locked(*run, r->priority);
    } else {
      request_ptr made = make_run(*r);  // takes r's Request
      made->priority = r->priority;
      made->deadline = deadline;
      if (!admit_locked(*made, wait_for_room, now, result)) {
        refused_locked(*r);
        return result;
      }
      if (result.wake) result.handed = made;
      made->accepted = now;
      made->deadline = deadline;
      made->coalesced().identity = std::move(identity);
      run = made.get();
      runs_.emplace(run->coalesced().identity, run);
      intrusive_ptr_add_ref(run);  // the runs_ map's, until the run ends
    }
    run->deadline = std::max(run->deadline, deadline);
    if (result.joined && run->state == request_base::phase::in_flight) {
      // The run waits in a batch that collects: it may have to start before it would.
      worker_record& c = *run->worker;
      if (c.queue.collecting && c.queue.go_at != clock::time_point::max() &&
          latest_start(deadline, c.queue.batch_delay) < c.queue.go_at) {
        result.nudge = {c.shared_from_this(), c.queue.collect_gen};
      }
    }
    r->state = request_base::phase::attached;
    r->run = run;
    run->coalesced().callers.push_back(*r);
    accept_locked(*r, deadline, now);
    return result;
  }

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
  void set_batching(worker_record& w, std::size_t limit, clock::duration delay) {
    std::lock_guard lock(mutex_);
    w.queue.batch_limit = limit;
    w.queue.batch_delay = delay;
  }

  /// `w` is to stop once its batch is done: no arrival joins it any more,
  /// and a wait for more ends now (the caller nudges the worker).
  std::pair<worker_ptr, std::uint64_t> stop_collecting(worker_record& w) {
    std::lock_guard lock(mutex_);
    std::pair<worker_ptr, std::uint64_t> nudge;
    if (w.queue.collecting && w.queue.go_at != clock::time_point::max()) {
      nudge = {w.shared_from_this(), w.queue.collect_gen};
    }
    stop_collecting_locked(w);
    return nudge;
  }

  /// A worker's coroutine has ended: what it still holds (a batch it
  /// refilled before its stop was seen, or held when it was cancelled) is
  /// claimed, each counted with `ec`, for the caller to complete; it leaves
  /// the collectors. Unlike claim_current(), nothing counts against the
  /// breaker: the pool stopped it.
  std::vector<request_ptr> release_held(worker_record& w, error_code ec) {
    std::vector<request_ptr> lost;
    std::lock_guard lock(mutex_);
    stop_collecting_locked(w);
    for (auto& u : std::exchange(w.queue.batch, {})) claim_unit_locked(*u, lost, ec);
    w.queue.batch_started = false;
    if (w.queue.current) claim_unit_locked(*std::exchange(w.queue.current, nullptr), lost, ec);
    return lost;
  }

  /// Tops up `w`'s batch from the queue, up to its limit, in the order the
  /// levels are served; it then collects while it has room. Whether it holds any unit.
  bool fill_batch(worker_record& w) {
    const auto now = clock::now();
    std::vector<request_ptr> expired;
    bool any = false;
    {
      std::lock_guard lock(mutex_);
      fill_batch_locked(w, now, expired);
      any = !w.queue.batch.empty();
    }
    fail_expired(expired);
    return any;
  }

  /// When `w`'s batch is to start: `now` when it collects no more (full,
  /// a stream, stopped); else the earlier of `delay` after its first unit
  /// joined and the earliest deadline of its units. A later instant is
  /// registered as the worker's wait `gen`, which an arrival that fills the
  /// batch or brings an earlier deadline ends early (admission::nudge).
  clock::time_point batch_start_time(worker_record& w, clock::duration delay, clock::time_point now,
                                     std::uint64_t& gen) {
    std::lock_guard lock(mutex_);
    w.queue.go_at = clock::time_point::max();
    if (!w.queue.collecting) return now;
    // A request keeps at least one `delay` of its time for its handler: the
    // batch does not wait into the last `delay` before any of its deadlines.
    clock::time_point go = deadline_after(w.queue.batch_first, delay);
    for (auto& u : w.queue.batch) {
      if (u->state != request_base::phase::done) go = std::min(go, latest_start(earliest_deadline_locked(*u), delay));
    }
    if (go <= now) return now;
    w.queue.go_at = go;
    gen = ++w.queue.collect_gen;
    return go;
  }

  /// Starts `w`'s batch: nothing joins it any more. Returns its units not
  /// done, in order, and in `handling` what names its handler for
  /// interrupt_handler (worker_record::own.handling). Empty when every unit
  /// ended meanwhile: the batch is then gone.
  std::vector<request_ptr> start_batch(worker_record& w, clock::time_point now, const request_base*& handling) {
    std::vector<request_ptr> live;
    std::lock_guard lock(mutex_);
    stop_collecting_locked(w);
    w.queue.go_at = clock::time_point::max();
    live.reserve(w.queue.batch.size());
    for (auto& u : w.queue.batch) {
      if (u->state != request_base::phase::done) live.push_back(u);
    }
    if (live.empty()) {
      w.queue.batch.clear();
      w.shared.state.transition(worker_state::ready);
      return live;
    }
    w.queue.batch_started = true;
    handling = w.queue.batch.front().get();
    if (live.front()->streamed) return live;  // served alone, by the stream handler: not a batch
    ++counters_.batches;
    if (batch_sizes_.size() <= live.size()) batch_sizes_.resize(live.size() + 1);
    ++batch_sizes_[live.size()];
    batch_wait_.record(std::chrono::duration<double, std::micro>(now - w.queue.batch_first).count());
    return live;
  }

  /// The worker has run its batch over `units` (start_batch's): claims each
  /// answer that still goes to a caller into `deliveries` (the unit's index,
  /// and the unit, or each caller of a run), counted completed or failed by
  /// `errors`; records the breaker once for a batch that failed as a whole
  /// (`batch_error`: `batch_failure` says whether it counts), else once per
  /// unit (`failures`); then refills the batch. Whether a next batch has units.
  bool finish_batch(worker_record& w, const std::vector<request_ptr>& units, const std::vector<char>& errors,
                    const std::vector<char>& failures, bool batch_error, bool batch_failure, clock::time_point now,
                    std::vector<std::pair<std::size_t, request_ptr>>& deliveries) {
    std::vector<request_ptr> expired;
    std::vector<request_ptr> callers;
    bool any = false;
    {
      std::lock_guard lock(mutex_);
      if (batch_error) {
        breaker_.record(batch_failure, now);  // one outcome: the half-open probes among its units end without theirs
        for (auto& u : units) {
          if (u->probe) breaker_.release_probe(std::exchange(u->probe, 0));
        }
      } else {
        for (char f : failures) breaker_.record(f != 0, now);
      }
      w.shared.served.fetch_add(units.size(), std::memory_order_relaxed);
      w.queue.batch.clear();
      w.queue.batch_started = false;
      w.shared.state.transition(worker_state::ready);
      for (std::size_t i = 0; i < units.size(); ++i) {
        request_base& u = *units[i];
        if (u.state == request_base::phase::done) continue;  // ended meanwhile: its result goes nowhere
        u.probe = 0;                                         // its outcome was recorded
        auto& counter = errors[i] ? counters_.failed : counters_.completed;
        if (u.is_run) {
          claim_callers_locked(u, callers, counter);
          for (auto& c : callers) {
            latency_.record(std::chrono::duration<double, std::micro>(now - c->accepted).count());
            deliveries.emplace_back(i, std::move(c));
          }
          callers.clear();
        } else {
          ++counter;
          claim_locked(u);  // units[i] keeps it alive
          latency_.record(std::chrono::duration<double, std::micro>(now - u.accepted).count());
          deliveries.emplace_back(i, units[i]);
        }
      }
      fill_batch_locked(w, now, expired);
      any = !w.queue.batch.empty();
    }
    fail_expired(expired);
    return any;
  }

  /// Withdraws `r`: true when it was claimed here, and its caller is then to
  /// be completed with `operation_aborted`; false when it was done already.
  bool cancel(request_base& r) {
    std::lock_guard lock(mutex_);
    if (r.state == request_base::phase::done) return false;
    claim_locked(r);  // the caller's reference keeps r alive
    ++outcome_counter_locked(asio::error::operation_aborted);
    return true;
  }

  /// The worker's next request, if one is queued and the worker is not stopped.
  request_ptr take(worker_record& w) {
    const auto now = clock::now();
    std::vector<request_ptr> expired;
    request_ptr r;
    {
      std::lock_guard lock(mutex_);
      r = take_locked(w, now, expired);
    }
    fail_expired(expired);
    return r;
  }

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
      std::lock_guard lock(mutex_);
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
    return result;
  }

  /// The worker is done with `r`: whether its answer goes to the caller
  /// (false when `r` was completed meanwhile: timed out, cancelled, shut down).
  bool claim_answer(request_base& r, worker_record& w, bool error) {
    std::lock_guard lock(mutex_);
    return claim_answer_locked(r, w, error);
  }

  /// claim_answer() and then take(), under one lock: a worker pays one lock
  /// per request. Records the outcome with the breaker and, for an answer
  /// that goes to its caller, its latency.
  /// For a run, `answer` is false and `callers` receives the callers it
  /// answers, each claimed (none when every caller had left).
  request_ptr claim_answer_and_take(request_base& r, worker_record& w, bool& answer, std::vector<request_ptr>& callers,
                                    bool error, bool failure, clock::time_point now, double latency_us) {
    std::vector<request_ptr> expired;
    request_ptr next;
    {
      std::lock_guard lock(mutex_);
      breaker_.record(failure, now);
      if (r.is_run) {
        answer = false;
        release_worker_locked(w);
        if (r.state != request_base::phase::done) {
          r.probe = 0;  // its outcome was recorded
          claim_callers_locked(r, callers, error ? counters_.failed : counters_.completed);
          for (auto& c : callers) latency_.record(std::chrono::duration<double, std::micro>(now - c->accepted).count());
        }
      } else {
        answer = claim_answer_locked(r, w, error);
        if (answer) latency_.record(latency_us);
      }
      next = take_locked(w, now, expired);
    }
    fail_expired(expired);
    return next;
  }

  /// The worker was lost: claims the request it holds (every caller of a
  /// run), if not done, and counts the loss against the breaker. The caller
  /// completes them with `ec`.
  std::vector<request_ptr> claim_current(worker_record& w, error_code ec) {
    std::vector<request_ptr> lost;
    std::lock_guard lock(mutex_);
    breaker_.record(true, clock::now());
    if (w.queue.batch_limit) {
      stop_collecting_locked(w);
      for (auto& u : std::exchange(w.queue.batch, {})) claim_unit_locked(*u, lost, ec);
      w.queue.batch_started = false;
      w.shared.state.transition(worker_state::ready);  // holds nothing (refused quietly once it is evicting)
      if (ec == errc::request_timeout) counters_.expired_in_handler += lost.size();
      return lost;
    }
    if (w.queue.current) claim_unit_locked(*w.queue.current, lost, ec);
    if (ec == errc::request_timeout) counters_.expired_in_handler += lost.size();  // the sweep came before the timer
    return lost;
  }

  /// Completes every outstanding request with `ec` (and `error`, where the
  /// pool made one); none is dropped.
  void fail_all(error_code ec, const std::exception_ptr& error = nullptr) {
    std::vector<request_ptr> claimed;
    {
      std::lock_guard lock(mutex_);
      claimed = claim_due_locked(clock::time_point::max());
      outcome_counter_locked(ec) += claimed.size();
    }
    for (auto& r : claimed) r->fail(ec, error);
  }

  /// Completes with `request_timeout` every request due by `now`, and re-arms
  /// the timer at the next deadline. What the deadline timer runs.
  void expire(clock::time_point now) {
    std::vector<request_ptr> expired;
    std::vector<std::pair<worker_ptr, request_ptr>> interrupted;  // handlers still running theirs
    {
      std::lock_guard lock(mutex_);
      timer_armed_ = false;
      while (!outstanding_.empty() && outstanding_.earliest()->deadline <= now) {
        request_base& r = *outstanding_.earliest();
        expired.emplace_back(&r);
        // The worker whose handler runs it (or its run), if one does.
        worker_record* holder = nullptr;
        if (r.state == request_base::phase::in_flight) {
          holder = r.worker;
        } else if (r.state == request_base::phase::attached && r.run->state == request_base::phase::in_flight) {
          holder = r.run->worker;
        }
        if (holder && holder->queue.batch_limit && !holder->queue.batch_started) holder = nullptr;  // still collecting
        ++(holder ? counters_.expired_in_handler : counters_.expired_before_dispatch);
        claim_locked(r);
        // Nobody waits for that handler any more: it is told.
        if (request_base* handling = holder ? abandoned_handler_locked(*holder) : nullptr) {
          if (auto w = holder->weak_from_this().lock()) interrupted.emplace_back(std::move(w), handling);
        }
      }
      counters_.timed_out += expired.size();
      if (!outstanding_.empty()) arm_timer_locked(outstanding_.earliest()->deadline);
    }
    if (!expired.empty() && log_) log_->debug("coropool: {} request(s) of key '{}' timed out", expired.size(), name_);
    for (auto& r : expired) r->fail(errc::request_timeout, nullptr);
    for (auto& [w, r] : interrupted) interrupt_handler(w, r);
  }

  /// Disarms the deadline timer if no request is outstanding: a key with no
  /// worker and no request then leaves no pending operation. (It is left
  /// armed on the request path itself, where a cancellation per request
  /// would cost a scheduler operation each.)
  void disarm_if_idle() {
    std::lock_guard lock(mutex_);
    if (outstanding_.empty()) {
      timer_armed_ = false;  // a wait the last re-arm superseded may still be pending: cancelled too
      timer_.cancel();
    }
  }

  /// Takes parked workers off the idle list, oldest first: at most
  /// `at_most`, each parked for at least `idle_for` at `now`. The caller
  /// stops them and hands them null (see pool_core::stop_parked).
  std::vector<worker_ptr> release_idle(std::size_t at_most, clock::time_point now = {},
                                       clock::duration idle_for = clock::duration::zero()) {
    std::vector<worker_ptr> released;
    std::lock_guard lock(mutex_);
    // idle_ is a stack: the most recently parked is handed work first, the oldest age at the front.
    std::size_t n = 0;
    while (n < idle_.size() && n < at_most && now - idle_[n]->queue.idle_since >= idle_for) ++n;
    for (std::size_t i = 0; i < n; ++i) released.push_back(idle_[i]->shared_from_this());
    idle_.erase(idle_.begin(), idle_.begin() + n);
    return released;
  }

  /// Takes `w` off the idle list, if it is parked.
  worker_ptr release_idle(const worker_record& w) {
    std::lock_guard lock(mutex_);
    for (auto it = idle_.begin(); it != idle_.end(); ++it) {
      if (*it == &w) {
        worker_ptr owner = (*it)->shared_from_this();
        idle_.erase(it);
        return owner;
      }
    }
    return nullptr;
  }

  /// What close() and start_draining() leave to their caller, after the lock.
  struct closing {
    std::vector<worker_ptr> parked;                            // to stop (pool_core::stop_parked)
    std::vector<std::pair<worker_ptr, std::uint64_t>> nudges;  // waits to end (nudge_collector)
  };

  /// Shutdown: refuses new requests from now on; queued ones still drain to
  /// the workers, which leave once the queue is empty. Returns the parked
  /// workers, and the batches waiting for more, which start now.
  closing close() {
    std::lock_guard lock(mutex_);
    closed_ = true;
    return closing_locked();
  }

  /// evict(): workers leave once the queue is empty, while new requests are
  /// still accepted (for the next wave). Returns as close() does.
  closing start_draining() {
    std::lock_guard lock(mutex_);
    draining_ = true;
    return closing_locked();
  }

  void stop_draining() {
    std::lock_guard lock(mutex_);
    draining_ = false;
  }

  /// What the pool's strand needs to decide whether the key needs another worker.
  struct backlog_view {
    bool backlog = false;  // requests queued or waiting for room
    bool idle = false;     // workers parked
    bool draining = false;
  };
  backlog_view backlog() const {
    std::lock_guard lock(mutex_);
    return {queued_ > 0 || waiting_room_ > 0, !idle_.empty(), draining_};
  }

  /// Calls `f(worker, idle_since)` for every parked worker, under the lock.
  template <class F>
  void for_each_idle(F&& f) const {
    std::lock_guard lock(mutex_);
    for (worker_record* w : idle_) f(w->shared_from_this(), w->queue.idle_since);
  }

  /// Whether `w` still holds a request whose deadline passed `grace` before
  /// `now`: its handler was told at the deadline and has not ended since.
  bool overdue(const worker_record& w, clock::time_point now, clock::duration grace) const {
    std::lock_guard lock(mutex_);
    if (w.queue.batch_limit) {
      // A batch's handler is told when its last unit ends: overdue once every unit's deadline is.
      if (!w.queue.batch_started || w.queue.batch.empty()) return false;
      clock::time_point latest = clock::time_point::min();
      for (auto& u : w.queue.batch) latest = std::max(latest, u->deadline);
      return deadline_after(latest, grace) <= now;
    }
    return w.queue.current && deadline_after(w.queue.current->deadline, grace) <= now;
  }

  std::size_t queued() const {
    std::lock_guard lock(mutex_);
    return queued_;
  }

  /// Whether the breaker refuses everything at `now` (waiters and loads are refused then).
  bool breaker_refuses(clock::time_point now) {
    std::lock_guard lock(mutex_);
    return breaker_.refuses(now);
  }

  /// A load ended in failure; `counts` says whether it counts against the breaker.
  void record_load_failure(bool counts, clock::time_point now) {
    std::lock_guard lock(mutex_);
    breaker_.record(counts, now);
  }

  /// The request counters, latency and breaker of KeyStats, as of `now`.
  void read_stats(KeyStats& s, clock::time_point now) const {
    std::lock_guard lock(mutex_);
    s.queued = queued_;
    s.waiting_for_room = waiting_room_;
    s.queued_by_priority.resize(levels_.size());
    for (std::size_t i = 0; i < levels_.size(); ++i) s.queued_by_priority[i] = levels_[i].queued.size();
    s.expired_before_dispatch = counters_.expired_before_dispatch;
    s.expired_in_handler = counters_.expired_in_handler;
    s.held_back = counters_.held_back;
    s.coalesced = counters_.coalesced;
    s.queue_time = queue_time_;
    s.batches = counters_.batches;
    s.batch_sizes = batch_sizes_;
    s.batch_wait = batch_wait_;
    s.submitted = counters_.submitted;
    s.completed = counters_.completed;
    s.failed = counters_.failed;
    s.timed_out = counters_.timed_out;
    s.cancelled = counters_.cancelled;
    s.rejected = counters_.rejected;
    s.breaker = breaker_.state_at(now);
    s.breaker_opened = breaker_.times_opened();
    s.latency = latency_;
  }

  /// The execution context is being destroyed: drops every request's handler
  /// and every parked worker without calling them, as Asio drops its own
  /// pending operations, so that the coroutines they own are destroyed.
  void abandon() noexcept {
    std::vector<request_ptr> claimed;
    std::vector<std::unique_ptr<completion<request_ptr>>> parked;
    {
      std::lock_guard lock(mutex_);
      claimed = claim_due_locked(clock::time_point::max());
      for (worker_record* w : std::exchange(idle_, {})) parked.push_back(std::move(w->queue.parked));
    }
    for (auto& r : claimed) r->abandon();
  }

  /// Shutdown is over: nothing is outstanding, and the timer's handler may release the pool.
  void disarm() {
    std::lock_guard lock(mutex_);
    timer_.cancel();
  }

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

  /// Empties the idle list (a parked worker is alive: its suspended
  /// coroutine owns its record, so its owner can be had in O(1)), and ends
  /// the waits of the batches that collect: they start now, and take no
  /// arrival from here on.
  closing closing_locked() {
    closing c;
    c.parked.reserve(idle_.size());
    for (worker_record* w : std::exchange(idle_, {})) c.parked.push_back(w->shared_from_this());
    for (worker_record* w : std::exchange(collectors_, {})) {
      w->queue.collecting = false;
      if (w->queue.go_at != clock::time_point::max())
        c.nudges.emplace_back(w->shared_from_this(), w->queue.collect_gen);
    }
    return c;
  }

  /// The deadline `options` give a request accepted at `now` (see SubmitOptions).
  clock::time_point deadline_of_locked(const SubmitOptions& options, clock::time_point now) const {
    auto deadline =
        deadline_after(now, std::min(options.timeout.value_or(limits_.request_timeout), limits_.max_request_timeout));
    if (options.deadline) deadline = std::min(deadline, *options.deadline);
    return deadline;
  }

  /// Refuses `r` before admission: the key is closed, or its deadline has
  /// passed (then it counts as accepted and timed out at once).
  bool refuse_locked(request_base& r, clock::time_point deadline, clock::time_point now, admission& result) {
    if (closed_) {
      result.refused = errc::shutting_down;
      refused_locked(r);
      return true;
    }
    if (deadline > now) return false;
    r.state = request_base::phase::done;  // under the lock: a cancellation may look at it as soon as we unlock
    ++counters_.submitted;
    ++counters_.timed_out;
    ++counters_.expired_before_dispatch;
    result.refused = errc::request_timeout;
    return true;
  }

  void refused_locked(request_base& r) {
    r.state = request_base::phase::done;
    ++counters_.rejected;
  }

  /// Places `unit` (a request, or a new run): with a parked worker, in the
  /// queue, or among the callers waiting for room. False, with
  /// `result.refused` set, when the breaker or a full queue refuses it.
  bool admit_locked(request_base& unit, bool wait_for_room, clock::time_point now, admission& result) {
    if (!breaker_.admit(now, unit.probe)) {
      result.refused = errc::circuit_open;
      return false;
    }
    if (!collectors_.empty() && !unit.streamed) {
      // A batch that waits for more takes it: nothing is queued while one does.
      join_collector_locked(unit, now, result);
      result.collected = true;
      return true;
    }
    if (!idle_.empty()) {
      // A parked worker takes it directly: nothing is queued whenever one is parked.
      worker_record* woken = idle_.back();
      idle_.pop_back();
      result.wake = std::move(woken->queue.parked);
      woken->shared.state.transition(worker_state::ready);
      unit.accepted = now;
      hand_locked(unit, *woken, now);
      start_collecting_locked(*woken);
      return true;
    }
    if (queued_ < limits_.capacity || hold_back_below_locked(unit.priority)) {
      push_queued_locked(unit);
      return true;
    }
    if (wait_for_room) {
      unit.state = request_base::phase::waiting_room;
      levels_[unit.priority].waiting_room.push_back(unit);
      ++waiting_room_;
      return true;
    }
    result.refused = errc::queue_full;
    return false;
  }

  /// `r`, admitted, becomes outstanding until its one completion.
  void accept_locked(request_base& r, clock::time_point deadline, clock::time_point now) {
    ++counters_.submitted;
    r.accepted = now;
    r.deadline = deadline;
    outstanding_.insert(r);
    intrusive_ptr_add_ref(&r);
    if (!timer_armed_ || deadline < armed_at_) arm_timer_locked(deadline);
  }

  /// A caller of a higher level attached to `run`: a waiting run moves to
  /// the back of that level.
  void raise_priority_locked(request_base& run, std::uint8_t priority) {
    using phase = request_base::phase;
    if (run.state == phase::queued) {
      unqueue_locked(run);
      run.priority = priority;
      push_queued_locked(run);
    } else if (run.state == phase::waiting_room) {
      auto& from = levels_[run.priority].waiting_room;
      from.erase(from.iterator_to(run));
      run.priority = priority;
      levels_[priority].waiting_room.push_back(run);
    } else {
      run.priority = priority;
    }
  }

  /// The run's last caller has left, or it was answered: it leaves the
  /// queue (if it waits there) and the map, and is done. One being handled
  /// stays in its worker's hands, and its answer goes nowhere.
  void end_run_locked(request_base& run) {
    if (run.probe) breaker_.release_probe(std::exchange(run.probe, 0));
    withdraw_locked(run);
    run.state = request_base::phase::done;
    runs_.erase(run.coalesced().identity);
    intrusive_ptr_release(&run);  // the map's: the worker or the caller at hand holds another
  }

  /// Claims every caller attached to `run` into `callers`, each counted with
  /// `ec` (an empty one: `counter` instead), and ends the run.
  void claim_callers_locked(request_base& run, std::vector<request_ptr>& callers, std::uint64_t& counter) {
    auto& attached = run.coalesced().callers;
    while (!attached.empty()) {
      request_base& c = attached.front();
      attached.pop_front();
      c.state = request_base::phase::done;
      outstanding_.erase(c);
      callers.emplace_back(&c, false);  // takes over outstanding_'s reference
      ++counter;
    }
    end_run_locked(run);
  }

  /// Hands `unit` to the oldest collecting batch; that worker's wait ends
  /// when the batch is full or `unit` must start before it would.
  void join_collector_locked(request_base& unit, clock::time_point now, admission& result) {
    worker_record& c = *collectors_.front();
    unit.accepted = now;
    hand_locked(unit, c, now);
    if (c.queue.batch.size() >= c.queue.batch_limit) {
      stop_collecting_locked(c);
    } else if (!(latest_start(unit.deadline, c.queue.batch_delay) < c.queue.go_at)) {
      return;
    }
    if (c.queue.go_at != clock::time_point::max()) result.nudge = {c.shared_from_this(), c.queue.collect_gen};
  }

  /// `w`, holding a batch with room that has not started, takes arrivals from now on.
  void start_collecting_locked(worker_record& w) {
    if (w.queue.batch_limit <= 1 || w.queue.collecting || w.queue.batch_started) return;
    if (w.queue.batch.empty() || w.queue.batch.size() >= w.queue.batch_limit || w.queue.batch.front()->streamed) return;
    if (closed_ || draining_ || w.shared.stop_requested.load(std::memory_order_relaxed)) return;
    w.queue.collecting = true;
    collectors_.push_back(&w);
  }

  void stop_collecting_locked(worker_record& w) {
    if (!w.queue.collecting) return;
    w.queue.collecting = false;
    collectors_.erase(std::find(collectors_.begin(), collectors_.end(), &w));
  }

  void fill_batch_locked(worker_record& w, clock::time_point now, std::vector<request_ptr>& expired) {
    while (w.queue.batch.size() < w.queue.batch_limit) {
      if (!w.queue.batch.empty() && w.queue.batch.front()->streamed) break;
      if (!take_locked(w, now, expired)) break;
    }
    // Only with nothing queued (a stream left at the head): arrivals must not pass what waits.
    if (queued_ == 0) start_collecting_locked(w);
  }

  /// The latest instant a batch holding a request due at `deadline` may
  /// start: `delay` before it (see BatchConfig), or never for max().
  static clock::time_point latest_start(clock::time_point deadline, clock::duration delay) {
    if (deadline == clock::time_point::max()) return deadline;
    return deadline > clock::time_point::min() + delay ? deadline - delay : clock::time_point::min();
  }

  /// A unit's earliest deadline: a run's is that of its earliest caller
  /// (its own `deadline` is the latest).
  static clock::time_point earliest_deadline_locked(request_base& unit) {
    if (!unit.is_run) return unit.deadline;
    clock::time_point earliest = clock::time_point::max();
    for (auto& c : unit.coalesced().callers) earliest = std::min(earliest, c.deadline);
    return earliest;
  }

  /// The request that names the handler `w` runs, if nobody waits for that
  /// handler any more (see interrupt_handler): its request (or run) is done,
  /// or every unit of its batch is.
  request_base* abandoned_handler_locked(worker_record& w) const {
    if (w.queue.batch_limit) {
      if (!w.queue.batch_started || w.queue.batch.empty()) return nullptr;
      for (auto& u : w.queue.batch) {
        if (u->state != request_base::phase::done) return nullptr;
      }
      return w.queue.batch.front().get();
    }
    request_base* current = w.queue.current.get();
    return current && current->state == request_base::phase::done ? current : nullptr;
  }

  /// Claims `unit` (a request, or every caller of a run), not done, into `lost`, counted with `ec`.
  void claim_unit_locked(request_base& unit, std::vector<request_ptr>& lost, error_code ec) {
    if (unit.state == request_base::phase::done) return;
    if (unit.is_run) {
      claim_callers_locked(unit, lost, outcome_counter_locked(ec));
    } else {
      lost.emplace_back(&unit);
      claim_locked(unit);
      ++outcome_counter_locked(ec);
    }
  }

  /// Hands `r` to `w`, which is to run its handler.
  void hand_locked(request_base& r, worker_record& w, clock::time_point now) {
    r.state = request_base::phase::in_flight;
    r.worker = &w;
    bool first = true;
    if (w.queue.batch_limit) {
      first = w.queue.batch.empty();
      if (first) w.queue.batch_first = now;
      w.queue.batch.emplace_back(&r);
    } else {
      w.queue.current = request_ptr(&r);
    }
    if (first) w.shared.state.transition(worker_state::processing);  // a batch's later units find it so
    queue_time_.record(std::chrono::duration<double, std::micro>(now - r.accepted).count());
  }

  void push_queued_locked(request_base& r) {
    level& l = levels_[r.priority];
    if (l.queued.empty()) {
      l.pass = std::max(l.pass, virtual_time_ + l.stride);  // rejoins where the others are
      nonempty_levels_ |= 1u << r.priority;
    }
    r.state = request_base::phase::queued;
    l.queued.push_back(r);
    ++queued_;
  }

  /// Takes `r` out of its level's queue.
  void unqueue_locked(request_base& r) {
    level& l = levels_[r.priority];
    l.queued.erase(l.queued.iterator_to(r));
    --queued_;
    if (l.queued.empty()) nonempty_levels_ &= ~(1u << r.priority);
  }

  /// Takes `r` (a request or a run) out of the queue or the room waiters,
  /// whichever it waits in; a place freed in the queue goes to a room waiter.
  void withdraw_locked(request_base& r) {
    using phase = request_base::phase;
    if (r.state == phase::queued) {
      unqueue_locked(r);
      promote_room_waiter_locked();
    } else if (r.state == phase::waiting_room) {
      auto& list = levels_[r.priority].waiting_room;
      list.erase(list.iterator_to(r));
      --waiting_room_;
    }
  }

  /// The queue is full and a request of level `priority` arrives: holds back
  /// the newest queued request of the lowest level below it, if any, which
  /// then waits for room first among its level's. Admission is not revoked:
  /// a held-back request ends as any other (try_submit's included).
  bool hold_back_below_locked(std::uint8_t priority) {
    for (std::size_t q = levels_.size(); q-- > std::size_t{priority} + 1;) {
      level& l = levels_[q];
      if (l.queued.empty()) continue;
      request_base& held = l.queued.back();
      unqueue_locked(held);
      held.state = request_base::phase::waiting_room;
      l.waiting_room.push_front(held);
      ++waiting_room_;
      ++counters_.held_back;
      return true;
    }
    return false;
  }

  /// The level a worker takes from next: the non-empty one with the smallest pass.
  level& next_level_locked() {
    std::uint32_t rest = nonempty_levels_;
    level* next = &levels_[static_cast<std::size_t>(std::countr_zero(rest))];
    rest &= rest - 1;
    while (rest) {  // more than one level waits: the smallest pass, the higher level on a tie
      level& l = levels_[static_cast<std::size_t>(std::countr_zero(rest))];
      if (l.pass < next->pass) next = &l;
      rest &= rest - 1;
    }
    return *next;
  }

  /// The next request for `w`; those whose deadline passed before a worker
  /// could take them are claimed into `expired` (never handed to a worker).
  request_ptr take_locked(worker_record& w, clock::time_point now, std::vector<request_ptr>& expired) {
    if (w.shared.stop_requested.load(std::memory_order_relaxed)) return nullptr;
    while (queued_ > 0) {
      level& l = next_level_locked();
      request_base& r = l.queued.front();
      // Past its deadline (the timer has not run yet: its thread is busy): never handed to a worker.
      if (r.is_run) {
        if (expire_callers_locked(r, now, expired)) continue;  // the run ended, and may be gone
      } else if (r.deadline <= now) {
        expire_locked(r, expired);
        continue;
      }
      if (r.streamed && !w.queue.batch.empty()) return nullptr;  // a stream is served alone, after this batch
      unqueue_locked(r);
      virtual_time_ = l.pass;
      l.pass += l.stride;
      hand_locked(r, w, now);
      promote_room_waiter_locked();
      return request_ptr(&r);
    }
    return nullptr;
  }

  /// Claims `r`, past its deadline before a worker took it, into `expired`.
  void expire_locked(request_base& r, std::vector<request_ptr>& expired) {
    expired.emplace_back(&r);
    claim_locked(r);
    ++counters_.timed_out;
    ++counters_.expired_before_dispatch;
  }

  /// Claims the callers of `run` that are past their deadlines into
  /// `expired`; true when none is left, and the run has ended with them.
  /// (The run's own deadline, the latest of its callers', can be stale: a
  /// caller that left does not lower it.)
  bool expire_callers_locked(request_base& run, clock::time_point now, std::vector<request_ptr>& expired) {
    request_ptr hold(&run);  // the last caller's claim ends the run, and drops the map's reference
    auto& callers = run.coalesced().callers;
    for (auto it = callers.begin(); it != callers.end();) {
      request_base& c = *it++;
      if (c.deadline <= now) expire_locked(c, expired);
    }
    return run.state == request_base::phase::done;
  }

  /// Completes, after the lock, the requests take_locked() found expired:
  /// posted to the key's timer executor, as expire() completes them, not
  /// inline on the worker's path, where an exception out of a caller's
  /// completion (a Response whose default constructor throws) would escape
  /// between the worker's claim of its answer and the answer's delivery.
  void fail_expired(std::vector<request_ptr>& expired) {
    if (expired.empty()) return;
    if (log_) log_->debug("coropool: {} request(s) of key '{}' timed out in the queue", expired.size(), name_);
    asio::post(timer_.get_executor(), task([owner = owner_.lock(), expired = std::move(expired)] {
                 for (auto& r : expired) r->fail(errc::request_timeout, nullptr);
               }));
  }

  /// Tells the handler still running `r`, past its deadline, that its caller
  /// has gone: the worker's coroutine is cancelled on its own strand, if it
  /// is still in that request's handler then (see worker_loop).
  static void interrupt_handler(const worker_ptr& w, const request_ptr& r) {
    asio::post(w->strand, task([w, r] {
                 if (w->own.handling != r.get() || w->own.finished) return;
                 w->own.interrupted = true;
                 w->own.stop_signal.emit(asio::cancellation_type::terminal);
               }));
  }

  void release_worker_locked(worker_record& w) {
    w.queue.current = nullptr;
    if (w.queue.batch_limit) {
      w.queue.batch.clear();
      w.queue.batch_started = false;
    }
    w.shared.served.fetch_add(1, std::memory_order_relaxed);
    w.shared.state.transition(worker_state::ready);
  }

  bool claim_answer_locked(request_base& r, worker_record& w, bool error) {
    release_worker_locked(w);
    if (r.state == request_base::phase::done) return false;
    r.probe = 0;  // its outcome was recorded
    ++(error ? counters_.failed : counters_.completed);
    claim_locked(r);  // the worker's reference keeps r alive
    return true;
  }

  /// Moves the first caller waiting for room, highest level first, into the queue if it has room.
  void promote_room_waiter_locked() {
    if (waiting_room_ == 0 || queued_ >= limits_.capacity) return;
    for (auto& l : levels_) {
      if (l.waiting_room.empty()) continue;
      request_base& r = l.waiting_room.front();
      l.waiting_room.pop_front();
      --waiting_room_;
      push_queued_locked(r);
      return;
    }
  }

  /// Marks `r` done and takes it off every list. The caller holds a reference
  /// of its own, so dropping the list's cannot destroy it under the lock.
  void claim_locked(request_base& r) {
    using phase = request_base::phase;
    if (r.probe) breaker_.release_probe(std::exchange(r.probe, 0));  // ended without an outcome
    withdraw_locked(r);
    if (r.state == phase::attached) {
      request_base& run = *std::exchange(r.run, nullptr);
      run.coalesced().callers.erase(run.coalesced().callers.iterator_to(r));
      if (run.coalesced().callers.empty()) end_run_locked(run);  // the last caller has left
    }
    r.state = phase::done;
    outstanding_.erase(r);
    intrusive_ptr_release(&r);
  }

  /// Claims every outstanding request due by `due` (max(): all of them).
  std::vector<request_ptr> claim_due_locked(clock::time_point due) {
    std::vector<request_ptr> claimed;
    while (!outstanding_.empty() && outstanding_.earliest()->deadline <= due) {
      claimed.emplace_back(outstanding_.earliest());
      claim_locked(*claimed.back());
    }
    return claimed;
  }

  /// The counter of KeyStats that a caller completed by the pool with `ec`
  /// is counted in: the bucket named after what the caller sees.
  std::uint64_t& outcome_counter_locked(error_code ec) {
    if (ec == errc::request_timeout) return counters_.timed_out;
    if (ec == asio::error::operation_aborted) return counters_.cancelled;
    return counters_.failed;
  }

  void arm_timer_locked(clock::time_point at) {
    timer_armed_ = true;
    armed_at_ = at;
    timer_.expires_at(at);  // cancels the wait it replaces, if any
    timer_.async_wait(wait_task([owner = owner_.lock(), this](error_code ec) {
      if (!ec) expire(clock::now());
    }));
  }

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
  std::uint64_t virtual_time_ = 0;  // the pass of the last request taken
  // Parked workers, oldest first. Plain pointers: a parked worker's suspended
  // coroutine owns its record, and the request path pays no reference count;
  // the strand's rare uses get the owner from shared_from_this().
  std::vector<worker_record*> idle_;
  std::vector<worker_record*> collectors_;  // batches waiting for more, oldest first (see "Batching")
  std::vector<level> levels_;               // by priority, 0 the highest
  deadline_index outstanding_;
  struct {
    std::uint64_t submitted = 0, completed = 0, failed = 0, timed_out = 0, cancelled = 0, rejected = 0;
    std::uint64_t expired_before_dispatch = 0, expired_in_handler = 0, held_back = 0, coalesced = 0;
    std::uint64_t batches = 0;
  } counters_;  // see KeyStats
  circuit_breaker breaker_;
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
