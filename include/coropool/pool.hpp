#pragma once

/// @file
/// `coropool::Pool`: keyed pools of coroutine workers on any Asio executor.

#include "coropool/batch.hpp"
#include "coropool/config.hpp"
#include "coropool/detail/asio.hpp"
#include "coropool/detail/pool_core.hpp"
#include "coropool/detail/worker_loop.hpp"
#include "coropool/error.hpp"
#include "coropool/stream.hpp"

#include <chrono>
#include <concepts>
#include <cstddef>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

namespace coropool {

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
/// thread. A key's request queue is changed under its own lock, everything
/// else of the pool's state only on the pool's strand.
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

  /// The clock of every timeout (`std::chrono::steady_clock`). Every
  /// duration, in PoolConfig or an argument, may be anything up to
  /// `clock::duration::max()`, which means never.
  using clock = detail::clock;

  /// What names a request's identity for coalescing (see Options::coalesce_key).
  using coalesce_key_type = std::function<std::optional<std::string>(const Request&)>;

  /// PoolConfig, and what only a pool of this Request type can be told.
  ///
  /// @code
  /// coropool::Pool<std::string, std::string>::Options options = config;  // from a PoolConfig
  /// options.coalesce_key = [](const std::string& text) { return std::optional<std::string>(text); };
  /// @endcode
  struct Options : PoolConfig {
    Options() = default;
    /// Every PoolConfig field as given; coalescing off.
    ///
    /// @param config The pool's configuration.
    Options(PoolConfig config) : PoolConfig(std::move(config)) {}  // NOLINT(google-explicit-constructor)

    /// Coalescing, off when empty (the default). Returns a request's
    /// identity, or nullopt for a request never to coalesce. While a request
    /// of the same key and identity waits or is being handled, a new one
    /// attaches to it instead of queueing: the handler runs once, and every
    /// caller attached gets the answer (a copy of the Response, or the same
    /// exception). Identities are compared whole, never by hash alone. Each
    /// caller keeps its own deadline and cancellation; the shared run takes
    /// one place in the queue, the highest priority and the latest deadline
    /// of its callers, and is withdrawn (queued) or its answer discarded
    /// (handled) only when its last caller has left. Nothing is remembered:
    /// the next identical request after the answer runs again. Streams are
    /// never coalesced. Called on the submitting thread, outside every lock;
    /// if it throws, that caller gets the exception and nothing else changes.
    /// Needs a copyable Response.
    coalesce_key_type coalesce_key;
  };

  /// Constructs a pool on an executor.
  ///
  /// Without `stream_handle`, submit_stream()'s streams end with
  /// `errc::invalid_argument`. Warm keys (`PoolConfig::warm_keys`) start
  /// loading on the pool's executor, not inside the constructor.
  ///
  /// @param ex     The executor workers run on; any Asio executor (an
  ///               `io_context`'s, a `thread_pool`'s, a strand).
  /// @param config The pool's configuration.
  /// @param load   `(const std::string& key) -> asio::awaitable<Model>`: loads one
  ///               worker's model. May throw; its exception fails that load.
  /// @param handle `(Model&, Request) -> asio::awaitable<Response>`: serves a request.
  /// @param stream_handle Optional: `(Model&, Request, StreamWriter<Response>&)
  ///               -> asio::awaitable<void>`: serves submit_stream()'s requests,
  ///               writing their chunks.
  ///
  /// @throws boost::system::system_error with `errc::invalid_argument` when
  /// `config` is out of the range each PoolConfig field states (no cold-start
  /// workers, more of them than `max_workers_per_key`, a zero capacity or
  /// stream buffer, a non-positive duration, an empty warm key...).
  template <class Executor, class Load, class Handle, class StreamHandle = detail::no_stream_handler>
  requires asio::execution::executor<Executor> || asio::is_executor<Executor>::value Pool(
      const Executor& ex, PoolConfig config, Load load, Handle handle, StreamHandle stream_handle = {})
      : core_(detail::pool_core::create(executor_type(ex), checked_batching<Handle>(std::move(config)),
                                        detail::worker_loop<Request, Response>::make_body(
                                            std::move(load), std::move(handle), std::move(stream_handle)))) {}

  /// Constructs a pool on an executor, with Options (coalescing).
  ///
  /// @param ex      As in the constructor above.
  /// @param options The pool's configuration, and its coalesce_key.
  /// @param load    As in the constructor above.
  /// @param handle  As in the constructor above.
  /// @param stream_handle Optional, as in the constructor above.
  ///
  /// @throws boost::system::system_error with `errc::invalid_argument` when
  /// the configuration is out of range, or `coalesce_key` is set and
  /// Response cannot be copied.
  template <class Executor, class Load, class Handle, class StreamHandle = detail::no_stream_handler>
  requires asio::execution::executor<Executor> || asio::is_executor<Executor>::value Pool(
      const Executor& ex, Options options, Load load, Handle handle, StreamHandle stream_handle = {})
      : Pool(ex, static_cast<PoolConfig&&>(options), std::move(load), std::move(handle), std::move(stream_handle)) {
    if (options.coalesce_key) {
      if (!std::is_copy_constructible_v<Response>) {
        throw boost::system::system_error(make_error_code(errc::invalid_argument),
                                          "coropool: coalesce_key needs a copyable Response");
      }
      coalesce_key_ = std::make_unique<coalesce_key_type>(std::move(options.coalesce_key));
    }
  }

  /// Constructs a pool on an execution context's executor, with Options (coalescing).
  ///
  /// @param context As in the constructor above.
  /// @param options The pool's configuration, and its coalesce_key.
  /// @param load    As in the constructor above.
  /// @param handle  As in the constructor above.
  /// @param stream_handle Optional, as in the constructor above.
  ///
  /// @throws boost::system::system_error with `errc::invalid_argument` as above.
  template <class ExecutionContext, class Load, class Handle, class StreamHandle = detail::no_stream_handler>
  requires std::is_convertible_v<ExecutionContext&, asio::execution_context&> Pool(ExecutionContext& context,
                                                                                   Options options, Load load,
                                                                                   Handle handle,
                                                                                   StreamHandle stream_handle = {})
      : Pool(context.get_executor(), std::move(options), std::move(load), std::move(handle), std::move(stream_handle)) {
  }

  /// Constructs a pool on an execution context's executor (an `io_context`, a `thread_pool`).
  ///
  /// @param context Its `get_executor()` is the pool's executor; it must
  ///                outlive the pool.
  /// @param config  The pool's configuration.
  /// @param load    Loads one worker's model, as in the constructor above.
  /// @param handle  Serves a request, as in the constructor above.
  /// @param stream_handle Optional: serves submit_stream()'s requests, as in
  ///                the constructor above.
  ///
  /// @throws boost::system::system_error with `errc::invalid_argument` when
  /// `config` is out of range.
  template <class ExecutionContext, class Load, class Handle, class StreamHandle = detail::no_stream_handler>
  requires std::is_convertible_v<ExecutionContext&, asio::execution_context&> Pool(ExecutionContext& context,
                                                                                   PoolConfig config, Load load,
                                                                                   Handle handle,
                                                                                   StreamHandle stream_handle = {})
      : Pool(context.get_executor(), std::move(config), std::move(load), std::move(handle), std::move(stream_handle)) {}

  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;
  /// Moves the pool; the moved-from Pool may only be destroyed (which then
  /// does nothing).
  Pool(Pool&&) noexcept = default;
  Pool& operator=(Pool&&) = delete;

  /// Starts shutdown (see async_shutdown) without waiting for it.
  ~Pool() {
    if (core_) core_->start_shutdown(clock::duration::zero(), {});
  }

  /// The executor the pool was constructed with.
  ///
  /// @return The executor workers and timers run on, as given (type-erased).
  executor_type get_executor() const noexcept { return core_->get_executor(); }

  /// The pool's configuration.
  ///
  /// @return The configuration given at construction; it never changes.
  const PoolConfig& config() const noexcept { return core_->config(); }

  /// Whether `key` has at least one worker ready to serve.
  ///
  /// @param key The key.
  /// @return `worker_count(key) > 0`. Never spawns anything.
  ///
  /// @par Thread Safety
  /// Any thread; the answer is a snapshot.
  bool has_workers(const std::string& key) const { return core_->ready_workers(key) > 0; }

  /// How many workers of `key` are ready to serve (loaded and not stopping).
  ///
  /// @param key The key.
  /// @return The count; 0 for a key the pool has not seen.
  ///
  /// @par Thread Safety
  /// Any thread; the answer is a snapshot.
  std::size_t worker_count(const std::string& key) const { return core_->ready_workers(key); }

  /// A snapshot of the pool's statistics, per key and in total (see
  /// PoolStats, to_prometheus).
  ///
  /// @return The snapshot, a value of the caller's.
  ///
  /// @par Thread Safety
  /// Any thread; it changes nothing. A key's queue figures, request
  /// counters, breaker and latency are read together under its queue's lock
  /// and reconcile; its workers by state, waiters, load, eviction, restart
  /// and death counters and memory are read just before. Keys are read one
  /// after another.
  PoolStats stats() const { return core_->stats(); }

  /// How many workers of `key` exist, loading or serving.
  ///
  /// @param key The key.
  /// @return The count, which includes loading workers and excludes those
  /// already told to stop; 0 for a key the pool has not seen.
  ///
  /// @par Thread Safety
  /// Any thread; the answer is a snapshot.
  std::size_t live_worker_count(const std::string& key) const { return core_->live_workers(key); }

  /// How many requests of `key` wait in its queue for a worker; at most
  /// `PoolConfig::queue_capacity` (callers waiting for room are not counted).
  ///
  /// @param key The key.
  /// @return The count; 0 for a key the pool has not seen.
  ///
  /// @par Thread Safety
  /// Any thread; the answer is a snapshot.
  std::size_t queued_requests(const std::string& key) const { return core_->queued_requests(key); }

  /// The executor for blocking model code: `PoolConfig::compute_executor`, or
  /// the pool's own `asio::thread_pool` of `PoolConfig::compute_threads`
  /// threads. `load` and `handle` hop onto it and back with coropool::offload.
  ///
  /// @return The executor. A thread pool the pool made itself is joined and
  /// destroyed with the pool's internals, once the Pool is gone and its
  /// last worker has ended: do not use its executor beyond that.
  executor_type compute_executor() const noexcept { return core_->compute_executor(); }

  /// Submits a request to one of `key`'s workers and waits for its answer.
  ///
  /// A cold key is spawned (one wave, however many submit at once). The
  /// request joins the key's queue; when the queue holds
  /// `PoolConfig::queue_capacity` requests, the caller waits for room
  /// (backpressure). A free worker takes the next request and runs `handle`.
  ///
  /// @param key     The key; must not be empty.
  /// @param request What `handle` receives.
  /// @param token   The completion token.
  ///
  /// @par Completion Signature
  /// @code void(std::exception_ptr, Response) @endcode
  /// As `asio::co_spawn`'s: null and the handler's Response, or:
  /// - the exception `handle` threw, unchanged (the worker serves on);
  /// - a `boost::system::system_error` with `errc::request_timeout` (no answer
  ///   by the request's deadline, `PoolConfig::request_timeout` after
  ///   submission, queueing included: completed at the deadline, the handler
  ///   cancelled then, a late answer discarded), `errc::shutting_down` (refused, or still
  ///   queued at the shutdown deadline), `errc::invalid_argument` (empty key);
  /// - the wave's spawn_error (`code()` is `errc::spawn_failed`) when the
  ///   key's loads all failed;
  /// - a `system_error` with `errc::circuit_open` (the key's breaker refused
  ///   it), `errc::memory_exhausted` (the key has no worker and the memory
  ///   budget has no room for one), `errc::worker_lost` (the worker handling
  ///   it was declared dead), `errc::queue_full` (async_try_submit());
  /// - a `system_error` with `asio::error::operation_aborted` when the
  ///   operation was cancelled through its cancellation slot (any type). A
  ///   queued request is then never handed to `handle`; one being handled
  ///   has its late answer discarded.
  /// Response must be default constructible, as for `co_spawn`. The handler
  /// runs on its associated executor, never inside the pool.
  ///
  /// The request has the default SubmitOptions: `PoolConfig::request_timeout`
  /// and the middle priority level.
  ///
  /// @return What `token` makes of the operation (see `asio::async_result`):
  /// nothing for a plain handler, an awaitable for `asio::use_awaitable`.
  ///
  /// @par Thread Safety
  /// Any thread.
  ///
  /// @code
  /// pool.async_submit("bert", request, [](std::exception_ptr e, std::string response) {
  ///   if (!e) std::cout << response << '\n';
  /// });
  /// @endcode
  template <class CompletionToken = asio::default_completion_token_t<executor_type>>
  requires(!std::is_same_v<std::decay_t<CompletionToken>, SubmitOptions>) auto async_submit(
      std::string key, Request request, CompletionToken&& token = asio::default_completion_token_t<executor_type>()) {
    return async_submit(std::move(key), std::move(request), SubmitOptions{}, std::forward<CompletionToken>(token));
  }

  /// async_submit() with the request's own deadline and priority.
  ///
  /// The deadline (`options.timeout` from now, or `options.deadline`, the
  /// earlier of the two; `PoolConfig::request_timeout` when neither) covers
  /// everything: waiting for room, a cold key's load, the queue and the
  /// handler. It holds at its instant: a request still queued then is never
  /// handed to a worker; one being handled completes its caller with
  /// `errc::request_timeout` at once, and its handler is told by its
  /// coroutine's cancellation (an Asio operation it awaits completes with
  /// `operation_aborted`; `co_await asio::this_coro::cancellation_state`
  /// shows it), while the worker serves on. The priority picks the level the
  /// request queues in (PoolConfig::priority_weights).
  ///
  /// @param key     The key; must not be empty.
  /// @param request What `handle` receives.
  /// @param options The request's deadline and priority (see SubmitOptions).
  /// @param token   The completion token.
  ///
  /// @par Completion Signature
  /// @code void(std::exception_ptr, Response) @endcode
  /// As the other overload's, and a `system_error` with
  /// `errc::invalid_argument` for a timeout that is not positive or a
  /// priority beyond the levels; with `errc::request_timeout` at once for a
  /// deadline already past.
  ///
  /// @return What `token` makes of the operation (see `asio::async_result`).
  ///
  /// @par Thread Safety
  /// Any thread.
  template <class CompletionToken = asio::default_completion_token_t<executor_type>>
  auto async_submit(std::string key, Request request, SubmitOptions options,
                    CompletionToken&& token = asio::default_completion_token_t<executor_type>()) {
    return asio::async_initiate<CompletionToken, void(std::exception_ptr, Response)>(
        submit_initiation{core_.get(), coalesce_key_.get(), true}, token, std::move(key), std::move(request),
        std::move(options));
  }

  /// async_submit() that never waits for room: when the key's queue is full
  /// it completes at once (on the handler's executor) with `errc::queue_full`.
  ///
  /// @param key     The key; must not be empty.
  /// @param request What `handle` receives.
  /// @param token   The completion token.
  ///
  /// @par Completion Signature
  /// @code void(std::exception_ptr, Response) @endcode
  /// As async_submit()'s, with a `system_error` of `errc::queue_full` where
  /// async_submit() would wait for room. A refused request is counted in
  /// KeyStats::rejected and never reaches `handle`.
  ///
  /// @return What `token` makes of the operation (see `asio::async_result`):
  /// nothing for a plain handler, an awaitable for `asio::use_awaitable`.
  ///
  /// @par Thread Safety
  /// Any thread.
  template <class CompletionToken = asio::default_completion_token_t<executor_type>>
  requires(!std::is_same_v<std::decay_t<CompletionToken>, SubmitOptions>) auto async_try_submit(
      std::string key, Request request, CompletionToken&& token = asio::default_completion_token_t<executor_type>()) {
    return async_try_submit(std::move(key), std::move(request), SubmitOptions{}, std::forward<CompletionToken>(token));
  }

  /// async_try_submit() with the request's own deadline and priority (see
  /// the async_submit() that takes SubmitOptions). A full queue admits it
  /// when it holds a request of a lower level, which is held back instead.
  ///
  /// @param key     The key; must not be empty.
  /// @param request What `handle` receives.
  /// @param options The request's deadline and priority.
  /// @param token   The completion token.
  ///
  /// @par Completion Signature
  /// @code void(std::exception_ptr, Response) @endcode
  ///
  /// @return What `token` makes of the operation.
  ///
  /// @par Thread Safety
  /// Any thread.
  template <class CompletionToken = asio::default_completion_token_t<executor_type>>
  auto async_try_submit(std::string key, Request request, SubmitOptions options,
                        CompletionToken&& token = asio::default_completion_token_t<executor_type>()) {
    return asio::async_initiate<CompletionToken, void(std::exception_ptr, Response)>(
        submit_initiation{core_.get(), coalesce_key_.get(), false}, token, std::move(key), std::move(request),
        std::move(options));
  }

  /// Submits a request and returns the worker's Response.
  ///
  /// async_submit() with `asio::use_awaitable`: it waits for room when the
  /// key's queue is full.
  ///
  /// @param key     The key; must not be empty.
  /// @param request What `handle` receives.
  /// @return An awaitable of the Response `handle` returned.
  ///
  /// @throws whatever `handle` threw, unchanged.
  /// @throws boost::system::system_error for the errors of async_submit(),
  /// spawn_error when the key's spawn wave failed.
  asio::awaitable<Response> submit(std::string key, Request request) {
    return async_submit(std::move(key), std::move(request), asio::use_awaitable);
  }

  /// submit() with the request's own deadline and priority (see the
  /// async_submit() that takes SubmitOptions).
  ///
  /// @param key     The key; must not be empty.
  /// @param request What `handle` receives.
  /// @param options The request's deadline and priority.
  /// @return An awaitable of the Response `handle` returned.
  /// @throws as submit(); `errc::invalid_argument` for options out of range.
  asio::awaitable<Response> submit(std::string key, Request request, SubmitOptions options) {
    return async_submit(std::move(key), std::move(request), std::move(options), asio::use_awaitable);
  }

  /// submit() that fails at once with `errc::queue_full` instead of waiting for room.
  ///
  /// @param key     The key; must not be empty.
  /// @param request What `handle` receives.
  /// @return An awaitable of the Response `handle` returned.
  /// @throws boost::system::system_error with `errc::queue_full` when the
  /// key's queue is full; otherwise as submit().
  asio::awaitable<Response> try_submit(std::string key, Request request) {
    return async_try_submit(std::move(key), std::move(request), asio::use_awaitable);
  }

  /// try_submit() with the request's own deadline and priority.
  ///
  /// @param key     The key; must not be empty.
  /// @param request What `handle` receives.
  /// @param options The request's deadline and priority.
  /// @return An awaitable of the Response `handle` returned.
  /// @throws as try_submit(); `errc::invalid_argument` for options out of range.
  asio::awaitable<Response> try_submit(std::string key, Request request, SubmitOptions options) {
    return async_try_submit(std::move(key), std::move(request), std::move(options), asio::use_awaitable);
  }

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
  /// - `errc::circuit_open`: the key's breaker is open;
  /// - `errc::memory_exhausted`: the memory budget has no room for a worker
  ///   of the key, even after evicting idle workers of other keys;
  /// - `errc::shutting_down`, `errc::invalid_argument`;
  /// - `asio::error::operation_aborted`: the wait was cancelled through its
  ///   cancellation slot (any type); the wave goes on for other callers.
  ///
  /// The handler runs on its associated executor (defaulting to the pool's), never inline.
  ///
  /// @return What `token` makes of the operation (see `asio::async_result`):
  /// nothing for a plain handler, an awaitable for `asio::use_awaitable`.
  ///
  /// @par Thread Safety
  /// Any thread.
  ///
  /// @code
  /// pool.async_wait_for_workers("bert", std::chrono::seconds(5), [](coropool::error_code ec) {
  ///   if (ec == coropool::errc::spawn_timeout) std::cerr << "bert is still loading\n";
  /// });
  /// @endcode
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
  ///
  /// @param key   The key; must not be empty.
  /// @param token The completion token.
  ///
  /// @par Completion Signature
  /// @code void(boost::system::error_code) @endcode
  /// As the other overload's.
  ///
  /// @return What `token` makes of the operation (see `asio::async_result`):
  /// nothing for a plain handler, an awaitable for `asio::use_awaitable`.
  template <class CompletionToken = asio::default_completion_token_t<executor_type>>
  auto async_wait_for_workers(std::string key,
                              CompletionToken&& token = asio::default_completion_token_t<executor_type>()) {
    return async_wait_for_workers(std::move(key), config().spawn_timeout, std::forward<CompletionToken>(token));
  }

  /// Waits until `key` has a worker ready, as async_wait_for_workers().
  ///
  /// @param key     The key; must not be empty.
  /// @param timeout How long to wait; must be positive.
  /// @return An awaitable that completes once a worker of `key` is ready.
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
  ///
  /// @param key The key; must not be empty.
  /// @return An awaitable that completes once a worker of `key` is ready.
  /// @throws spawn_error, boost::system::system_error as the other overload.
  asio::awaitable<void> wait_for_workers(std::string key) {
    return wait_for_workers(std::move(key), config().spawn_timeout);
  }

  /// Submits a request whose answer is streamed: the worker's
  /// `stream_handle` writes chunks that the caller reads from the returned
  /// Stream, with backpressure both ways (a full queue holds the request
  /// back; a slow reader holds the writer back).
  ///
  /// Returns at once. Everything the pool decides ends the stream in-band,
  /// after the chunks already written: the stream handler's exception,
  /// unchanged; `errc::request_timeout` when no worker started the stream
  /// by its deadline (`PoolConfig::request_timeout`, or its own
  /// SubmitOptions; once started, a stream runs until its handler returns,
  /// its reader leaves, or shutdown's deadline);
  /// `errc::shutting_down`, `errc::invalid_argument`, a spawn_error.
  /// Destroying the Stream withdraws a queued request, or stops the writer.
  ///
  /// @param key     The key; must not be empty.
  /// @param request What `stream_handle` receives.
  /// @param options The request's deadline (until a worker starts the
  ///                stream) and priority.
  /// @return The caller's end of the stream, to read with Stream::next().
  ///
  /// @par Thread Safety
  /// Any thread.
  Stream<Response> submit_stream(std::string key, Request request, SubmitOptions options = {}) {
    return open_stream(key, std::move(request), options, true);
  }

  /// submit_stream() without waiting for room: when the key's queue is full,
  /// the stream ends at once with `errc::queue_full` (what a server answers
  /// with 429), as try_submit() fails.
  ///
  /// @param key     The key; must not be empty.
  /// @param request What `stream_handle` receives.
  /// @param options The request's deadline (until a worker starts the
  ///                stream) and priority.
  /// @return The caller's end of the stream; its errors are submit_stream()'s
  ///         and `errc::queue_full`.
  ///
  /// @par Thread Safety
  /// Any thread.
  Stream<Response> try_submit_stream(std::string key, Request request, SubmitOptions options = {}) {
    return open_stream(key, std::move(request), options, false);
  }

  /// Scales `key` to `workers` workers.
  ///
  /// Up: spawns the missing workers at once (the key is spawned if cold) and
  /// completes when their loads have ended. Down: stops idle workers at
  /// once and busy ones after their current request (loading workers are
  /// left to finish), and completes when at most `workers` are left. Idle
  /// eviction and scale-up on demand go on afterwards as usual.
  ///
  /// @param key     The key; must not be empty.
  /// @param workers The target, at most `PoolConfig::max_workers_per_key`.
  /// @param token   The completion token.
  ///
  /// @par Completion Signature
  /// @code void(boost::system::error_code) @endcode
  /// Success; `errc::spawn_failed` when a load failed and fewer workers are
  /// ready than asked; `errc::memory_exhausted` when the memory budget had
  /// no room for them; `errc::invalid_argument` (an empty key, or `workers`
  /// above `max_workers_per_key`); `errc::shutting_down`.
  ///
  /// @return What `token` makes of the operation (see `asio::async_result`):
  /// nothing for a plain handler, an awaitable for `asio::use_awaitable`.
  ///
  /// @code
  /// co_await pool.async_scale("bert", 4, asio::use_awaitable);
  /// @endcode
  template <class CompletionToken = asio::default_completion_token_t<executor_type>>
  auto async_scale(std::string key, std::size_t workers,
                   CompletionToken&& token = asio::default_completion_token_t<executor_type>()) {
    return async_command(detail::command::kind::scale, std::move(key), workers, std::forward<CompletionToken>(token));
  }

  /// Evicts `key`: its workers serve what is queued, then stop; new
  /// requests meanwhile are kept and served by a new spawn wave once the
  /// old workers are gone. Minimum workers are not refilled for an evicted
  /// key until it is used again.
  ///
  /// Loading workers finish their load and leave in turn. Evicting a key
  /// without workers completes at once.
  ///
  /// @param key   The key; must not be empty.
  /// @param token The completion token.
  ///
  /// @par Completion Signature
  /// @code void(boost::system::error_code) @endcode
  /// Success once every worker of the key has stopped; `errc::invalid_argument`
  /// (an empty key); `errc::shutting_down` (asked for, or still waiting, once
  /// shutdown began).
  ///
  /// @return What `token` makes of the operation (see `asio::async_result`):
  /// nothing for a plain handler, an awaitable for `asio::use_awaitable`.
  template <class CompletionToken = asio::default_completion_token_t<executor_type>>
  auto async_evict(std::string key, CompletionToken&& token = asio::default_completion_token_t<executor_type>()) {
    return async_command(detail::command::kind::evict, std::move(key), 0, std::forward<CompletionToken>(token));
  }

  /// Restarts `key`'s workers one by one while the key keeps serving: a
  /// replacement is loaded first (one worker above `max_workers_per_key`
  /// for that time), then the worker it replaces leaves after its current
  /// request.
  ///
  /// Restarting a key without workers completes at once.
  ///
  /// @param key   The key; must not be empty.
  /// @param token The completion token.
  ///
  /// @par Completion Signature
  /// @code void(boost::system::error_code) @endcode
  /// Success once every worker present at the call has been replaced;
  /// `errc::spawn_failed` when a replacement failed to load (the workers not
  /// yet replaced keep serving); `errc::memory_exhausted` when the budget has
  /// no room for a replacement beside the worker it replaces (nothing is
  /// evicted for it); `errc::invalid_argument` (an empty key);
  /// `errc::shutting_down` (asked for, or still under way, once shutdown began).
  ///
  /// @return What `token` makes of the operation (see `asio::async_result`):
  /// nothing for a plain handler, an awaitable for `asio::use_awaitable`.
  template <class CompletionToken = asio::default_completion_token_t<executor_type>>
  auto async_restart(std::string key, CompletionToken&& token = asio::default_completion_token_t<executor_type>()) {
    return async_command(detail::command::kind::restart, std::move(key), 0, std::forward<CompletionToken>(token));
  }

  /// async_scale() for coroutines.
  ///
  /// @param key     The key; must not be empty.
  /// @param workers The target, at most `PoolConfig::max_workers_per_key`.
  /// @return An awaitable that completes when async_scale() would.
  /// @throws boost::system::system_error with async_scale()'s error.
  asio::awaitable<void> scale(std::string key, std::size_t workers) {
    return async_scale(std::move(key), workers, asio::use_awaitable);
  }

  /// async_evict() for coroutines.
  ///
  /// @param key The key; must not be empty.
  /// @return An awaitable that completes when async_evict() would.
  /// @throws boost::system::system_error with async_evict()'s error.
  asio::awaitable<void> evict(std::string key) { return async_evict(std::move(key), asio::use_awaitable); }

  /// async_restart() for coroutines.
  ///
  /// @param key The key; must not be empty.
  /// @return An awaitable that completes when async_restart() would.
  /// @throws boost::system::system_error with async_restart()'s error.
  asio::awaitable<void> restart(std::string key) { return async_restart(std::move(key), asio::use_awaitable); }

  /// Shuts the pool down.
  ///
  /// At once: new waits and submits fail with `errc::shutting_down`, and so
  /// do the callers of wait_for_workers() waiting now. Requests already
  /// queued still drain to their workers until `deadline`; each worker leaves
  /// once its key's queue is empty. Loads in flight may finish meanwhile and
  /// serve. At the deadline every request still queued or being handled
  /// completes with `errc::shutting_down` (none is dropped) and every worker
  /// left is cancelled (per-operation cancellation of its coroutine).
  /// Calling it again joins the shutdown under way; the earliest deadline
  /// asked for holds (destroying the Pool asks for "now").
  ///
  /// @param deadline How long queued requests and loads in flight may still
  ///                 take; `clock::duration::max()` waits for them however long.
  /// @param token    The completion token.
  ///
  /// @par Completion Signature
  /// @code void(boost::system::error_code) @endcode
  /// Completes, with success, once every worker's coroutine has ended
  /// (at once when the pool has none). Every caller of async_shutdown() is
  /// completed then, whichever deadline each asked for.
  ///
  /// @return What `token` makes of the operation (see `asio::async_result`):
  /// nothing for a plain handler, an awaitable for `asio::use_awaitable`.
  ///
  /// @par Thread Safety
  /// Any thread, any number of times.
  ///
  /// @code
  /// co_await pool.async_shutdown(std::chrono::seconds(10), asio::use_awaitable);
  /// @endcode
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

  template <class CompletionToken>
  auto async_command(detail::command::kind what, std::string key, std::size_t workers, CompletionToken&& token) {
    return asio::async_initiate<CompletionToken, void(error_code)>(command_initiation{core_.get(), what}, token,
                                                                   std::move(key), workers);
  }

  struct command_initiation {
    detail::pool_core* core;
    detail::command::kind what;

    template <class Handler>
    void operator()(Handler&& handler, std::string key, std::size_t workers) const {
      auto done = std::make_shared<detail::completion_op<std::decay_t<Handler>, error_code>>(
          std::forward<Handler>(handler), core->get_executor());
      core->send_command(detail::command{what, std::move(key), workers, std::move(done)});
    }
  };

  // submit_stream() and try_submit_stream(): a stream request, queued waiting for room or not.
  Stream<Response> open_stream(const std::string& key, Request request, const SubmitOptions& options,
                               bool wait_for_room) {
    auto state = std::make_shared<detail::stream_state<Response>>(config().stream_buffer);
    state->register_with(core_->registry());
    using op_type = detail::stream_request_op<Request, Response, detail::stream_state<Response>>;
    boost::intrusive_ptr<op_type> op(new op_type(std::move(request), state));
    detail::request_ptr r(op);
    core_->start_submit(std::move(op), key, wait_for_room, options);
    return Stream<Response>(std::move(state), [weak_core = std::weak_ptr<detail::pool_core>(core_), r] {
      if (auto core = weak_core.lock()) core->cancel_request(*r);
    });
  }

  /// `config`, unless it asks for batching (PoolConfig::batching) without a batch handler.
  template <class Handle>
  static PoolConfig checked_batching(PoolConfig config) {
    if (!detail::is_batch_handler<Handle>::value && (config.batching.max_batch_size > 1 || config.batching_for_key)) {
      throw boost::system::system_error(make_error_code(errc::invalid_argument),
                                        "coropool: batching needs a batch handler (coropool::batched)");
    }
    return config;
  }

  struct submit_initiation {
    detail::pool_core* core;
    const coalesce_key_type* coalesce_key;  // null: no coalescing
    bool wait_for_room;

    template <class Handler>
    void operator()(Handler&& handler, std::string key, Request request, const SubmitOptions& options) const {
      using op_type = detail::request_op<Request, Response, std::decay_t<Handler>>;
      std::decay_t<Handler> h(std::forward<Handler>(handler));
      std::optional<std::string> identity;
      std::exception_ptr error;
      if (coalesce_key) {
        try {
          identity = (*coalesce_key)(request);  // user code: before the request is made, outside every lock
        } catch (...) {
          error = std::current_exception();
        }
      }
      auto op = op_type::create(std::move(request), std::move(h), core->get_executor(), &core->context());
      if (error) return core->refuse(*op, errc::invalid_argument, std::move(error));
      if (identity) {
        return core->start_submit(std::move(op), key, wait_for_room, options, std::move(*identity),
                                  &detail::coalesced_run<Request, Response>::make);
      }
      core->start_submit(std::move(op), key, wait_for_room, options);
    }
  };

  std::shared_ptr<detail::pool_core> core_;
  std::unique_ptr<coalesce_key_type> coalesce_key_;  // on the heap: initiations point to it, and a Pool may move
};

}  // namespace coropool
