#pragma once

// pool_core: the entry points of the request path (whose work is the key's
// key_queue), the workers' side of it, and the callers of wait_for_workers.

#include "coropool/detail/pool_core.hpp"

namespace coropool::detail {

COROPOOL_DECL error_code pool_core::apply_options(request_base& r, const SubmitOptions& options) const {
  const std::size_t levels = config_.priority_weights.size();
  if (options.timeout && *options.timeout <= clock::duration::zero()) return errc::invalid_argument;
  if (options.priority && *options.priority >= levels) return errc::invalid_argument;
  r.priority = static_cast<std::uint8_t>(options.priority.value_or(static_cast<unsigned>(levels / 2)));
  return {};
}

COROPOOL_DECL void pool_core::refuse(request_base& r, error_code ec, std::exception_ptr error) {
  rejected_.fetch_add(1, std::memory_order_relaxed);  // never accepted: nothing else can hold it yet
  r.state = request_base::phase::done;
  r.fail(ec, std::move(error));
}

COROPOOL_DECL void pool_core::cancel_request(request_base& r) {
  if (!r.queue) return;  // refused before it reached a key: done already
  if (r.queue->cancel(r)) r.fail(asio::error::operation_aborted, nullptr);
}

COROPOOL_DECL bool pool_core::claim_answer(request_base& r, worker_record& w) {
  w.own.last_progress = clock::now();
  return w.key->queue.claim_answer(r, w, false);
}

COROPOOL_DECL request_ptr pool_core::claim_answer_and_take(request_base& r, worker_record& w, bool& answer,
                                                           std::vector<request_ptr>& callers, bool error,
                                                           bool failure) {
  // Outside the lock, which every submit of the key contends for: the clock
  // read, and the latency (`accepted` is fixed once the request is queued).
  const auto now = clock::now();
  w.own.last_progress = now;
  const double latency_us = std::chrono::duration<double, std::micro>(now - r.accepted).count();
  return w.key->queue.claim_answer_and_take(r, w, answer, callers, error, failure, now, latency_us);
}

COROPOOL_DECL bool pool_core::counts_as_failure(const std::exception_ptr& e) const {
  if (!e) return false;
  if (config_.breaker_counts) return config_.breaker_counts(e);
  return !is_operation_aborted(e);
}

/// Pool strand: the waiter is answered at once, or joins its key's list.
COROPOOL_DECL void pool_core::register_waiter(std::shared_ptr<waiter> w, const std::string& key,
                                              clock::duration timeout) {
  if (key.empty() || timeout <= clock::duration::zero()) return waiter_list::finish(*w, errc::invalid_argument);
  if (stopping()) return waiter_list::finish(*w, errc::shutting_down);
  key_state& k = key_for(key);
  if (k.queue.breaker_refuses(clock::now())) return waiter_list::finish(*w, errc::circuit_open);
  if (k.gauges.ready_workers.load(std::memory_order_relaxed) > 0) return waiter_list::finish(*w, {});
  k.waiters.add(w);
  // A deadline of never arms no timer: the handler's work guard keeps its context running.
  if (const auto deadline = deadline_after(clock::now(), timeout); !is_never(deadline)) {
    w->timer.expires_at(deadline);
    w->timer.async_wait(wait_task([self = shared_from_this(), w, k = &k](error_code ec) {
      if (ec) return;  // disarmed: the waiter was finished on the strand
      asio::dispatch(self->strand_, task([self, w, k] {
                       if (w->done) return;
                       self->log_->debug("coropool: wait for key '{}' timed out", k->name);
                       waiter_list::finish(*w, errc::spawn_timeout);
                     }));
    }));
  }
  ensure_spawning(k);
}

}  // namespace coropool::detail
