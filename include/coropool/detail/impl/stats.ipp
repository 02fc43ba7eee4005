#pragma once

// pool_core: what any thread may read of the pool. Nothing here changes it.

#include "coropool/detail/pool_core.hpp"

namespace coropool::detail {

COROPOOL_DECL std::size_t pool_core::queued_requests(const std::string& key) const {
  key_state* k = find_key(key);
  return k ? k->queue.queued() : 0;
}

COROPOOL_DECL std::size_t pool_core::live_workers(const std::string& key) const {
  key_state* k = find_key(key);
  return k ? k->gauges.live_workers.load(std::memory_order_acquire) : 0;
}

COROPOOL_DECL std::size_t pool_core::ready_workers(const std::string& key) const {
  key_state* k = find_key(key);
  return k ? k->gauges.ready_workers.load(std::memory_order_acquire) : 0;
}

COROPOOL_DECL PoolStats pool_core::stats() const {
  PoolStats s;
  s.rejected = rejected_.load(std::memory_order_relaxed);
  s.memory_budget = memory_.governor().budget();
  s.memory_reserved = memory_.governor().reserved();
  std::lock_guard keys_lock(keys_mutex_);
  const auto now = clock::now();
  for (const auto& [name, k] : keys_) {
    KeyStats& ks = s.keys[name];
    const auto& g = k->gauges;
    ks.waiters = k->waiters.size();
    ks.loads = g.loads.load(std::memory_order_relaxed);
    ks.load_failures = g.load_failures.load(std::memory_order_relaxed);
    ks.deaths = g.deaths.load(std::memory_order_relaxed);
    ks.evictions = g.evictions.load(std::memory_order_relaxed);
    ks.restarts = g.restarts.load(std::memory_order_relaxed);
    ks.memory_reserved = g.memory_reserved.load(std::memory_order_relaxed);
    {
      // The roster's lock across the latencies: a worker leaving adds its
      // own to the key's under it (on_exit), so that each is counted once.
      std::lock_guard lock(k->roster_mutex);
      ks.latency = k->recorded_latency;
      ks.queue_time = k->recorded_queue_time;
      for (const auto& w : k->roster) {
        ++ks.workers[static_cast<std::size_t>(w->shared.state.load())];
        w->recorded.latency.add_to(ks.latency);
        w->recorded.queue_time.add_to(ks.queue_time);
      }
      k->queue.read_stats(ks, now);  // adds what batching workers and coalesced runs recorded
    }
    ks.in_flight = ks.workers_in(worker_state::processing);
  }
  return s;
}

}  // namespace coropool::detail
