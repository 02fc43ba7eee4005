#pragma once

// pool_core: a worker's life. Its load ends (on_loaded), it is stopped
// (stop_gracefully, request_stop, declare_dead) and taken out of routing
// (retire), and its coroutine ends (on_exit). Pool strand, except the two
// calls a worker's coroutine makes on its own strand.

#include "coropool/detail/pool_core.hpp"

namespace coropool::detail {

/// Worker strand, as its coroutine starts.
COROPOOL_DECL bool pool_core::worker_starts(worker_record& w) {
  return w.shared.state.transition(worker_state::loading) && !w.shared.stop_requested.load(std::memory_order_acquire);
}

/// Worker strand, once its model is loaded.
COROPOOL_DECL void pool_core::worker_loaded(std::shared_ptr<worker_record> w) {
  w->shared.state.transition(worker_state::ready);
  w->own.last_progress = clock::now();
  asio::defer(strand_, task([self = shared_from_this(), w = std::move(w)] { self->on_loaded(w); }));
}

COROPOOL_DECL void pool_core::on_loaded(const std::shared_ptr<worker_record>& w) {
  key_state& k = *w->key;
  if (w->pool.retired) return;  // stopped while its load ended
  --k.spawn.loading;
  w->pool.ready = true;
  w->pool.last_pong = w->pool.reported_progress = clock::now();
  k.gauges.ready_workers.fetch_add(1, std::memory_order_release);
  k.spawn.scale_up_failed = false;
  if (stopping()) return;    // it serves what its key still has queued, then leaves
  k.waiters.finish_all({});  // wake first, then log
  log_->info("coropool: key '{}' worker {} ready", k.name, w->id);
  if (auto old = std::exchange(w->pool.replaces, nullptr)) stop_gracefully(old);
  attend(k);
  advance_commands(k);
}

/// Takes a worker out of its key's routing: it counts no more as one of
/// the key's workers, although its coroutine may still be running.
COROPOOL_DECL void pool_core::retire(const std::shared_ptr<worker_record>& w) {
  if (w->pool.retired) return;
  key_state& k = *w->key;
  w->pool.retired = true;
  std::erase(k.spawn.workers, w);
  k.gauges.live_workers.fetch_sub(1, std::memory_order_release);
  if (w->pool.ready) {
    k.gauges.ready_workers.fetch_sub(1, std::memory_order_release);
  } else {
    --k.spawn.loading;
  }
  if (!w->own.finished) retired_.push_back(w);
}

COROPOOL_DECL void pool_core::on_exit(const std::shared_ptr<worker_record>& w, const std::exception_ptr& e) {
  key_state& k = *w->key;
  --live_workers_;
  const bool was_routable = !w->pool.retired;
  const bool loaded = w->pool.ready;
  const bool load_failure = was_routable && !loaded && !stopping();
  if (load_failure) {
    k.queue.record_load_failure(counts_as_failure(e ? e : std::make_exception_ptr(std::runtime_error(""))),
                                clock::now());
    k.gauges.load_failures.fetch_add(1, std::memory_order_relaxed);
  }
  {
    std::lock_guard lock(k.roster_mutex);  // with the roster: stats() counts each record once
    std::erase(k.roster, w);
    w->recorded.latency.add_to(k.recorded_latency);  // its coroutine has ended: nothing records any more
    w->recorded.queue_time.add_to(k.recorded_queue_time);
  }
  const std::uint64_t freed = w->pool.reservation.release();  // a model's memory goes with its worker
  k.gauges.memory_reserved.fetch_sub(freed, std::memory_order_relaxed);
  if (w->pool.memory_victim) memory_.victim_freed(freed);
  start_waiting_spawns();
  retire(w);
  std::erase(retired_, w);
  if (load_failure && w->shared.state.load() == worker_state::loading) {
    w->shared.state.transition(worker_state::failed);
  } else {
    w->shared.state.begin_eviction();
  }
  w->shared.state.transition(worker_state::dead);
  if (load_failure) {
    k.spawn.last_failure = e ? e : std::make_exception_ptr(std::runtime_error("loader ended without a model"));
    log_->warn("coropool: key '{}' worker {} failed to load: {}", k.name, w->id,
               spawn_error::describe(k.spawn.last_failure));
    if (auto old = std::exchange(w->pool.replaces, nullptr)) abort_restart(k);
    // A key that still serves does not retry a failed scale-up on every
    // submit (a load that fails at once would spin): the next tick does.
    if (k.gauges.ready_workers.load(std::memory_order_relaxed) > 0) k.spawn.scale_up_failed = true;
  } else if (was_routable && e) {
    // A loaded worker whose coroutine ended by an exception: as if declared dead.
    log_->error("coropool: key '{}' worker {} died: {}", k.name, w->id, spawn_error::describe(e));
    k.gauges.deaths.fetch_add(1, std::memory_order_relaxed);
    fail_current(*w, errc::worker_lost);
  } else {
    // What a stopped worker still holds (a batch it refilled before its stop
    // was seen, or held when its coroutine was cancelled) is its callers' still.
    const errc because = w->shared.cancelled_because.load(std::memory_order_acquire);
    const error_code ec = because != errc{} ? make_error_code(because) : make_error_code(errc::worker_lost);
    for (auto& lost : k.queue.release_held(*w, ec)) lost->fail(ec, nullptr);
  }
  if (k.spawn.loading == 0 && k.gauges.ready_workers.load(std::memory_order_relaxed) == 0) {
    // Nobody is left to serve this key's requests, nor about to be.
    if (stopping()) {
      k.queue.fail_all(errc::shutting_down);
    } else if (load_failure) {
      auto error = std::make_exception_ptr(spawn_error(k.name, k.spawn.last_failure));
      k.waiters.finish_all(errc::spawn_failed, error);
      k.queue.fail_all(errc::spawn_failed, error);
    }
  }
  // A load ended (see attend), or a worker that served is gone: what is still queued may need another.
  attend(k);
  advance_commands(k);
  disarm_request_timer_if_unused(k);
  if (stopping() && live_workers_ == 0) finish_shutdown();
}

/// Fails the request a worker holds (each caller of a run), if not done already; a worker
/// lost counts against its key's breaker.
COROPOOL_DECL void pool_core::fail_current(worker_record& w, error_code ec) {
  for (auto& lost : w.key->queue.claim_current(w, ec)) lost->fail(ec, nullptr);
}

/// Stops a worker now: a parked one is handed null, and whatever it awaits
/// (its load, its handler's operation) is cancelled. The signal is emitted
/// on the worker's own strand, where its coroutine runs.
COROPOOL_DECL void pool_core::request_stop(const std::shared_ptr<worker_record>& w, errc because) {
  w->shared.cancelled_because.store(because, std::memory_order_release);
  stop_gracefully(w);
  asio::post(w->strand, task([w] {
               if (!w->own.finished) w->own.stop_signal.emit(asio::cancellation_type::terminal);
             }));
}

/// Stops a worker once it has finished what it is doing: a parked one at
/// once, a busy one after its current request; it takes no new one.
COROPOOL_DECL void pool_core::stop_gracefully(const std::shared_ptr<worker_record>& w) {
  w->shared.stop_requested.store(true, std::memory_order_release);
  w->shared.state.begin_eviction();
  if (auto parked = w->key->queue.release_idle(*w)) stop_parked({std::move(parked)});
  auto nudge = w->key->queue.stop_collecting(*w);  // a batch waiting for more starts now
  key_queue::nudge_collector(nudge);
  retire(w);
}

/// A key was closed or began to drain: its parked workers are stopped, and
/// its batches waiting for more start now.
COROPOOL_DECL void pool_core::finish_closing(key_queue::closing c) {
  stop_parked(std::move(c.parked));
  for (auto& nudge : c.nudges) key_queue::nudge_collector(nudge);
}

/// Stops workers taken off their key's idle list: each is retired and
/// handed null, which makes its coroutine leave.
COROPOOL_DECL void pool_core::stop_parked(std::vector<std::shared_ptr<worker_record>> released) {
  for (auto& w : released) {
    w->shared.stop_requested.store(true, std::memory_order_release);
    w->shared.state.begin_eviction();
    retire(w);
  }
  for (auto& w : released) std::exchange(w->queue.parked, nullptr)->complete(request_ptr());
}

/// The health sweep found a worker unresponsive (no pong within
/// health_timeout) or stuck on a request past its deadline: it leaves
/// routing now, its caller is completed, a replacement is spawned where
/// the key needs one, and its coroutine is cancelled.
COROPOOL_DECL void pool_core::declare_dead(const std::shared_ptr<worker_record>& w, error_code ec, const char* why) {
  key_state& k = *w->key;
  log_->error("coropool: key '{}' worker {} declared dead: {} (last progress reported {} ms ago)", k.name, w->id, why,
              std::chrono::duration_cast<std::chrono::milliseconds>(clock::now() - w->pool.reported_progress).count());
  w->pool.declared_dead = true;
  k.gauges.deaths.fetch_add(1, std::memory_order_relaxed);
  fail_current(*w, ec);
  request_stop(w, errc::worker_lost);
  attend(k);
  refill(k);
}

}  // namespace coropool::detail
