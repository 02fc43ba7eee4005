#pragma once

// pool_core: the entry points of the request path (whose work is the key's
// key_queue), the workers' side of it, and the callers of wait_for_workers.

#include "coropool/detail/pool_core.hpp"

namespace coropool::detail {

template <class Op>
void pool_core::start_submit(boost::intrusive_ptr<Op> op, const std::string& key, bool wait_for_room) {
  auto refuse = [&](error_code ec) {  // never accepted: nothing else can hold it yet
    rejected_.fetch_add(1, std::memory_order_relaxed);
    op->state = request_base::phase::done;
    op->fail(ec, nullptr);
  };
  if (key.empty()) return refuse(errc::invalid_argument);
  if (stopping()) return refuse(errc::shutting_down);
  key_state& k = key_for(key);
  op->queue = &k.queue;
  if constexpr (requires { op->handler(); }) {
    // Assigned before the request is published: once it is, a worker may complete it on another thread.
    auto slot = asio::get_associated_cancellation_slot(op->handler());
    if (slot.is_connected()) {
      slot.assign([weak_core = weak_from_this(), r = request_ptr(op)](asio::cancellation_type) {
        if (auto core = weak_core.lock()) core->cancel_request(*r);
      });
    }
  }
  request_ptr r(std::move(op));
  auto admitted = k.queue.enqueue(r, wait_for_room);
  if (admitted.refused) return r->fail(admitted.refused, nullptr);
  if (admitted.wake) return admitted.wake->complete(std::move(r));
  // Queued: a cold key, or a busy one with room to grow, needs the strand's
  // attention (one post at a time per key; attend() lowers the flag).
  if ((k.gauges.ready_workers.load(std::memory_order_relaxed) == 0 ||
       k.gauges.live_workers.load(std::memory_order_relaxed) < config_.max_workers_per_key) &&
      !k.gauges.attention_pending.exchange(true, std::memory_order_acq_rel)) {
    asio::post(strand_, task([self = shared_from_this(), k = &k] { self->attend(*k); }));
  }
}

inline void pool_core::cancel_request(request_base& r) {
  if (!r.queue) return;  // refused before it reached a key: done already
  if (r.queue->cancel(r)) r.fail(asio::error::operation_aborted, nullptr);
}

template <class Handler>
void pool_core::park(const std::shared_ptr<worker_record>& w, Handler&& handler) {
  using op_type = completion_op<std::decay_t<Handler>, request_ptr>;
  auto [r, parked] =
      w->key->queue.take_or_park(w, [&] { return std::make_unique<op_type>(std::move(handler), executor_); });
  if (!parked) asio::defer(w->strand, asio::append(std::forward<Handler>(handler), std::move(r)));
}

inline bool pool_core::claim_answer(request_base& r, worker_record& w) {
  w.own.last_progress = clock::now();
  return w.key->queue.claim_answer(r, w, false);
}

inline request_ptr pool_core::claim_answer_and_take(request_base& r, worker_record& w, bool& answer, bool error,
                                                    bool failure) {
  // Outside the lock, which every submit of the key contends for: the clock
  // read, and the latency (`accepted` is fixed once the request is queued).
  const auto now = clock::now();
  w.own.last_progress = now;
  const double latency_us = std::chrono::duration<double, std::micro>(now - r.accepted).count();
  return w.key->queue.claim_answer_and_take(r, w, answer, error, failure, now, latency_us);
}

inline bool pool_core::counts_as_failure(const std::exception_ptr& e) const {
  if (!e) return false;
  if (config_.breaker_counts) return config_.breaker_counts(e);
  return !is_operation_aborted(e);
}

template <bool AsException, class Handler>
void pool_core::start_wait(Handler&& handler, std::string key, clock::duration timeout) {
  using op_type = waiter_op<std::decay_t<Handler>, AsException>;
  auto op = std::make_shared<op_type>(executor_, std::forward<Handler>(handler));
  auto slot = asio::get_associated_cancellation_slot(op->handler());
  if (slot.is_connected()) {
    // A cancellation may be emitted from any thread: it only posts to the strand.
    slot.assign([weak_op = std::weak_ptr<waiter>(op), weak_core = weak_from_this()](asio::cancellation_type) {
      auto core = weak_core.lock();
      if (auto w = weak_op.lock(); core && w) {
        asio::post(core->strand_, task([core, w] { waiter_list::finish(*w, asio::error::operation_aborted); }));
      }
    });
  }
  asio::dispatch(strand_, task([self = shared_from_this(), op = std::move(op), key = std::move(key),
                                timeout]() mutable { self->register_waiter(std::move(op), key, timeout); }));
}

/// Pool strand: the waiter is answered at once, or joins its key's list.
inline void pool_core::register_waiter(std::shared_ptr<waiter> w, const std::string& key, clock::duration timeout) {
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
