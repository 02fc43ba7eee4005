#pragma once

// pool_core's member templates: the entry points instantiated on a caller's
// handler or request type. In every mode they are compiled where they are
// used; the .ipp files beside this one hold the rest (see COROPOOL_DECL).

#include "coropool/detail/pool_core.hpp"

namespace coropool::detail {

/// Any thread.
template <class Op>
void pool_core::start_submit(boost::intrusive_ptr<Op> op, const std::string& key, bool wait_for_room,
                             const SubmitOptions& options, std::string identity,
                             request_ptr (*make_run)(request_base&)) {
  if (key.empty()) return refuse(*op, errc::invalid_argument);
  if (auto ec = apply_options(*op, options)) return refuse(*op, ec);
  if (stopping()) return refuse(*op, errc::shutting_down);
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
  auto admitted = make_run ? k.queue.enqueue_coalesced(r, wait_for_room, options, std::move(identity), make_run)
                           : k.queue.enqueue(r, wait_for_room, options);
  if (admitted.refused) return r->fail(admitted.refused, std::move(admitted.error));
  if (admitted.wake) return admitted.wake->complete(admitted.handed ? std::move(admitted.handed) : std::move(r));
  key_queue::nudge_collector(admitted.nudge);
  if (admitted.joined) return;     // attached to a run already there: nothing new waits
  if (admitted.collected) return;  // in a batch: no worker is missing
  // Queued: a cold key, or a busy one with room to grow, needs the strand's
  // attention (one post at a time per key; attend() lowers the flag).
  if ((k.gauges.ready_workers.load(std::memory_order_relaxed) == 0 ||
       k.gauges.live_workers.load(std::memory_order_relaxed) < config_.max_workers_per_key) &&
      !k.gauges.attention_pending.exchange(true, std::memory_order_acq_rel)) {
    asio::post(strand_, task([self = shared_from_this(), k = &k] { self->attend(*k); }));
  }
}

/// A worker's strand.
template <class Handler>
void pool_core::park(worker_record& w, Handler&& handler) {
  using op_type = completion_op<std::decay_t<Handler>, request_ptr>;
  auto [r, parked] =
      w.key->queue.take_or_park(w, [&] { return std::make_unique<op_type>(std::move(handler), executor_); });
  w.own.woken = parked;  // its wake runs on this strand, after this
  if (!parked) asio::defer(w.strand, asio::append(std::forward<Handler>(handler), std::move(r)));
}

/// Any thread.
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

/// Any thread.
template <class Handler>
void pool_core::start_shutdown_op(clock::duration deadline, Handler&& handler) {
  start_shutdown(deadline, std::make_unique<completion_op<std::decay_t<Handler>, error_code>>(
                               std::forward<Handler>(handler), executor_));
}

}  // namespace coropool::detail
