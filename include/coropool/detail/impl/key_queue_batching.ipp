#pragma once

// key_queue: batching. A worker's batch, the collectors that take arrivals
// while a batch waits for more, and its start and answers (see "Batching"
// in detail/key_queue.hpp).

#include "coropool/detail/key_queue.hpp"

namespace coropool::detail {

COROPOOL_DECL void key_queue::nudge_collector(std::pair<worker_ptr, std::uint64_t>& nudge) {
  if (!nudge.first) return;
  auto& w = *nudge.first;
  asio::post(w.strand, task([w = std::move(nudge.first), gen = nudge.second] {
               if (w->own.collect_wait == gen && w->own.batch_timer) w->own.batch_timer->cancel();
             }));
}

COROPOOL_DECL void key_queue::set_batching(worker_record& w, std::size_t limit, clock::duration delay) {
  scoped_lock lock(*this);
  w.queue.batch_limit = limit;
  w.queue.batch_delay = delay;
}

COROPOOL_DECL std::pair<key_queue::worker_ptr, std::uint64_t> key_queue::stop_collecting(worker_record& w) {
  scoped_lock lock(*this);
  std::pair<worker_ptr, std::uint64_t> nudge;
  if (w.queue.collecting && w.queue.go_at != clock::time_point::max()) {
    nudge = {w.shared_from_this(), w.queue.collect_gen};
  }
  stop_collecting_locked(w);
  return nudge;
}

COROPOOL_DECL std::vector<request_ptr> key_queue::release_held(worker_record& w, error_code ec) {
  std::vector<request_ptr> lost;
  scoped_lock lock(*this);
  stop_collecting_locked(w);
  for (auto& u : std::exchange(w.queue.batch, {})) claim_unit_locked(*u, lost, ec);
  w.queue.batch_started = false;
  if (w.queue.current) claim_unit_locked(*std::exchange(w.queue.current, nullptr), lost, ec);
  return lost;
}

COROPOOL_DECL bool key_queue::fill_batch(worker_record& w) {
  const auto now = clock::now();
  std::vector<request_ptr> expired;
  bool any = false;
  {
    scoped_lock lock(*this);
    fill_batch_locked(w, now, expired);
    any = !w.queue.batch.empty();
  }
  fail_expired(expired);
  return any;
}

COROPOOL_DECL clock::time_point key_queue::batch_start_time(worker_record& w, clock::duration delay,
                                                            clock::time_point now, std::uint64_t& gen) {
  scoped_lock lock(*this);
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

COROPOOL_DECL std::vector<request_ptr> key_queue::start_batch(worker_record& w, clock::time_point now,
                                                              const request_base*& handling) {
  std::vector<request_ptr> live;
  scoped_lock lock(*this);
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

COROPOOL_DECL bool key_queue::finish_batch(worker_record& w, const std::vector<request_ptr>& units,
                                           const std::vector<char>& errors, const std::vector<char>& failures,
                                           bool batch_error, bool batch_failure, clock::time_point now,
                                           std::vector<std::pair<std::size_t, request_ptr>>& deliveries) {
  std::vector<request_ptr> expired;
  std::vector<request_ptr> callers;
  bool any = false;
  {
    scoped_lock lock(*this);
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

// Hands `unit` to the oldest collecting batch; that worker's wait ends
// when the batch is full or `unit` must start before it would.
COROPOOL_DECL void key_queue::join_collector_locked(request_base& unit, clock::time_point now, admission& result) {
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

// `w`, holding a batch with room that has not started, takes arrivals from now on.
COROPOOL_DECL void key_queue::start_collecting_locked(worker_record& w) {
  if (w.queue.batch_limit <= 1 || w.queue.collecting || w.queue.batch_started) return;
  if (w.queue.batch.empty() || w.queue.batch.size() >= w.queue.batch_limit || w.queue.batch.front()->streamed) return;
  if (closed_ || draining_ || w.shared.stop_requested.load(std::memory_order_relaxed)) return;
  w.queue.collecting = true;
  collectors_.push_back(&w);
}

COROPOOL_DECL void key_queue::stop_collecting_locked(worker_record& w) {
  if (!w.queue.collecting) return;
  w.queue.collecting = false;
  collectors_.erase(std::find(collectors_.begin(), collectors_.end(), &w));
}

COROPOOL_DECL void key_queue::fill_batch_locked(worker_record& w, clock::time_point now,
                                                std::vector<request_ptr>& expired) {
  while (w.queue.batch.size() < w.queue.batch_limit) {
    if (!w.queue.batch.empty() && w.queue.batch.front()->streamed) break;
    if (!take_locked(w, now, expired)) break;
  }
  // Only with nothing queued (a stream left at the head): arrivals must not pass what waits.
  if (queued_ == 0) start_collecting_locked(w);
}

// The latest instant a batch holding a request due at `deadline` may
// start: `delay` before it (see BatchConfig), or never for max().
COROPOOL_DECL clock::time_point key_queue::latest_start(clock::time_point deadline, clock::duration delay) {
  if (deadline == clock::time_point::max()) return deadline;
  return deadline > clock::time_point::min() + delay ? deadline - delay : clock::time_point::min();
}

// A unit's earliest deadline: a run's is that of its earliest caller
// (its own `deadline` is the latest).
COROPOOL_DECL clock::time_point key_queue::earliest_deadline_locked(request_base& unit) {
  if (!unit.is_run) return unit.deadline;
  clock::time_point earliest = clock::time_point::max();
  for (auto& c : unit.coalesced().callers) earliest = std::min(earliest, c.deadline);
  return earliest;
}

}  // namespace coropool::detail
