#pragma once

// key_queue: deadlines and the ends of requests the pool completes. The
// key's timer and its sweep (expire), requests found expired on a worker's
// path, the handler told at its deadline, fail_all and abandon.

#include "coropool/detail/key_queue.hpp"

namespace coropool::detail {

COROPOOL_DECL void key_queue::expire(clock::time_point now) {
  std::vector<request_ptr> expired;
  std::vector<std::pair<worker_ptr, request_ptr>> interrupted;  // handlers still running theirs
  {
    scoped_lock lock(*this);
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

COROPOOL_DECL void key_queue::fail_all(error_code ec, const std::exception_ptr& error) {
  std::vector<request_ptr> claimed;
  {
    scoped_lock lock(*this);
    claimed = claim_due_locked(clock::time_point::max());
    outcome_counter_locked(ec) += claimed.size();
  }
  for (auto& r : claimed) r->fail(ec, error);
}

COROPOOL_DECL void key_queue::abandon() noexcept {
  std::vector<request_ptr> claimed;
  std::vector<std::unique_ptr<completion<request_ptr>>> parked;
  {
    scoped_lock lock(*this);
    claimed = claim_due_locked(clock::time_point::max());
    for (worker_record* w : std::exchange(idle_, {})) parked.push_back(std::move(w->queue.parked));
  }
  for (auto& r : claimed) r->abandon();
}

COROPOOL_DECL void key_queue::disarm_if_idle() {
  scoped_lock lock(*this);
  if (outstanding_.empty()) {
    timer_armed_ = false;  // a wait the last re-arm superseded may still be pending: cancelled too
    timer_.cancel();
  }
}

COROPOOL_DECL void key_queue::disarm() {
  scoped_lock lock(*this);
  timer_.cancel();
}

// Claims `r`, past its deadline before a worker took it, into `expired`.
COROPOOL_DECL void key_queue::expire_locked(request_base& r, std::vector<request_ptr>& expired) {
  expired.emplace_back(&r);
  claim_locked(r);
  ++counters_.timed_out;
  ++counters_.expired_before_dispatch;
}

// Claims the callers of `run` that are past their deadlines into
// `expired`; true when none is left, and the run has ended with them.
// (The run's own deadline, the latest of its callers', can be stale: a
// caller that left does not lower it.) An ended run stays alive until the
// lock is released (retired_).
COROPOOL_DECL bool key_queue::expire_callers_locked(request_base& run, clock::time_point now,
                                                    std::vector<request_ptr>& expired) {
  auto& callers = run.coalesced().callers;
  for (auto it = callers.begin(); it != callers.end();) {
    request_base& c = *it++;
    if (c.deadline <= now) expire_locked(c, expired);
  }
  return run.state == request_base::phase::done;
}

// Completes, after the lock, the requests take_locked() found expired:
// posted to the key's timer executor, as expire() completes them, not
// inline on the worker's path, where an exception out of a caller's
// completion (a Response whose default constructor throws) would escape
// between the worker's claim of its answer and the answer's delivery.
COROPOOL_DECL void key_queue::fail_expired(std::vector<request_ptr>& expired) {
  if (expired.empty()) return;
  if (log_) log_->debug("coropool: {} request(s) of key '{}' timed out in the queue", expired.size(), name_);
  asio::post(timer_.get_executor(), task([owner = owner_.lock(), expired = std::move(expired)] {
               for (auto& r : expired) r->fail(errc::request_timeout, nullptr);
             }));
}

// Tells the handler still running `r`, past its deadline, that its caller
// has gone: the worker's coroutine is cancelled on its own strand, if it
// is still in that request's handler then (see worker_loop).
COROPOOL_DECL void key_queue::interrupt_handler(const worker_ptr& w, const request_ptr& r) {
  asio::post(w->strand, task([w, r] {
               if (w->own.handling != r.get() || w->own.finished) return;
               w->own.interrupted = true;
               w->own.stop_signal.emit(asio::cancellation_type::terminal);
             }));
}

// The request that names the handler `w` runs, if nobody waits for that
// handler any more (see interrupt_handler): its request (or run) is done,
// or every unit of its batch is.
COROPOOL_DECL request_base* key_queue::abandoned_handler_locked(worker_record& w) const {
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

// Claims every outstanding request due by `due` (max(): all of them).
COROPOOL_DECL std::vector<request_ptr> key_queue::claim_due_locked(clock::time_point due) {
  std::vector<request_ptr> claimed;
  while (!outstanding_.empty() && outstanding_.earliest()->deadline <= due) {
    claimed.emplace_back(outstanding_.earliest());
    claim_locked(*claimed.back());
  }
  return claimed;
}

COROPOOL_DECL void key_queue::arm_timer_locked(clock::time_point at) {
  timer_armed_ = false;   // until the wait is pending: should async_wait throw, the next request re-arms
  timer_.expires_at(at);  // cancels the wait it replaces, if any
  timer_.async_wait(wait_task([owner = owner_.lock(), this](error_code ec) {
    if (!ec) expire(clock::now());
  }));
  timer_armed_ = true;
  armed_at_ = at;
}

}  // namespace coropool::detail
