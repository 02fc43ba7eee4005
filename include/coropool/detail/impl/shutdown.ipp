#pragma once

// pool_core: shutdown. Close every key (new requests are refused, queued
// ones drain to their workers); at the deadline, fail what is left and stop
// every worker; finish once the last worker coroutine has ended. And the
// execution context's destruction, which abandons what the pool holds.

#include "coropool/detail/pool_core.hpp"

namespace coropool::detail {

/// Any thread.
COROPOOL_DECL void pool_core::start_shutdown(clock::duration deadline, std::unique_ptr<completion<error_code>> op) {
  asio::dispatch(strand_, task([self = shared_from_this(), deadline, op = std::shared_ptr(std::move(op))] {
                   self->shutdown(deadline, op);
                 }));
}

/// Starts shutdown, or joins the one under way; of several calls, the
/// earliest deadline holds (a Pool destroyed during a long drain stops it now).
COROPOOL_DECL void pool_core::shutdown(clock::duration deadline, const std::shared_ptr<completion<error_code>>& op) {
  if (op) shutdown_ops_.push_back(op);
  if (!stopping()) {
    {
      std::lock_guard lock(keys_mutex_);  // see key_for
      stopping_.store(true, std::memory_order_release);
    }
    log_->info("coropool: shutting down ({} worker(s) running)", live_workers_);
    close_keys();
  }
  const auto at = deadline_after(clock::now(), deadline);
  if (at < shutdown_deadline_ && live_workers_ > 0) {
    shutdown_deadline_ = at;
    if (deadline <= clock::duration::zero()) {
      shutdown_timer_.cancel();  // a later deadline's wait
      abandon_work();
    } else {                           // at < shutdown_deadline_ <= max(): a deadline that comes
      shutdown_timer_.expires_at(at);  // cancels a later deadline's wait
      shutdown_timer_.async_wait(wait_task([self = shared_from_this()](error_code ec) {
        if (ec) return;
        self->log_->info("coropool: shutdown deadline reached, stopping {} worker(s)", self->live_workers_);
        self->abandon_work();
      }));
    }
  }
  if (live_workers_ == 0) finish_shutdown();
}

/// Shutdown, step one: close every key and complete its waiting commands.
/// Queued requests still drain to their workers, which leave once their key's
/// queue is empty.
COROPOOL_DECL void pool_core::close_keys() {
  for (key_state* k : all_keys()) {
    k->waiters.finish_all(errc::shutting_down);
    finish_closing(k->queue.close());
    if (k->spawn.loading == 0 && k->gauges.ready_workers.load(std::memory_order_relaxed) == 0) {
      k->queue.fail_all(errc::shutting_down);  // nobody will serve them
    }
    // Commands waiting for work that will not come now (a load, a spawn
    // waiting for memory, a restart) complete here: a key whose workers are
    // all gone may never see advance_commands again.
    advance_commands(*k);
  }
}

/// Shutdown, at the deadline: what is left fails with shutting_down and
/// every worker, loading or serving, is stopped.
COROPOOL_DECL void pool_core::abandon_work() {
  for (key_state* k : all_keys()) {
    k->queue.fail_all(errc::shutting_down);
    for (auto& w : std::vector(k->spawn.workers)) request_stop(w, errc::shutting_down);  // it retires: copy the list
  }
  for (auto& w : std::vector(retired_)) request_stop(w, errc::shutting_down);
}

COROPOOL_DECL void pool_core::finish_shutdown() {
  shutdown_timer_.cancel();
  tick_.cancel();
  for (key_state* k : all_keys()) k->queue.disarm();  // nothing is outstanding: the timers release the core
  auto ops = std::exchange(shutdown_ops_, {});
  if (!ops.empty()) log_->info("coropool: shut down");
  for (auto& op : ops) op->complete(error_code{});
}

/// The execution context is being destroyed: drop every parked worker and
/// every request's handler without calling them, as Asio drops its own
/// pending operations, so that the coroutines they own are destroyed.
COROPOOL_DECL void pool_core::abandon() noexcept {
  registry_.store(nullptr, std::memory_order_release);
  for (key_state* k : all_keys()) k->queue.abandon();
}

}  // namespace coropool::detail
