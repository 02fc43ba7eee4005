#pragma once

// Parked completion handlers: what the pool holds for a caller (or a parked
// worker) between an initiation and its completion, type-erased, with the
// work that keeps the handler's executor running meanwhile.

#include "coropool/detail/asio.hpp"

#include <functional>
#include <utility>

namespace coropool::detail {

/// A function the pool submits to a strand or an executor, and a timer's
/// handler: one type each for every call site, so that Asio's post, dispatch,
/// defer and async_wait are instantiated once for the pool's own work rather
/// than once per lambda (which was most of what including coropool cost a
/// build). None of them is on the request path's hot loop.
class task {
 public:
  template <class F>
  explicit task(F&& f) : fn_(std::forward<F>(f)) {}
  void operator()() { fn_(); }

 private:
  std::function<void()> fn_;
};

class wait_task {
 public:
  template <class F>
  explicit wait_task(F&& f) : fn_(std::forward<F>(f)) {}
  void operator()(error_code ec) { fn_(ec); }

 private:
  std::function<void(error_code)> fn_;
};

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
  template <class H>
  completion_op(H&& handler, const executor& fallback)
      : work_(make_handler_work(handler, fallback)), handler_(std::forward<H>(handler)) {}

  Handler& handler() noexcept { return handler_; }

  void complete(Args... args) override { defer_completion(std::move(work_), std::move(handler_), std::move(args)...); }

 private:
  handler_work<Handler> work_;
  Handler handler_;
};

}  // namespace coropool::detail
