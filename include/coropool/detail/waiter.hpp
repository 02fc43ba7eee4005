#pragma once

#include "coropool/detail/asio.hpp"

#include <exception>
#include <list>
#include <memory>
#include <utility>

namespace coropool::detail {

struct key_state;

template <class Handler>
using handler_work = asio::executor_work_guard<asio::associated_executor_t<Handler, executor>>;

template <class Handler>
handler_work<Handler> make_handler_work(const Handler& handler, const executor& fallback) {
  return asio::make_work_guard(asio::get_associated_executor(handler, fallback));
}

/// Hands `handler(args...)` to the handler's associated executor. Never runs
/// the handler inline: it is deferred, so the pool's strand finishes its own
/// work first and, on an io_context thread, no other thread is woken for it.
template <class Handler, class... Args>
void defer_completion(handler_work<Handler> work, Handler&& handler, Args&&... args) {
  asio::defer(work.get_executor(), asio::append(std::move(handler), std::forward<Args>(args)...));
}

/// A parked completion handler of signature `void(Args...)`, type-erased.
template <class... Args>
class completion {
 public:
  completion() = default;
  completion(const completion&) = delete;
  completion& operator=(const completion&) = delete;
  virtual ~completion() = default;
  virtual void complete(Args... args) = 0;
};

template <class Handler, class... Args>
class completion_op final : public completion<Args...> {
 public:
  completion_op(Handler&& handler, const executor& fallback)
      : work_(make_handler_work(handler, fallback)), handler_(std::move(handler)) {}

  void complete(Args... args) override { defer_completion(std::move(work_), std::move(handler_), std::move(args)...); }

 private:
  handler_work<Handler> work_;
  Handler handler_;
};

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
  virtual void complete(error_code ec, std::exception_ptr cause) = 0;

  timer_type timer;
  bool done = false;
  key_state* key = nullptr;
  std::list<std::shared_ptr<waiter>>::iterator position;
};

template <class Handler, bool WithCause>
class waiter_op final : public waiter {
 public:
  waiter_op(const executor& ex, Handler&& handler)
      : waiter(ex), work_(make_handler_work(handler, ex)), handler_(std::move(handler)) {}

  Handler& handler() noexcept { return handler_; }

  void complete(error_code ec, std::exception_ptr cause) override {
    if constexpr (WithCause) {
      defer_completion(std::move(work_), std::move(handler_), ec, std::move(cause));
    } else {
      defer_completion(std::move(work_), std::move(handler_), ec);
    }
  }

 private:
  handler_work<Handler> work_;
  Handler handler_;
};

}  // namespace coropool::detail
