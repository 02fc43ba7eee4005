#pragma once

/// @file
/// `coropool::offload`: run blocking code on another executor and come back.

#include "coropool/detail/asio.hpp"

#include <exception>
#include <functional>
#include <optional>
#include <type_traits>
#include <utility>

namespace coropool {

namespace detail {

/// Posts the callable to `ex` and, once it has run, the handler back to its
/// own executor. Only pointers into the suspended coroutine's frame, which
/// stays alive until the handler runs: GCC 12 may destroy a co_await
/// expression's temporary twice, harmless only when it is trivial.
template <class Executor, class Body, class Result>
struct offload_initiation {
  Executor* ex;
  Body* body;
  std::exception_ptr* error;
  Result* result;

  template <class Handler>
  void operator()(Handler&& handler) const {
    auto work = asio::make_work_guard(asio::get_associated_executor(handler));
    asio::post(*ex, [h = std::forward<Handler>(handler), work = std::move(work), body = body, error = error,
                     result = result]() mutable {
      try {
        if constexpr (std::is_same_v<Result, bool>) {
          (void)result;  // a void fn has no result to store
          (*body)();
        } else {
          result->emplace((*body)());
        }
      } catch (...) {
        *error = std::current_exception();
      }
      auto home = work.get_executor();
      asio::dispatch(home, std::move(h));
    });
  }
};

}  // namespace detail

/// Runs the blocking callable `fn` on `ex` (a compute executor, such as
/// `Pool::compute_executor()`) and resumes the calling coroutine on its own
/// executor with `fn`'s result, or rethrows what `fn` threw.
///
/// This is how `load` and `handle` keep blocking model code (file reads, CPU
/// inference) off the io threads:
/// @code
/// co_return co_await coropool::offload(compute, [&] { return model.infer(request); });
/// @endcode
///
/// Capture by reference: the caller's frame outlives `fn`. With GCC 12, a
/// lambda that captures by value must not be a temporary inside the
/// `co_await` expression (GCC 12 destroys such a temporary twice): name it first.
///
/// While `fn` runs the caller's executor is kept busy (its `io_context::run`
/// does not return). `fn` runs to its end once started: cancelling the
/// caller does not interrupt it.
///
/// @param ex The executor `fn` runs on (any Asio executor).
/// @param fn  The callable, invoked once with no arguments; it is moved (or
///            copied) into offload's own coroutine frame, which lives until it has run.
/// @return An awaitable of `fn`'s result (`void` when `fn` returns nothing),
/// delivered on the caller's executor.
/// @throws whatever `fn` threw, rethrown in the caller's coroutine.
///
/// @par Thread Safety
/// `fn` runs on a thread of `ex`, concurrently with the caller's executor:
/// what it touches must be safe to touch from there.
template <class Executor, class Fn>
requires std::is_invocable_v < std::decay_t<Fn>
& > auto offload(Executor ex, Fn&& fn) -> asio::awaitable<std::invoke_result_t<std::decay_t<Fn>&>> {
  using result_type = std::invoke_result_t<std::decay_t<Fn>&>;
  std::decay_t<Fn> body(std::forward<Fn>(fn));
  std::exception_ptr error;
  std::conditional_t<std::is_void_v<result_type>, bool, std::optional<result_type>> result{};

  co_await asio::async_initiate<const asio::use_awaitable_t<>&, void()>(
      detail::offload_initiation<Executor, decltype(body), decltype(result)>{&ex, &body, &error, &result},
      asio::use_awaitable);
  if (error) std::rethrow_exception(error);
  if constexpr (!std::is_void_v<result_type>) co_return std::move(*result);
}

}  // namespace coropool
