#pragma once

// pool_core, pool strand: the maintenance tick (health sweep, idle eviction,
// warm keys refilled, failed scale-ups retried) and the pongs it reads.

#include "coropool/detail/pool_core.hpp"

namespace coropool::detail {

/// Arms the tick while the pool has workers.
COROPOOL_DECL void pool_core::start_maintenance() {
  if (stopping() || live_workers_ == 0) return;
  tick_.arm([self = shared_from_this()] { self->on_tick(); });
}

COROPOOL_DECL void pool_core::on_tick() {
  if (stopping()) return;  // shutdown has its own deadline
  const auto now = clock::now();
  const auto due = tick_.take_due(now);
  if (due.health) health_sweep(now);
  if (due.maintenance) {
    for (key_state* k : all_keys()) {
      evict_idle(*k, now);
      refill(*k);
    }
  }
  for (key_state* k : all_keys()) {
    if (std::exchange(k->spawn.scale_up_failed, false)) attend(*k);  // a failed scale-up's next try
  }
  if (live_workers_ == 0) return tick_.reset();  // idle: the next worker restarts the clock
  start_maintenance();
}

COROPOOL_DECL void pool_core::health_sweep(clock::time_point now) {
  for (key_state* k : all_keys()) {
    for (auto w : std::vector(k->spawn.workers)) {  // declare_dead changes the list
      if (!w->pool.ready) continue;                 // loads are bounded by spawn_timeout's callers, not pinged
      if (now - w->pool.last_pong > config_.health_timeout) {
        declare_dead(w, errc::worker_lost, "no pong within health_timeout");
      } else if (k->queue.overdue(*w, now, config_.health_timeout)) {
        // Its handler was cancelled at the deadline and has not ended within health_timeout since.
        declare_dead(w, errc::request_timeout, "its handler ignored the cancellation at its request's deadline");
      } else {
        ping(w);
      }
    }
  }
}

/// Pings a worker unless its last ping is unanswered: a function on the
/// worker's strand, beside its coroutine, that posts its pong back here.
COROPOOL_DECL void pool_core::ping(const std::shared_ptr<worker_record>& w) {
  if (w->shared.ping_pending.exchange(true, std::memory_order_acq_rel)) return;
  asio::post(w->strand, task([self = shared_from_this(), w] {
               w->shared.ping_pending.store(false, std::memory_order_release);
               pong p{w, w->own.last_progress};
               asio::post(self->strand_, task([self, p = std::move(p)] { self->on_pong(p); }));
             }));
}

COROPOOL_DECL void pool_core::on_pong(const pong& p) {
  if (p.worker->pool.retired) return;
  p.worker->pool.last_pong = clock::now();
  p.worker->pool.reported_progress = p.last_progress;
}

/// Stops workers parked for idle_timeout, oldest first, down to min_workers_per_key.
COROPOOL_DECL void pool_core::evict_idle(key_state& k, clock::time_point now) {
  const std::size_t live = k.gauges.live_workers.load(std::memory_order_relaxed);
  if (live <= config_.min_workers_per_key) return;
  auto released = k.queue.release_idle(live - config_.min_workers_per_key, now, config_.idle_timeout);
  for (auto& w : released) {
    log_->info("coropool: key '{}' worker {} idle for {} ms, evicting", k.name, w->id,
               std::chrono::duration_cast<std::chrono::milliseconds>(config_.idle_timeout).count());
    k.gauges.evictions.fetch_add(1, std::memory_order_relaxed);
  }
  stop_parked(std::move(released));
}

}  // namespace coropool::detail
