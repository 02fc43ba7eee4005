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
// exactly one of: `room_waiters_` (the queue was full), `queue_`, a worker's
// hands (worker_record::queue.current). Idle workers exist only when `queue_`
// is empty; room waiters only when it is full.
//
// Exactly once. A caller is completed by whoever moves its request's phase
// to `done` under the lock (claim), and only by them: every member that
// claims hands the request back to its own caller, which completes it after
// unlocking. A path that comes later (an answer after the timeout, a
// cancellation after the answer) finds `done` and does nothing.
//
// Deadlines. Requests share the pool's request_timeout, so deadlines come in
// the order of acceptance: one timer per key, at the oldest, covers them all.
// It is left armed when requests finish early: it then fires once, finds
// nothing due, and is not re-armed (or the pool disarms it when the key has
// no worker left). Armed whenever a request is outstanding, it also keeps the
// pool's execution context running for the callers that run there (see
// request_work); that is why requests that never time out arm it at max(),
// where it never fires.

#include "coropool/detail/asio.hpp"
#include "coropool/detail/breaker.hpp"
#include "coropool/detail/completion.hpp"
#include "coropool/detail/request.hpp"
#include "coropool/detail/spin_mutex.hpp"
#include "coropool/detail/worker_record.hpp"
#include "coropool/error.hpp"
#include "coropool/stats.hpp"

#include <spdlog/logger.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace coropool::detail {

class key_queue {
 public:
  using worker_ptr = std::shared_ptr<worker_record>;

  struct settings {
    std::size_t capacity;             // PoolConfig::queue_capacity
    clock::duration request_timeout;  // PoolConfig::request_timeout
  };

  /// `owner` is kept alive by the armed deadline timer (the pool's core, which
  /// owns this queue); `log`, if not null, outlives the queue.
  key_queue(std::string key_name, const executor& ex, settings limits, circuit_breaker breaker,
            std::weak_ptr<const void> owner, spdlog::logger* log)
      : name_(std::move(key_name)),
        limits_(limits),
        owner_(std::move(owner)),
        log_(log),
        breaker_(breaker),
        timer_(ex) {}
  key_queue(const key_queue&) = delete;
  key_queue& operator=(const key_queue&) = delete;

  ~key_queue() {
    // Requests still here were abandoned with their execution context.
    queue_.clear();
    room_waiters_.clear();
    outstanding_.clear_and_dispose([](request_base* r) { intrusive_ptr_release(r); });
  }

  /// What enqueue() decided; its caller acts on it after the lock.
  struct admission {
    error_code refused;                             // set: complete the request with it
    std::unique_ptr<completion<request_ptr>> wake;  // set: a parked worker's, to complete with the request
  };

  /// Accepts `r`: hands it to a parked worker, queues it, or (when the queue
  /// is full) makes it wait for room; refuses it when the key is closed, its
  /// breaker is open, or the queue is full and `wait_for_room` is false.
  admission enqueue(const request_ptr& r, bool wait_for_room) {
    using phase = request_base::phase;
    admission result;
    std::lock_guard lock(mutex_);
    const auto now = clock::now();  // under the lock: deadlines are queued in order
    if (closed_) {
      result.refused = errc::shutting_down;
    } else if (!breaker_.admit(now, r->probe)) {
      result.refused = errc::circuit_open;
    } else if (!idle_.empty()) {
      // A parked worker takes it directly: the queue is empty whenever one is parked.
      worker_record* woken = idle_.back();
      idle_.pop_back();
      result.wake = std::move(woken->queue.parked);
      r->state = phase::in_flight;
      woken->queue.current = r;
      woken->shared.state.transition(worker_state::ready);
      woken->shared.state.transition(worker_state::processing);
    } else if (queue_.size() < limits_.capacity) {
      r->state = phase::queued;
      queue_.push_back(*r);
    } else if (wait_for_room) {
      r->state = phase::waiting_room;
      room_waiters_.push_back(*r);
    } else {
      result.refused = errc::queue_full;
    }
    if (result.refused) {
      r->state = phase::done;  // under the lock: a cancellation may look at it as soon as we unlock
      ++counters_.rejected;
      return result;
    }
    ++counters_.submitted;
    r->accepted = now;
    r->deadline = deadline_after(now, limits_.request_timeout);
    outstanding_.push_back(*r);
    intrusive_ptr_add_ref(r.get());
    if (!timer_armed_) arm_timer_locked(r->deadline);
    return result;
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
    std::lock_guard lock(mutex_);
    return take_locked(w);
  }

  /// take(), or, when nothing is queued, parks `w`: `make_parked()` makes
  /// the completion that a request (or null, to leave) is later handed to.
  /// Returns the request taken, and whether the worker was parked; neither
  /// when it is to leave now (stopped, or its key closed or draining).
  template <class MakeParked>
  std::pair<request_ptr, bool> take_or_park(worker_record& w, MakeParked&& make_parked) {
    std::lock_guard lock(mutex_);
    if (auto r = take_locked(w)) return {std::move(r), false};
    if (closed_ || draining_ || w.shared.stop_requested.load(std::memory_order_relaxed)) return {nullptr, false};
    w.queue.parked = make_parked();
    w.shared.state.transition(worker_state::idle);
    w.queue.idle_since = clock::now();
    idle_.push_back(&w);
    return {nullptr, true};
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
  request_ptr claim_answer_and_take(request_base& r, worker_record& w, bool& answer, bool error, bool failure,
                                    clock::time_point now, double latency_us) {
    std::lock_guard lock(mutex_);
    breaker_.record(failure, now);
    answer = claim_answer_locked(r, w, error);
    if (answer) latency_.record(latency_us);
    return take_locked(w);
  }

  /// The worker was lost: claims the request it holds, if not done, and counts
  /// the loss against the breaker. The caller completes the request with `ec`.
  request_ptr claim_current(worker_record& w, error_code ec) {
    std::lock_guard lock(mutex_);
    breaker_.record(true, clock::now());
    if (!w.queue.current || w.queue.current->state == request_base::phase::done) return nullptr;
    request_ptr lost = w.queue.current;
    claim_locked(*lost);
    ++outcome_counter_locked(ec);
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
    {
      std::lock_guard lock(mutex_);
      timer_armed_ = false;
      expired = claim_due_locked(now);
      outcome_counter_locked(errc::request_timeout) += expired.size();
      if (!outstanding_.empty()) arm_timer_locked(outstanding_.front().deadline);
    }
    if (!expired.empty() && log_) log_->debug("coropool: {} request(s) of key '{}' timed out", expired.size(), name_);
    for (auto& r : expired) r->fail(errc::request_timeout, nullptr);
  }

  /// Disarms the deadline timer if no request is outstanding: a key with no
  /// worker and no request then leaves no pending operation. (It is left
  /// armed on the request path itself, where a cancellation per request
  /// would cost a scheduler operation each.)
  void disarm_if_idle() {
    std::lock_guard lock(mutex_);
    if (timer_armed_ && outstanding_.empty()) {
      timer_armed_ = false;
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

  /// Shutdown: refuses new requests from now on; queued ones still drain to
  /// the workers, which leave once the queue is empty. Returns the parked workers.
  std::vector<worker_ptr> close() {
    std::lock_guard lock(mutex_);
    closed_ = true;
    return owners_of_all_idle_locked();
  }

  /// evict(): workers leave once the queue is empty, while new requests are
  /// still accepted. Returns the parked workers.
  std::vector<worker_ptr> start_draining() {
    std::lock_guard lock(mutex_);
    draining_ = true;
    return owners_of_all_idle_locked();
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
    return {!queue_.empty() || !room_waiters_.empty(), !idle_.empty(), draining_};
  }

  /// Calls `f(worker, idle_since)` for every parked worker, under the lock.
  template <class F>
  void for_each_idle(F&& f) const {
    std::lock_guard lock(mutex_);
    for (worker_record* w : idle_) f(w->shared_from_this(), w->queue.idle_since);
  }

  /// Whether `w` holds a request whose deadline has passed at `now`.
  bool overdue(const worker_record& w, clock::time_point now) const {
    std::lock_guard lock(mutex_);
    return w.queue.current && w.queue.current->deadline <= now;
  }

  std::size_t queued() const {
    std::lock_guard lock(mutex_);
    return queue_.size();
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
    s.queued = queue_.size();
    s.waiting_for_room = room_waiters_.size();
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
  /// Empties the idle list. A parked worker is alive (its suspended
  /// coroutine owns its record), so its owner can be had in O(1).
  std::vector<worker_ptr> owners_of_all_idle_locked() {
    std::vector<worker_ptr> owners;
    owners.reserve(idle_.size());
    for (worker_record* w : std::exchange(idle_, {})) owners.push_back(w->shared_from_this());
    return owners;
  }

  request_ptr take_locked(worker_record& w) {
    if (queue_.empty() || w.shared.stop_requested.load(std::memory_order_relaxed)) return nullptr;
    request_base& r = queue_.front();
    queue_.pop_front();
    r.state = request_base::phase::in_flight;
    w.queue.current = request_ptr(&r);
    w.shared.state.transition(worker_state::processing);
    promote_room_waiter_locked();
    return request_ptr(&r);
  }

  bool claim_answer_locked(request_base& r, worker_record& w, bool error) {
    w.queue.current = nullptr;
    w.shared.served.fetch_add(1, std::memory_order_relaxed);
    w.shared.state.transition(worker_state::ready);
    if (r.state == request_base::phase::done) return false;
    r.probe = 0;  // its outcome was recorded
    ++(error ? counters_.failed : counters_.completed);
    claim_locked(r);  // the worker's reference keeps r alive
    return true;
  }

  void promote_room_waiter_locked() {
    if (room_waiters_.empty() || queue_.size() >= limits_.capacity) return;
    request_base& r = room_waiters_.front();
    room_waiters_.pop_front();
    r.state = request_base::phase::queued;
    queue_.push_back(r);
  }

  /// Marks `r` done and takes it off every list. The caller holds a reference
  /// of its own, so dropping the list's cannot destroy it under the lock.
  void claim_locked(request_base& r) {
    using phase = request_base::phase;
    if (r.probe) breaker_.release_probe(std::exchange(r.probe, 0));  // ended without an outcome
    if (r.state == phase::queued) {
      queue_.erase(queue_.iterator_to(r));
      promote_room_waiter_locked();
    } else if (r.state == phase::waiting_room) {
      room_waiters_.erase(room_waiters_.iterator_to(r));
    }
    r.state = phase::done;
    outstanding_.erase(outstanding_.iterator_to(r));
    intrusive_ptr_release(&r);
  }

  /// Claims every outstanding request due by `due` (max(): all of them).
  std::vector<request_ptr> claim_due_locked(clock::time_point due) {
    std::vector<request_ptr> claimed;
    while (!outstanding_.empty() && outstanding_.front().deadline <= due) {
      claimed.emplace_back(&outstanding_.front());
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
    timer_.expires_at(at);
    timer_.async_wait(wait_task([owner = owner_.lock(), this](error_code ec) {
      if (!ec) expire(clock::now());
    }));
  }

  const std::string name_;
  const settings limits_;
  const std::weak_ptr<const void> owner_;
  spdlog::logger* const log_;

  mutable spin_mutex mutex_;
  // Everything below: under mutex_.
  request_list room_waiters_;
  request_list queue_;
  deadline_list outstanding_;
  // Parked workers, oldest first. Plain pointers: a parked worker's suspended
  // coroutine owns its record, and the request path pays no reference count;
  // the strand's rare uses get the owner from shared_from_this().
  std::vector<worker_record*> idle_;
  bool closed_ = false;
  bool draining_ = false;
  circuit_breaker breaker_;
  struct {
    std::uint64_t submitted = 0, completed = 0, failed = 0, timed_out = 0, cancelled = 0, rejected = 0;
  } counters_;  // see KeyStats
  LatencyHistogram latency_;
  timer_type timer_;  // at the deadline of the oldest outstanding request
  bool timer_armed_ = false;
};

}  // namespace coropool::detail
