#pragma once

// key_queue: what the pool's strand asks of a key. Parked workers to stop,
// close and drain, the backlog and overdue checks, the breaker's state and
// the stats.

#include "coropool/detail/key_queue.hpp"

namespace coropool::detail {

COROPOOL_DECL std::vector<key_queue::worker_ptr> key_queue::release_idle(std::size_t at_most, clock::time_point now,
                                                                         clock::duration idle_for) {
  std::vector<worker_ptr> released;
  scoped_lock lock(*this);
  // idle_ is a stack: the most recently parked is handed work first, the oldest age at the front.
  std::size_t n = 0;
  while (n < idle_.size() && n < at_most && now - idle_[n]->queue.idle_since >= idle_for) ++n;
  for (std::size_t i = 0; i < n; ++i) released.push_back(idle_[i]->shared_from_this());
  idle_.erase(idle_.begin(), idle_.begin() + n);
  return released;
}

COROPOOL_DECL key_queue::worker_ptr key_queue::release_idle(const worker_record& w) {
  scoped_lock lock(*this);
  for (auto it = idle_.begin(); it != idle_.end(); ++it) {
    if (*it == &w) {
      worker_ptr owner = (*it)->shared_from_this();
      idle_.erase(it);
      return owner;
    }
  }
  return nullptr;
}

COROPOOL_DECL key_queue::closing key_queue::close() {
  scoped_lock lock(*this);
  closed_ = true;
  return closing_locked();
}

COROPOOL_DECL key_queue::closing key_queue::start_draining() {
  scoped_lock lock(*this);
  draining_ = true;
  return closing_locked();
}

COROPOOL_DECL void key_queue::stop_draining() {
  scoped_lock lock(*this);
  draining_ = false;
}

COROPOOL_DECL key_queue::backlog_view key_queue::backlog() const {
  std::lock_guard lock(mutex_);
  return {queued_ > 0 || waiting_room_ > 0, !idle_.empty(), draining_};
}

COROPOOL_DECL bool key_queue::overdue(const worker_record& w, clock::time_point now, clock::duration grace) const {
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

COROPOOL_DECL std::size_t key_queue::queued() const {
  std::lock_guard lock(mutex_);
  return queued_;
}

COROPOOL_DECL bool key_queue::breaker_refuses(clock::time_point now) {
  scoped_lock lock(*this);
  return breaker_.refuses(now);
}

COROPOOL_DECL void key_queue::record_load_failure(bool counts, clock::time_point now) {
  scoped_lock lock(*this);
  breaker_.record(counts, now);
}

COROPOOL_DECL void key_queue::read_stats(KeyStats& s, clock::time_point now) const {
  std::lock_guard lock(mutex_);
  s.queued = queued_;
  s.waiting_for_room = waiting_room_;
  s.queued_by_priority.resize(levels_.size());
  for (std::size_t i = 0; i < levels_.size(); ++i) s.queued_by_priority[i] = levels_[i].queued.size();
  s.expired_before_dispatch = counters_.expired_before_dispatch;
  s.expired_in_handler = counters_.expired_in_handler;
  s.held_back = counters_.held_back;
  s.coalesced = counters_.coalesced;
  s.queue_time += queue_time_;  // with the workers' own (pool_core::stats)
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
  s.latency += latency_;
}

// Empties the idle list (a parked worker is alive: its suspended
// coroutine owns its record, so its owner can be had in O(1)), and ends
// the waits of the batches that collect: they start now, and take no
// arrival from here on.
COROPOOL_DECL key_queue::closing key_queue::closing_locked() {
  closing c;
  c.parked.reserve(idle_.size());
  for (worker_record* w : std::exchange(idle_, {})) c.parked.push_back(w->shared_from_this());
  for (worker_record* w : std::exchange(collectors_, {})) {
    w->queue.collecting = false;
    if (w->queue.go_at != clock::time_point::max()) c.nudges.emplace_back(w->shared_from_this(), w->queue.collect_gen);
  }
  return c;
}

}  // namespace coropool::detail
