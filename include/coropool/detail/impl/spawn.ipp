#pragma once

// pool_core, pool strand: spawn waves, scale-up on demand, warm keys, and
// the memory budget each spawn must fit.

#include "coropool/detail/pool_core.hpp"

namespace coropool::detail {

/// Spawns what a key's requests need: a wave when it is cold, one more
/// worker when requests queue and every worker is busy. While a load is in
/// flight nothing more is spawned, and the key's attention stays raised so
/// that submits stop posting here: the load's end (on_loaded, on_exit) calls
/// attend() again.
COROPOOL_DECL void pool_core::attend(key_state& k) {
  if (stopping() || spawning(k)) return;
  k.gauges.attention_pending.store(false, std::memory_order_release);
  const auto view = k.queue.backlog();
  if (view.draining) return;  // evict(): the key's workers are leaving; advance_commands() attends after
  if (!view.backlog) return;
  if (k.gauges.ready_workers.load(std::memory_order_relaxed) == 0) return ensure_spawning(k);
  if (!view.idle && k.spawn.workers.size() < config_.max_workers_per_key && !k.spawn.scale_up_failed) {
    log_->info("coropool: key '{}' is busy, adding worker {} of at most {}", k.name, k.spawn.workers.size() + 1,
               config_.max_workers_per_key);
    spawn_worker(k);
  }
}

/// Starts one spawn wave unless the key has workers or one is under way:
/// however many callers ask, a cold key is loaded once.
COROPOOL_DECL void pool_core::ensure_spawning(key_state& k) {
  if (spawning(k) || k.gauges.ready_workers.load(std::memory_order_relaxed) > 0) return;
  const std::size_t n = config_.cold_start_workers;
  log_->info("coropool: key '{}' is cold, spawning {} worker(s)", k.name, n);
  k.spawn.last_failure = nullptr;
  std::size_t started = 0;
  while (started < n && spawn_worker(k)) ++started;  // as many as the memory budget allows
  if (started == 0) fail_for_memory(k);
}

/// No worker of `k` could be spawned within the memory budget: its
/// waiters, and its requests if nobody serves them, fail with memory_exhausted.
COROPOOL_DECL void pool_core::fail_for_memory(key_state& k) {
  log_->warn("coropool: key '{}' has no room in the memory budget ({} of {} bytes reserved)", k.name,
             memory_.governor().reserved(), memory_.governor().budget());
  k.waiters.finish_all(errc::memory_exhausted);
  if (k.spawn.workers.empty()) k.queue.fail_all(errc::memory_exhausted);
  disarm_request_timer_if_unused(k);
}

COROPOOL_DECL std::uint64_t pool_core::footprint(key_state& k) {
  if (!k.spawn.footprint) k.spawn.footprint = config_.worker_footprint ? config_.worker_footprint(k.name) : 0;
  return *k.spawn.footprint;
}

/// Adds a worker to `k` if its footprint fits the memory budget, or can be
/// made to fit by evicting idle workers of other keys, least recently used
/// first: the spawn then waits until they have ended. False when neither.
COROPOOL_DECL bool pool_core::spawn_worker(key_state& k) {
  if (start_worker_if_room(k)) {
    k.spawn.memory_short = false;
    return true;
  }
  const std::uint64_t bytes = footprint(k);
  if (!make_room(k, bytes)) {
    k.spawn.memory_short = true;
    return false;
  }
  ++k.spawn.memory_pending;
  memory_.promise(k, bytes);
  return true;
}

/// Evicts idle workers of keys other than `k` until, once they have ended,
/// `bytes` more fit. False, evicting nobody, when all of them would not do.
COROPOOL_DECL bool pool_core::make_room(key_state& k, std::uint64_t bytes) {
  const std::uint64_t need = memory_.shortfall(bytes);
  if (need == 0) return true;  // workers already leaving free enough
  std::vector<decltype(memory_)::candidate> candidates;
  for (key_state* other : all_keys()) {
    if (other == &k) continue;
    other->queue.for_each_idle([&](const std::shared_ptr<worker_record>& w, clock::time_point idle_since) {
      if (const auto held = w->pool.reservation.bytes(); held > 0) candidates.push_back({w, idle_since, held});
    });
  }
  auto victims = memory_.choose_victims(std::move(candidates), need);
  if (victims.empty()) return false;
  for (auto& w : victims) {
    log_->info("coropool: evicting idle worker {} of key '{}' to make room for key '{}'", w->id, w->key->name, k.name);
    w->pool.memory_victim = true;
    w->key->gauges.evictions.fetch_add(1, std::memory_order_relaxed);
    stop_gracefully(w);
  }
  return true;
}

/// Starts the spawns that waited for memory, in order, while they fit
/// (at shutdown, drops them).
COROPOOL_DECL void pool_core::start_waiting_spawns() {
  memory_.start_waiting([this](key_state& k) {
    if (!stopping() && !start_worker_if_room(k)) return false;
    --k.spawn.memory_pending;
    return true;
  });
}

/// Reserves `k`'s footprint and starts a worker with it, if it fits now.
COROPOOL_DECL bool pool_core::start_worker_if_room(key_state& k) {
  memory_reservation reservation;
  if (!memory_.try_reserve(footprint(k), reservation)) return false;
  start_worker(k, std::move(reservation));
  return true;
}

COROPOOL_DECL void pool_core::start_worker(key_state& k, memory_reservation reservation) {
  auto w = std::make_shared<worker_record>(++next_worker_id_, &k, executor_);
  k.gauges.memory_reserved.fetch_add(reservation.bytes(), std::memory_order_relaxed);
  w->pool.reservation = std::move(reservation);
  k.spawn.workers.push_back(w);
  k.gauges.loads.fetch_add(1, std::memory_order_relaxed);
  {
    std::lock_guard lock(k.roster_mutex);
    k.roster.push_back(w);
  }
  k.spawn.warm = true;
  ++k.spawn.loading;
  ++live_workers_;
  k.gauges.live_workers.fetch_add(1, std::memory_order_release);
  asio::co_spawn(w->strand, body_(shared_from_this(), w),
                 asio::bind_cancellation_slot(
                     w->own.stop_signal.slot(),
                     asio::bind_executor(w->strand, [self = shared_from_this(), w](std::exception_ptr e) {
                       w->own.finished = true;
                       asio::defer(self->strand_, task([self, w, e = std::move(e)] { self->on_exit(w, e); }));
                     })));
  start_maintenance();
}

/// Keeps a warm key at min_workers_per_key.
COROPOOL_DECL void pool_core::refill(key_state& k) {
  if (stopping() || !k.spawn.warm || spawning(k)) return;
  if (k.queue.breaker_refuses(clock::now())) return;  // an open breaker loads nothing
  std::size_t live = k.gauges.live_workers.load(std::memory_order_relaxed);
  if (live >= config_.min_workers_per_key) return;
  log_->info("coropool: key '{}' has {} worker(s), refilling to {}", k.name, live, config_.min_workers_per_key);
  while (live < config_.min_workers_per_key && spawn_worker(k)) ++live;
}

/// A key with no workers and no outstanding request needs no deadline
/// timer: disarming it leaves an idle pool with no pending operation.
COROPOOL_DECL void pool_core::disarm_request_timer_if_unused(key_state& k) {
  if (!k.spawn.workers.empty() || k.spawn.loading > 0) return;
  k.queue.disarm_if_idle();
}

}  // namespace coropool::detail
