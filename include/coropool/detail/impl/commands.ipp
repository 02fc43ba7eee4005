#pragma once

// pool_core: users' commands (scale, evict, restart), on the pool strand.
// Each completes exactly once: when its work is done (advance_commands), or
// with shutting_down once shutdown has begun.

#include "coropool/detail/pool_core.hpp"

namespace coropool::detail {

/// Any thread.
COROPOOL_DECL void pool_core::send_command(command c) {
  asio::dispatch(strand_,
                 task([self = shared_from_this(), c = std::move(c)]() mutable { self->on_command(std::move(c)); }));
}

/// Pool strand.
COROPOOL_DECL void pool_core::on_command(command c) {
  if (stopping()) return c.done->complete(errc::shutting_down);
  if (c.key.empty()) return c.done->complete(errc::invalid_argument);
  key_state& k = key_for(c.key);
  auto& ops = k.commands;
  switch (c.what) {
    case command::kind::scale:
      if (c.workers > config_.max_workers_per_key) return c.done->complete(errc::invalid_argument);
      ops.scale_ops.push_back({c.workers, c.done});
      scale(k, c.workers);
      break;
    case command::kind::evict:
      ops.evict_ops.push_back(c.done);
      evict(k);
      break;
    case command::kind::restart:
      ops.restart_ops.push_back(c.done);
      for (auto& w : k.spawn.workers) {
        if (!w->pool.replaces) ops.restart_left.push_back(w);
      }
      break;
  }
  advance_commands(k);
}

COROPOOL_DECL void pool_core::scale(key_state& k, std::size_t target) {
  k.spawn.warm = true;
  std::size_t live = k.gauges.live_workers.load(std::memory_order_relaxed);
  if (live < target) {
    log_->info("coropool: key '{}' scaling up from {} to {} worker(s)", k.name, live, target);
    k.spawn.last_failure = nullptr;
    while (live < target && spawn_worker(k)) ++live;
    return;
  }
  if (live <= target) return;
  log_->info("coropool: key '{}' scaling down from {} to {} worker(s)", k.name, live, target);
  // Idle workers first (oldest first), then busy ones after their request; loading ones are left alone.
  auto idle = k.queue.release_idle(live - target);
  std::size_t left = live - target - idle.size();
  std::vector<std::shared_ptr<worker_record>> busy;
  for (auto& w : k.spawn.workers) {
    if (left == 0) break;
    if (w->pool.ready && std::find(idle.begin(), idle.end(), w) == idle.end()) {
      busy.push_back(w);
      --left;
    }
  }
  stop_parked(std::move(idle));
  for (auto& w : busy) stop_gracefully(w);
}

COROPOOL_DECL void pool_core::evict(key_state& k) {
  log_->info("coropool: evicting key '{}' ({} worker(s)) once its queue drains", k.name,
             k.gauges.live_workers.load(std::memory_order_relaxed));
  k.spawn.warm = false;
  finish_closing(k.queue.start_draining());  // the queue is empty whenever a worker is parked
  k.gauges.evictions.fetch_add(1, std::memory_order_relaxed);
}

/// Completes the commands whose work is done and moves restarts on.
COROPOOL_DECL void pool_core::advance_commands(key_state& k) {
  auto& ops = k.commands;
  if (stopping()) {  // what commands were waiting for will not come: no load, no restart after shutdown began
    for (auto& op : std::exchange(ops.scale_ops, {})) op.done->complete(errc::shutting_down);
    for (auto& done : std::exchange(ops.evict_ops, {})) done->complete(errc::shutting_down);
    for (auto& done : std::exchange(ops.restart_ops, {})) done->complete(errc::shutting_down);
    ops.restart_left.clear();
    return;
  }
  const std::size_t live = k.gauges.live_workers.load(std::memory_order_relaxed);
  const std::size_t ready = k.gauges.ready_workers.load(std::memory_order_relaxed);
  if (!spawning(k)) {
    std::erase_if(ops.scale_ops, [&](const key_state::command_fields::scale_op& op) {
      if (live > op.target) return false;
      // Short of the target for a reason of its own, or not at all: workers
      // that loaded and were then evicted as idle are no failure of the scale.
      error_code ec;
      if (ready < op.target && k.spawn.memory_short) {
        ec = errc::memory_exhausted;
      } else if (ready < op.target && k.spawn.last_failure) {
        ec = errc::spawn_failed;
      }
      op.done->complete(ec);
      return true;
    });
  }
  if (!ops.evict_ops.empty() && live == 0) {
    k.queue.stop_draining();
    for (auto& done : std::exchange(ops.evict_ops, {})) done->complete(error_code{});
    attend(k);  // requests that came meanwhile get a new wave
  }
  if (!ops.restart_ops.empty() && !spawning(k)) {
    std::shared_ptr<worker_record> old;
    while (!old && !ops.restart_left.empty()) {
      old = ops.restart_left.back().lock();
      ops.restart_left.pop_back();
      if (old && old->pool.retired) old = nullptr;
    }
    if (!old) {
      for (auto& done : std::exchange(ops.restart_ops, {})) done->complete(error_code{});
      return;
    }
    // One replacement at a time, loaded before the worker it replaces leaves: the key serves throughout.
    log_->info("coropool: key '{}' restarting worker {}", k.name, old->id);
    if (!start_worker_if_room(k)) {  // a replacement needs room of its own while the old worker serves
      for (auto& done : std::exchange(ops.restart_ops, {})) done->complete(errc::memory_exhausted);
      ops.restart_left.clear();
      return;
    }
    k.gauges.restarts.fetch_add(1, std::memory_order_relaxed);
    k.spawn.workers.back()->pool.replaces = std::move(old);
  }
}

/// A restart's replacement failed to load: the workers left keep serving.
COROPOOL_DECL void pool_core::abort_restart(key_state& k) {
  k.commands.restart_left.clear();
  for (auto& done : std::exchange(k.commands.restart_ops, {})) done->complete(errc::spawn_failed);
}

}  // namespace coropool::detail
