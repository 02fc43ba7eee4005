#pragma once

/// @file
/// `coropool::Pool`: keyed pools of coroutine workers on any Asio executor.

#include "coropool/config.hpp"
#include "coropool/detail/asio.hpp"
#include "coropool/detail/pool_core.hpp"
#include "coropool/error.hpp"

#include <chrono>
#include <concepts>
#include <cstddef>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

namespace coropool {

namespace detail {

template <class T>
struct awaitable_value {};

template <class T, class Executor>
struct awaitable_value<asio::awaitable<T, Executor>> {
  using type = T;
};

}  // namespace detail

/// Keyed pools of coroutine workers.
///
/// Each key (a model name, say) gets its own workers; a worker is a coroutine
/// that loads its model once, with the user's `load`, and then serves that
/// key. Keys are spawned lazily: the first caller that needs a cold key starts
/// one spawn wave of `PoolConfig::cold_start_workers` loads, and every other
/// caller joins that wave.
///
/// @tparam Request  What callers submit to a worker.
/// @tparam Response What a worker answers.
///
/// @par Thread Safety
/// @e Distinct @e objects: Safe.@n
/// @e Shared @e objects: Safe. Every member function may be called from any
/// thread; the pool's state is changed only on its own strand.
///
/// @par Lifetime
/// Destroying a Pool starts its shutdown and returns at once; the pool's
/// coroutines keep what they use alive until they finish. Like any Asio I/O
/// object, a Pool must be destroyed before its execution context.
///
/// @code
/// coropool::Pool<std::string, std::string> pool{ioc.get_executor(), {},
///     [](const std::string& key) -> asio::awaitable<Model> { co_return Model{key}; },
///     [](Model& m, std::string req) -> asio::awaitable<std::string> { co_return m.run(req); }};
/// co_await pool.wait_for_workers("bert", std::chrono::seconds(5));
/// @endcode
template <class Request, class Response>
class Pool {
 public:
  /// The executor the pool's workers and timers run on.
  using executor_type = asio::any_io_executor;

  /// The clock of every timeout.
  using clock = std::chrono::steady_clock;

  /// Constructs a pool on an executor.
  ///
  /// @param ex     The executor workers run on; any Asio executor (an
  ///               `io_context`'s, a `thread_pool`'s, a strand).
  /// @param config The pool's configuration.
  /// @param load   `(const std::string& key) -> asio::awaitable<Model>`: loads one
  ///               worker's model. May throw; its exception fails that load.
  /// @param handle `(Model&, Request) -> asio::awaitable<Response>`: serves a request.
  ///
  /// @throws boost::system::system_error with `errc::invalid_argument` when
  /// `config` is out of range (no cold-start workers, a non-positive timeout).
  template <class Executor, class Load, class Handle>
  requires asio::execution::executor<Executor> || asio::is_executor<Executor>::value Pool(const Executor& ex,
                                                                                          PoolConfig config, Load load,
                                                                                          Handle handle)
      : core_(std::make_shared<detail::pool_core>(executor_type(ex), std::move(config),
                                                  make_worker_body(std::move(load), std::move(handle)))) {}

  /// Constructs a pool on an execution context's executor (an `io_context`, a `thread_pool`).
  template <class ExecutionContext, class Load, class Handle>
  requires std::is_convertible_v<ExecutionContext&, asio::execution_context&> Pool(ExecutionContext& context,
                                                                                   PoolConfig config, Load load,
                                                                                   Handle handle)
      : Pool(context.get_executor(), std::move(config), std::move(load), std::move(handle)) {}

  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;
  Pool(Pool&&) noexcept = default;
  Pool& operator=(Pool&&) = delete;

  /// Starts shutdown (see async_shutdown) without waiting for it.
  ~Pool() {
    if (core_) core_->start_shutdown(clock::duration::zero(), {});
  }

  /// The executor the pool was constructed with.
  executor_type get_executor() const noexcept { return core_->get_executor(); }

  /// The pool's configuration.
  const PoolConfig& config() const noexcept { return core_->config(); }

  /// Whether `key` has at least one worker ready to serve.
  ///
  /// @par Thread Safety
  /// Any thread; the answer is a snapshot.
  bool has_workers(const std::string& key) const { return core_->ready_workers(key) > 0; }

  /// How many workers of `key` are ready to serve (loaded and not stopping).
  std::size_t worker_count(const std::string& key) const { return core_->ready_workers(key); }

  /// Waits until `key` has a worker ready, spawning the key if it is cold.
  ///
  /// Never polls and never blocks a thread: the caller is parked with a
  /// `steady_timer` for its deadline and woken the moment the key's spawn wave
  /// produces a worker, or fails.
  ///
  /// @param key     The key; must not be empty.
  /// @param timeout How long to wait; must be positive.
  /// @param token   The completion token.
  ///
  /// @par Completion Signature
  /// @code void(boost::system::error_code) @endcode
  /// - success: a worker of `key` is ready;
  /// - `errc::spawn_timeout`: none was ready within `timeout` (the wave goes on);
  /// - `errc::spawn_failed`: every load of the wave failed, and the failure
  ///   is logged; wait_for_workers() throws it as a spawn_error whose
  ///   `cause()` is the loader's own exception;
  /// - `errc::shutting_down`, `errc::invalid_argument`;
  /// - `asio::error::operation_aborted`: the wait was cancelled through its
  ///   cancellation slot (any type); the wave goes on for other callers.
  ///
  /// The handler runs on its associated executor (defaulting to the pool's), never inline.
  template <class CompletionToken = asio::default_completion_token_t<executor_type>>
  auto async_wait_for_workers(std::string key, clock::duration timeout,
                              CompletionToken&& token = asio::default_completion_token_t<executor_type>()) {
    return asio::async_initiate<CompletionToken, void(error_code)>(
        [core = core_.get()](auto handler, std::string k, clock::duration t) {
          core->template start_wait<false>(std::move(handler), std::move(k), t);
        },
        token, std::move(key), timeout);
  }

  /// async_wait_for_workers() with `PoolConfig::spawn_timeout` as the timeout.
  template <class CompletionToken = asio::default_completion_token_t<executor_type>>
  auto async_wait_for_workers(std::string key,
                              CompletionToken&& token = asio::default_completion_token_t<executor_type>()) {
    return async_wait_for_workers(std::move(key), config().spawn_timeout, std::forward<CompletionToken>(token));
  }

  /// Waits until `key` has a worker ready, as async_wait_for_workers().
  ///
  /// @throws spawn_error when the spawn wave failed: its `cause()` is the
  /// loader's exception, its `what()` names the key and the loader's message.
  /// @throws boost::system::system_error with the error of any other failure.
  asio::awaitable<void> wait_for_workers(std::string key, clock::duration timeout) {
    // Completing with an exception_ptr lets use_awaitable throw it: no frame of our own.
    return asio::async_initiate<const asio::use_awaitable_t<>&, void(std::exception_ptr)>(
        [core = core_.get()](auto handler, std::string k, clock::duration t) {
          core->template start_wait<true>(std::move(handler), std::move(k), t);
        },
        asio::use_awaitable, std::move(key), timeout);
  }

  /// wait_for_workers() with `PoolConfig::spawn_timeout` as the timeout.
  asio::awaitable<void> wait_for_workers(std::string key) {
    return wait_for_workers(std::move(key), config().spawn_timeout);
  }

  /// Shuts the pool down.
  ///
  /// At once: new waits fail with `errc::shutting_down`, and so do the callers
  /// waiting now; ready workers are stopped. Loads in flight may finish until
  /// `deadline` has passed and are then cancelled (per-operation cancellation
  /// of the loader's coroutine); a load that completes is stopped right away.
  /// Calling it again joins the shutdown under way.
  ///
  /// @param deadline How long loads in flight may still take.
  /// @param token    The completion token.
  ///
  /// @par Completion Signature
  /// @code void(boost::system::error_code) @endcode
  /// Completes, with success, once every coroutine of the pool has finished.
  template <class CompletionToken = asio::default_completion_token_t<executor_type>>
  auto async_shutdown(clock::duration deadline,
                      CompletionToken&& token = asio::default_completion_token_t<executor_type>()) {
    return asio::async_initiate<CompletionToken, void(error_code)>(
        [core = core_.get()](auto handler, clock::duration d) { core->start_shutdown_op(d, std::move(handler)); },
        token, deadline);
  }

 private:
  // Initiations capture a raw pointer to the core, as Asio's own capture their
  // I/O object: GCC 12 can destroy a temporary of a co_await expression twice,
  // which is harmless only for trivially destructible initiations.

  template <class Load, class Handle>
  static detail::pool_core::worker_body make_worker_body(Load load, Handle handle) {
    static_assert(std::is_invocable_v<Load&, const std::string&>,
                  "load must be callable as load(const std::string& key)");
    using Model = typename detail::awaitable_value<std::invoke_result_t<Load&, const std::string&>>::type;
    static_assert(std::is_invocable_r_v<asio::awaitable<Response>, Handle&, Model&, Request>,
                  "handle must be callable as handle(Model&, Request) -> asio::awaitable<Response>");
    return [load = std::move(load), handle = std::move(handle)](std::shared_ptr<detail::pool_core> core,
                                                                std::shared_ptr<detail::worker_record> w) {
      return run_worker<Model>(load, std::move(core), std::move(w));
    };
  }

  // The std::function holding `load` lives in the core, which this coroutine keeps alive.
  template <class Model, class Load>
  static asio::awaitable<void> run_worker(Load& load, std::shared_ptr<detail::pool_core> core,
                                          std::shared_ptr<detail::worker_record> w) {
    if (w->stop_requested.load(std::memory_order_acquire)) co_return;
    [[maybe_unused]] Model model = co_await load(w->key->name);  // owned until the worker ends
    core->worker_loaded(w);
    if (w->stop_requested.load(std::memory_order_acquire)) co_return;
    // Serving arrives with the request path; until then a ready worker holds its
    // model and parks on a timer that never fires by itself: a stop cancels it.
    detail::timer_type idle(co_await asio::this_coro::executor, detail::timer_type::time_point::max());
    co_await idle.async_wait(asio::as_tuple(asio::use_awaitable));
  }

  std::shared_ptr<detail::pool_core> core_;
};

}  // namespace coropool
