#pragma once

// key_queue: the request path. Admission (enqueue, a coalesced request's
// run, the levels and the room waiters), a worker's take and answer, cancel,
// and the claims that end a request exactly once (see detail/key_queue.hpp).

#include "coropool/detail/key_queue.hpp"

namespace coropool::detail {

COROPOOL_DECL key_queue::key_queue(std::string key_name, const executor& ex, settings limits, circuit_breaker breaker,
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

COROPOOL_DECL key_queue::~key_queue() {
  // Requests still here were abandoned with their execution context.
  for (auto& l : levels_) {
    l.queued.clear();
    l.waiting_room.clear();
  }
  outstanding_.clear_and_dispose([](request_base* r) { intrusive_ptr_release(r); });
}

COROPOOL_DECL key_queue::admission key_queue::enqueue(const request_ptr& r, bool wait_for_room,
                                                      const SubmitOptions& options) {
  admission result;
  // Outside the lock, which every request of the key contends for: the clock
  // read (see accept_time_locked) and the reference that outstanding_ holds
  // once the request is accepted. Refused (or should anything under the lock
  // throw), the request drops that reference after the lock.
  const auto read = clock::now();
  request_ptr list_ref(r);
  scoped_lock lock(*this);
  try {
    const auto now = accept_time_locked(read);
    const auto deadline = deadline_of_locked(options, now);
    if (!refuse_locked(*r, deadline, now, result)) {
      r->deadline = deadline;  // before admission: a collecting batch may have to start before it
      prepare_accept_locked(deadline);
      if (admit_locked(*r, wait_for_room, now, result)) {
        accept_locked(*r, deadline, now);
        list_ref.detach();  // outstanding_'s now
      } else {
        refused_locked(*r);
      }
    }
  } catch (...) {
    refuse_thrown_locked(*r, result);
  }
  return result;
}

COROPOOL_DECL key_queue::admission key_queue::enqueue_coalesced(const request_ptr& r, bool wait_for_room,
                                                                const SubmitOptions& options, std::string identity,
                                                                request_ptr (*make_run)(request_base&)) {
  admission result;
  const auto read = clock::now();
  request_ptr list_ref(r);  // outstanding_'s, as in enqueue()
  request_ptr made;         // the run, when none waits for this identity; released after the lock when unused
  for (;;) {
    {
      scoped_lock lock(*this);
      try {
        switch (
            enqueue_coalesced_locked(*r, wait_for_room, options, identity, made, accept_time_locked(read), result)) {
          case coalescing::accepted:
            list_ref.detach();
            return result;
          case coalescing::refused:
            return result;
          case coalescing::needs_run:
            break;
        }
      } catch (...) {
        refuse_thrown_locked(*r, result);
        return result;
      }
    }
    // No run of that identity: one is made outside the lock, where moving
    // the user's Request belongs; another caller may start one meanwhile,
    // which r then joins, and `made` goes unused.
    try {
      made = make_run(*r);
    } catch (...) {
      scoped_lock lock(*this);
      refuse_thrown_locked(*r, result);
      return result;
    }
  }
}

// enqueue_coalesced() under the lock: needs_run when no run of `identity`
// waits and `made` is null (the caller makes one and comes back).
COROPOOL_DECL key_queue::coalescing key_queue::enqueue_coalesced_locked(request_base& r, bool wait_for_room,
                                                                        const SubmitOptions& options,
                                                                        std::string& identity, request_ptr& made,
                                                                        clock::time_point now, admission& result) {
  const auto deadline = deadline_of_locked(options, now);
  if (refuse_locked(r, deadline, now, result)) return coalescing::refused;
  request_base* run = nullptr;
  if (auto it = runs_.find(identity); it != runs_.end()) {
    prepare_accept_locked(deadline);
    run = it->second;
    result.joined = true;
    ++counters_.coalesced;
    if (r.priority < run->priority) raise_priority_locked(*run, r.priority);
  } else {
    if (!made) return coalescing::needs_run;
    prepare_accept_locked(deadline);
    made->priority = r.priority;
    made->deadline = deadline;
    const auto entry = runs_.emplace(identity, made.get()).first;  // may throw: before anything else changes
    try {
      if (!admit_locked(*made, wait_for_room, now, result)) {
        runs_.erase(entry);
        refused_locked(r);
        return coalescing::refused;  // `made` goes after the lock
      }
    } catch (...) {
      runs_.erase(entry);
      if (made->probe) breaker_.release_probe(std::exchange(made->probe, 0));
      throw;
    }
    if (result.wake) result.handed = made;
    made->accepted = now;
    made->coalesced().identity = std::move(identity);
    run = made.detach();  // the runs_ map's reference, until the run ends
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
  r.state = request_base::phase::attached;
  r.run = run;
  run->coalesced().callers.push_back(r);
  accept_locked(r, deadline, now);
  return coalescing::accepted;
}

COROPOOL_DECL bool key_queue::cancel(request_base& r) {
  scoped_lock lock(*this);
  if (r.state == request_base::phase::done) return false;
  claim_locked(r);  // the caller's reference keeps r alive
  ++outcome_counter_locked(asio::error::operation_aborted);
  return true;
}

COROPOOL_DECL request_ptr key_queue::take(worker_record& w) {
  const auto now = clock::now();
  std::vector<request_ptr> expired;
  request_ptr r;
  {
    scoped_lock lock(*this);
    r = take_locked(w, now, expired);
  }
  fail_expired(expired);
  if (r) record_taken(w, *r, now);
  return r;
}

COROPOOL_DECL void key_queue::record_taken(worker_record& w, const request_base& r, clock::time_point now) {
  if (!w.queue.batch_limit)
    w.recorded.queue_time.record(std::chrono::duration<double, std::micro>(now - r.accepted).count());
}

COROPOOL_DECL bool key_queue::claim_answer(request_base& r, worker_record& w, bool error) {
  request_ptr list_ref;  // outstanding_'s reference, dropped after the lock
  scoped_lock lock(*this);
  return claim_answer_locked(r, w, error, list_ref);
}

COROPOOL_DECL request_ptr key_queue::claim_answer_and_take(request_base& r, worker_record& w, bool& answer,
                                                           std::vector<request_ptr>& callers, bool error, bool failure,
                                                           clock::time_point now, double latency_us) {
  std::vector<request_ptr> expired;
  request_ptr next;
  request_ptr list_ref;  // outstanding_'s reference to `r`, dropped after the lock
  {
    scoped_lock lock(*this);
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
      answer = claim_answer_locked(r, w, error, list_ref);
    }
    next = take_locked(w, now, expired);
  }
  fail_expired(expired);
  if (answer) w.recorded.latency.record(latency_us);
  if (next) record_taken(w, *next, now);
  return next;
}

COROPOOL_DECL std::vector<request_ptr> key_queue::claim_current(worker_record& w, error_code ec) {
  std::vector<request_ptr> lost;
  scoped_lock lock(*this);
  breaker_.record(true, clock::now());
  if (w.queue.batch_limit) {
    stop_collecting_locked(w);
    for (auto& u : std::exchange(w.queue.batch, {})) claim_unit_locked(*u, lost, ec);
    w.queue.batch_started = false;
    // The state is left alone: the worker may still be in its batch handler.
    // It ends the batch it no longer holds itself (finish_batch, or
    // start_batch with nothing live: Processing to Ready), before or after
    // the stop that follows a loss moves it to Evicting.
    if (ec == errc::request_timeout) counters_.expired_in_handler += lost.size();
    return lost;
  }
  if (w.queue.current) claim_unit_locked(*w.queue.current, lost, ec);
  if (ec == errc::request_timeout) counters_.expired_in_handler += lost.size();  // the sweep came before the timer
  return lost;
}

// The deadline `options` give a request accepted at `now` (see SubmitOptions).
COROPOOL_DECL clock::time_point key_queue::deadline_of_locked(const SubmitOptions& options,
                                                              clock::time_point now) const {
  auto deadline =
      deadline_after(now, std::min(options.timeout.value_or(limits_.request_timeout), limits_.max_request_timeout));
  if (options.deadline) deadline = std::min(deadline, *options.deadline);
  return deadline;
}

// The instant a request is accepted at: the clock as its caller read it
// before taking the lock, but never earlier than the last request's. Requests
// with the pool's request_timeout then still come in deadline order (see
// deadline_index), as when the clock was read under the lock, and the lock
// is not held across the read.
COROPOOL_DECL clock::time_point key_queue::accept_time_locked(clock::time_point read) {
  if (read > last_accepted_) last_accepted_ = read;
  return last_accepted_;
}

// Refuses `r` before admission: the key is closed, or its deadline has
// passed (then it counts as accepted and timed out at once).
COROPOOL_DECL bool key_queue::refuse_locked(request_base& r, clock::time_point deadline, clock::time_point now,
                                            admission& result) {
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

// Something under enqueue()'s lock threw, before anything had changed (see
// "Exceptions"): `r` is refused, its caller to get the exception, and a
// cancellation finds it done.
COROPOOL_DECL void key_queue::refuse_thrown_locked(request_base& r, admission& result) {
  if (r.probe) breaker_.release_probe(std::exchange(r.probe, 0));  // admitted as a probe before the throw
  refused_locked(r);
  result.refused = errc::invalid_argument;  // not shown: `error` is what the caller gets
  result.error = std::current_exception();
}

COROPOOL_DECL void key_queue::refused_locked(request_base& r) {
  r.state = request_base::phase::done;
  ++counters_.rejected;
}

// Places `unit` (a request, or a new run): with a parked worker, in the
// queue, or among the callers waiting for room. False, with
// `result.refused` set, when the breaker or a full queue refuses it.
COROPOOL_DECL bool key_queue::admit_locked(request_base& unit, bool wait_for_room, clock::time_point now,
                                           admission& result) {
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
    if (woken->queue.batch_limit) {  // what may throw, before anything changes: room for a batch and its collector
      woken->queue.batch.reserve(woken->queue.batch.size() + 1);
      collectors_.reserve(collectors_.size() + 1);
    }
    woken->shared.state.transition(worker_state::ready);
    unit.accepted = now;
    hand_locked(unit, *woken, now);
    idle_.pop_back();
    result.wake = std::move(woken->queue.parked);
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
  // A half-open breaker's probe that never runs is given back: kept, it would
  // hold the breaker's last probes and refuse everything from then on.
  if (unit.probe) breaker_.release_probe(std::exchange(unit.probe, 0));
  return false;
}

// `r`, admitted, becomes outstanding until its one completion.
COROPOOL_DECL void key_queue::accept_locked(request_base& r, clock::time_point deadline, clock::time_point now) {
  ++counters_.submitted;
  r.accepted = now;
  r.deadline = deadline;
  outstanding_.insert(r);  // with the reference its caller took before the lock; room made by prepare_accept_locked
}

// What accepting a request due at `deadline` needs that may throw, before
// anything changes (see "Exceptions"): room in outstanding_, and the timer
// armed at the deadline if it is the earliest. A request then refused
// leaves the timer early at worst: it fires, finds nothing due, and stops.
COROPOOL_DECL void key_queue::prepare_accept_locked(clock::time_point deadline) {
  outstanding_.reserve_for(deadline);
  if (!timer_armed_ || deadline < armed_at_) arm_timer_locked(deadline);
}

// A caller of a higher level attached to `run`: a waiting run moves to
// the back of that level.
COROPOOL_DECL void key_queue::raise_priority_locked(request_base& run, std::uint8_t priority) {
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

// The run's last caller has left, or it was answered: it leaves the
// queue (if it waits there) and the map, and is done. One being handled
// stays in its worker's hands, and its answer goes nowhere.
COROPOOL_DECL void key_queue::end_run_locked(request_base& run) {
  if (run.probe) breaker_.release_probe(std::exchange(run.probe, 0));
  withdraw_locked(run);
  run.state = request_base::phase::done;
  runs_.erase(run.coalesced().identity);
  // The map's reference, perhaps the last (a queued run's last caller left):
  // released after the lock (scoped_lock).
  run.coalesced().next_retired = std::exchange(retired_, &run);
}

COROPOOL_DECL void key_queue::release_retired(request_base* retired) noexcept {
  while (retired) intrusive_ptr_release(std::exchange(retired, retired->coalesced().next_retired));
}

// Claims every caller attached to `run` into `callers`, each counted with
// `ec` (an empty one: `counter` instead), and ends the run.
COROPOOL_DECL void key_queue::claim_callers_locked(request_base& run, std::vector<request_ptr>& callers,
                                                   std::uint64_t& counter) {
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

// Claims `unit` (a request, or every caller of a run), not done, into `lost`, counted with `ec`.
COROPOOL_DECL void key_queue::claim_unit_locked(request_base& unit, std::vector<request_ptr>& lost, error_code ec) {
  if (unit.state == request_base::phase::done) return;
  if (unit.is_run) {
    claim_callers_locked(unit, lost, outcome_counter_locked(ec));
  } else {
    lost.emplace_back(&unit);
    claim_locked(unit);
    ++outcome_counter_locked(ec);
  }
}

// Hands `r` to `w`, which is to run its handler.
COROPOOL_DECL void key_queue::hand_locked(request_base& r, worker_record& w, clock::time_point now) {
  bool first = true;
  if (w.queue.batch_limit) {
    first = w.queue.batch.empty();
    w.queue.batch.emplace_back(&r);  // first: should it throw, nothing has changed
    if (first) w.queue.batch_first = now;
  } else {
    w.queue.current = request_ptr(&r);
  }
  r.state = request_base::phase::in_flight;
  r.worker = &w;
  if (first) w.shared.state.transition(worker_state::processing);  // a batch's later units find it so
  // A worker serving one request at a time records it itself, after the lock (record_taken).
  if (w.queue.batch_limit) queue_time_.record(std::chrono::duration<double, std::micro>(now - r.accepted).count());
}

COROPOOL_DECL void key_queue::push_queued_locked(request_base& r) {
  level& l = levels_[r.priority];
  if (l.queued.empty()) {
    l.pass = std::max(l.pass, virtual_time_ + l.stride);  // rejoins where the others are
    nonempty_levels_ |= 1u << r.priority;
  }
  r.state = request_base::phase::queued;
  l.queued.push_back(r);
  ++queued_;
}

// Takes `r` out of its level's queue.
COROPOOL_DECL void key_queue::unqueue_locked(request_base& r) {
  level& l = levels_[r.priority];
  l.queued.erase(l.queued.iterator_to(r));
  --queued_;
  if (l.queued.empty()) nonempty_levels_ &= ~(1u << r.priority);
}

// Takes `r` (a request or a run) out of the queue or the room waiters,
// whichever it waits in; a place freed in the queue goes to a room waiter.
COROPOOL_DECL void key_queue::withdraw_locked(request_base& r) {
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

// The queue is full and a request of level `priority` arrives: holds back
// the newest queued request of the lowest level below it, if any, which
// then waits for room first among its level's. Admission is not revoked:
// a held-back request ends as any other (try_submit's included).
COROPOOL_DECL bool key_queue::hold_back_below_locked(std::uint8_t priority) {
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

// The level a worker takes from next: the non-empty one with the smallest pass.
COROPOOL_DECL key_queue::level& key_queue::next_level_locked() {
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

// The next request for `w`; those whose deadline passed before a worker
// could take them are claimed into `expired` (never handed to a worker).
COROPOOL_DECL request_ptr key_queue::take_locked(worker_record& w, clock::time_point now,
                                                 std::vector<request_ptr>& expired) {
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
    hand_locked(r, w, now);  // first: it may throw (a batch's room), and nothing has changed then
    unqueue_locked(r);
    virtual_time_ = l.pass;
    l.pass += l.stride;
    promote_room_waiter_locked();
    return request_ptr(&r);
  }
  return nullptr;
}

COROPOOL_DECL void key_queue::release_worker_locked(worker_record& w) {
  w.queue.current = nullptr;
  if (w.queue.batch_limit) {
    w.queue.batch.clear();
    w.queue.batch_started = false;
  }
  w.shared.served.fetch_add(1, std::memory_order_relaxed);
  w.shared.state.transition(worker_state::ready);
}

// `list_ref` receives outstanding_'s reference to `r`, for the caller to
// drop after the lock (the worker holds another).
COROPOOL_DECL bool key_queue::claim_answer_locked(request_base& r, worker_record& w, bool error,
                                                  request_ptr& list_ref) {
  release_worker_locked(w);
  if (r.state == request_base::phase::done) return false;
  r.probe = 0;  // its outcome was recorded
  ++(error ? counters_.failed : counters_.completed);
  unlink_claimed_locked(r);
  list_ref = request_ptr(&r, false);
  return true;
}

// Moves the first caller waiting for room, highest level first, into the queue if it has room.
COROPOOL_DECL void key_queue::promote_room_waiter_locked() {
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

// Marks `r` done and takes it off every list. The caller holds a reference
// of its own, so dropping the list's cannot destroy it under the lock.
COROPOOL_DECL void key_queue::claim_locked(request_base& r) {
  unlink_claimed_locked(r);
  intrusive_ptr_release(&r);
}

// claim_locked(), but outstanding_'s reference is left to the caller.
COROPOOL_DECL void key_queue::unlink_claimed_locked(request_base& r) {
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
}

// The counter of KeyStats that a caller completed by the pool with `ec`
// is counted in: the bucket named after what the caller sees.
COROPOOL_DECL std::uint64_t& key_queue::outcome_counter_locked(error_code ec) {
  if (ec == errc::request_timeout) return counters_.timed_out;
  if (ec == asio::error::operation_aborted) return counters_.cancelled;
  return counters_.failed;
}

}  // namespace coropool::detail
