#pragma once

#include "coropool/detail/asio.hpp"
#include "coropool/detail/completion.hpp"
#include "coropool/error.hpp"

#include <exception>
#include <list>
#include <memory>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

namespace coropool::detail {

class waiter_list;
struct waiter_group;

/// A caller parked in wait_for_workers: its deadline timer and, in the
/// derived waiter_op, its completion handler. Touched only on the pool's
/// strand, except construction and the cancellation hook. The timer runs on
/// the pool's plain executor: a disarmed timer's handler only drops its
/// reference, without a trip through the strand.
class waiter {
 public:
  explicit waiter(const executor& ex) : timer(ex) {}
  waiter(const waiter&) = delete;
  waiter& operator=(const waiter&) = delete;
  virtual ~waiter() = default;

  /// Hands the result to the caller's executor (see defer_completion).
  /// `error` is the exception the awaitable form throws for `ec`, where the
  /// pool made one (a failed wave's spawn_error); null otherwise.
  virtual void complete(error_code ec, std::exception_ptr error) = 0;

  /// Calls the handler now; the caller runs on batch_executor already.
  virtual void invoke(error_code ec, std::exception_ptr error) = 0;

  /// The handler's associated executor, where it converts to any_io_executor
  /// (all of Asio's do): such waiters are woken in batches (see wake_batch).
  std::optional<executor> batch_executor;

  timer_type timer;
  bool done = false;
  // While on a key's waiter_list: the list, its group of waiters, the place in it.
  waiter_list* list = nullptr;
  std::list<waiter_group>::iterator group;
  std::list<std::shared_ptr<waiter>>::iterator position;
};

/// The exception a wait's awaitable form throws for a result: the wave's own
/// spawn_error, made once for all its waiters, or a system_error; none for success.
inline std::exception_ptr wait_exception(error_code ec, const std::exception_ptr& error) {
  if (!ec) return nullptr;
  if (error) return error;
  return std::make_exception_ptr(boost::system::system_error(ec));
}

/// A waiter whose handler takes `void(error_code)`, or, with AsException,
/// `void(std::exception_ptr)`: the awaitable form, which then needs no
/// coroutine frame of its own to turn the result into an exception.
template <class Handler, bool AsException>
class waiter_op final : public waiter {
 public:
  waiter_op(const executor& ex, Handler&& handler)
      : waiter(ex), work_(make_handler_work(handler, ex)), handler_(std::move(handler)) {
    if constexpr (std::is_convertible_v<asio::associated_executor_t<Handler, executor>, executor>) {
      batch_executor.emplace(work_.get_executor());
    }
  }

  Handler& handler() noexcept { return handler_; }

  void complete(error_code ec, std::exception_ptr error) override {
    if constexpr (AsException) {
      defer_completion(std::move(work_), std::move(handler_), wait_exception(ec, error));
    } else {
      defer_completion(std::move(work_), std::move(handler_), ec);
    }
  }

  void invoke(error_code ec, std::exception_ptr error) override {
    auto work = std::move(work_);
    auto handler = std::move(handler_);
    if constexpr (AsException) {
      std::move(handler)(wait_exception(ec, error));
    } else {
      std::move(handler)(ec);
    }
  }

 private:
  handler_work<Handler> work_;
  Handler handler_;
};

/// Disarms the timers of woken waiters, after the callers queued before it have run.
struct disarm_timers {
  std::vector<std::shared_ptr<waiter>> waiters;

  void operator()() const {
    for (const auto& w : waiters) w->timer.cancel();
  }
};

/// Waiters of one executor, woken together by one function submitted to it:
/// a wave's thousand callers cost a few scheduler operations, not a thousand.
/// Its waiters are finished (off their key's lists) before they join it, so it
/// owns their timers; it disarms them once every caller it holds has run.
struct wake_batch {
  /// Large enough to amortise a submission, small enough that idle threads of
  /// a multi-threaded executor share a big wave.
  static constexpr std::size_t capacity = 64;

  executor target;
  std::vector<std::shared_ptr<waiter>> waiters;
  error_code ec;
  std::exception_ptr error;

  /// Should a handler throw (it escapes the executor's run(), as with any
  /// Asio handler), the waiters after it are posted again first: none is dropped.
  void operator()() {
    for (std::size_t i = 0; i < waiters.size(); ++i) {
      try {
        waiters[i]->invoke(ec, error);
      } catch (...) {
        wake_batch rest{target, {}, ec, error};
        rest.waiters.assign(waiters.begin() + static_cast<std::ptrdiff_t>(i) + 1, waiters.end());
        waiters.resize(i + 1);
        if (!rest.waiters.empty()) asio::post(target, std::move(rest));
        asio::defer(target, disarm_timers{std::move(waiters)});
        throw;
      }
    }
    asio::defer(target, disarm_timers{std::move(waiters)});
  }
};

/// Submits a wave's batches. A lone batch is deferred: it runs next on this
/// thread, waking nobody. More are posted, so that idle threads take a share.
inline void submit_wake(std::vector<wake_batch>& batches) {
  const bool spread = batches.size() > 1;
  for (auto& batch : batches) {
    auto target = batch.target;
    if (spread) {
      asio::post(target, std::move(batch));
    } else {
      asio::defer(target, std::move(batch));
    }
  }
}

}  // namespace coropool::detail
