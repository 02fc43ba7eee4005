#pragma once

// The worker loop: the coroutine each worker runs, instantiated once per
// Pool type. It loads the model, then takes requests from its key's queue
// (parking when there is none), runs the user's handler, and hands the
// answer back through the queue, which decides whether it still goes to the
// caller (see key_queue). The loop never holds a lock across a suspension
// or while user code runs.

#include "coropool/batch.hpp"
#include "coropool/detail/answers.hpp"
#include "coropool/detail/asio.hpp"
#include "coropool/detail/pool_core.hpp"
#include "coropool/detail/request.hpp"
#include "coropool/detail/stream_state.hpp"
#include "coropool/detail/worker_record.hpp"
#include "coropool/error.hpp"
#include "coropool/stream.hpp"
#include "coropool/worker_state.hpp"

#include <exception>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace coropool::detail {

template <class T>
struct awaitable_value {};

template <class T, class Executor>
struct awaitable_value<asio::awaitable<T, Executor>> {
  using type = T;
};

/// The stream handler of a pool constructed without one: submit_stream()'s
/// streams end with `errc::invalid_argument`.
struct no_stream_handler {
  template <class Model, class Request, class Writer>
  asio::awaitable<void> operator()(Model&, Request&&, Writer&) const {
    throw boost::system::system_error(make_error_code(errc::invalid_argument), "coropool: pool has no stream handler");
  }
};

template <class Request, class Response>
class worker_loop {
 public:
  using entry_type = request_entry<Request, Response>;

  template <class Load, class Handle, class StreamHandle>
  static pool_core::worker_body make_body(Load load, Handle handle, StreamHandle stream_handle) {
    using Model = typename body_checks<Load, StreamHandle>::model;
    static_assert(std::is_invocable_r_v<asio::awaitable<Response>, Handle&, Model&, Request>,
                  "handle must be callable as handle(Model&, Request) -> asio::awaitable<Response>");
    return [load = std::move(load), handle = std::move(handle), stream_handle = std::move(stream_handle)](
               std::shared_ptr<pool_core> core, std::shared_ptr<worker_record> w) {
      return run<Model>(load, handle, stream_handle, std::move(core), std::move(w));
    };
  }

  /// The body of a pool made with coropool::batched(): its workers serve batches.
  template <class Load, class BatchHandle, class Handle, class StreamHandle>
  static pool_core::worker_body make_body(Load load, batch_handler<BatchHandle, Handle> handle,
                                          StreamHandle stream_handle) {
    using Model = typename body_checks<Load, StreamHandle>::model;
    static_assert(std::is_invocable_r_v<asio::awaitable<std::vector<outcome<Response>>>, BatchHandle&, Model&,
                                        std::span<Request>>,
                  "a batch handler must be callable as batch(Model&, std::span<Request>) -> "
                  "asio::awaitable<std::vector<coropool::outcome<Response>>>");
    if constexpr (!std::is_void_v<Handle>) {
      static_assert(std::is_invocable_r_v<asio::awaitable<Response>, Handle&, Model&, Request>,
                    "handle must be callable as handle(Model&, Request) -> asio::awaitable<Response>");
    }
    return [load = std::move(load), handle = std::move(handle), stream_handle = std::move(stream_handle)](
               std::shared_ptr<pool_core> core, std::shared_ptr<worker_record> w) {
      return run_batches<Model>(load, handle, stream_handle, std::move(core), std::move(w));
    };
  }

 private:
  /// The checks every body shares, and the Model that `load` makes.
  template <class Load, class StreamHandle>
  struct body_checks {
    static_assert(std::is_invocable_v<Load&, const std::string&>,
                  "load must be callable as load(const std::string& key)");
    using model = typename awaitable_value<std::invoke_result_t<Load&, const std::string&>>::type;
    static_assert(std::is_default_constructible_v<Response> && std::is_move_constructible_v<Response>,
                  "Response must be default and move constructible (it completes as co_spawn's result does)");
    static_assert(std::is_invocable_r_v<asio::awaitable<void>, StreamHandle&, model&, Request, StreamWriter<Response>&>,
                  "stream_handle must be callable as stream_handle(Model&, Request, StreamWriter<Response>&) -> "
                  "asio::awaitable<void>");
  };

  /// Requests a worker serves one after another without a suspension of its
  /// own before it yields its thread: a busy key must not starve the rest.
  static constexpr int serve_burst = 64;

  // `load` and `handle` live in the core's worker_body, which this coroutine keeps alive.
  template <class Model, class Load, class Handle, class StreamHandle>
  static asio::awaitable<void> run(Load& load, Handle& handle, StreamHandle& stream_handle,
                                   std::shared_ptr<pool_core> core, std::shared_ptr<worker_record> w) {
    if (!core->worker_starts(*w)) co_return;
    Model model = co_await load(w->key->name);  // owned until the worker ends
    core->worker_loaded(w);
    int burst = 0;
    answer_sender<entry_type, Response> answers;
    request_ptr r = core->take_request(*w);
    for (;;) {
      if (r && ++burst == serve_burst) {
        burst = 0;
        co_await asio::post(w->strand, asio::use_awaitable);
      } else if (!r) {
        burst = 0;
        r = co_await asio::async_initiate<const asio::use_awaitable_t<>&, void(request_ptr)>(
            park_initiation{core.get(), w.get()}, asio::use_awaitable);
        if (!r) co_return;  // stopped, or the key closed and drained
        // Handed over while parked, at its acceptance: it was not queued (a
        // request taken at once was recorded by key_queue::take_or_park).
        if (std::exchange(w->own.woken, false)) w->recorded.queue_time.record(0);
      }
      auto& entry = static_cast<entry_type&>(*r);
      if (entry.stream()) {
        co_await serve_stream(*core, model, stream_handle, entry, *w);
        r = core->take_request(*w);
        continue;
      }
      std::exception_ptr error;
      Response response{};
      w->own.handling = &entry;  // the key queue's deadline may interrupt this handler, and no other
      try {
        response = co_await handle(model, std::move(entry.request));
      } catch (...) {
        error = std::current_exception();
      }
      w->own.handling = nullptr;
      if (std::exchange(w->own.interrupted, false)) {
        // The request's deadline cancelled the handler, not the worker: it serves on.
        co_await asio::this_coro::reset_cancellation_state();
      }
      const bool failure = error && core->counts_as_failure(error);  // user code: before the lock
      bool answer = false;
      std::vector<request_ptr> callers;  // a run's (see key_queue::enqueue_coalesced); no allocation otherwise
      request_ptr next = core->claim_answer_and_take(entry, *w, answer, callers, error != nullptr, failure);
      if (answer) answers.send(entry, std::move(error), std::move(response));
      if (!callers.empty()) answer_callers(answers, callers, error, response);
      r = std::move(next);
    }
  }

  /// A batching worker's loop (see key_queue, "Batching"): it fills a batch
  /// from the queue, waits for more while BatchConfig allows, runs the batch
  /// handler over the requests still waiting, and answers each caller with
  /// its item's outcome. The handler is told (cancelled) only when every
  /// caller of the batch has gone.
  template <class Model, class Load, class Batch, class StreamHandle>
  static asio::awaitable<void> run_batches(Load& load, Batch& handle, StreamHandle& stream_handle,
                                           std::shared_ptr<pool_core> core, std::shared_ptr<worker_record> w) {
    if (!core->worker_starts(*w)) co_return;
    BatchConfig policy = core->config().batching;
    if (core->config().batching_for_key) policy = core->config().batching_for_key(w->key->name);  // user code
    if (!batch_config_valid(policy)) {
      throw boost::system::system_error(make_error_code(errc::invalid_argument),
                                        "coropool: batching_for_key gave a BatchConfig out of range");
    }
    Model model = co_await load(w->key->name);  // owned until the worker ends
    w->key->queue.set_batching(*w, policy.max_batch_size, policy.max_batch_delay);
    w->own.batch_timer.emplace(w->strand);
    core->worker_loaded(w);
    answer_sender<entry_type, Response> answers;
    std::vector<Request> requests;
    std::vector<outcome<Response>> results;
    std::vector<char> errors;
    std::vector<char> failures;
    std::vector<std::pair<std::size_t, request_ptr>> deliveries;
    std::vector<Response> values;                 // each unit's answer, by index
    std::vector<std::exception_ptr> item_errors;  // and its exception, if it failed
    std::size_t served = 0;
    bool have = core->fill_batch(*w);
    for (;;) {
      if (!have) {
        served = 0;
        auto r = co_await asio::async_initiate<const asio::use_awaitable_t<>&, void(request_ptr)>(
            park_initiation{core.get(), w.get()}, asio::use_awaitable);
        if (!r) co_return;     // stopped, or the key closed and drained
        core->fill_batch(*w);  // r is in the batch: top it up from the queue
      } else if (served >= serve_burst) {
        served = 0;
        co_await asio::post(w->strand, asio::use_awaitable);  // a busy key must not starve the rest
      }
      // Wait for more while the batch has room, up to its start time.
      while (policy.max_batch_delay > clock::duration::zero()) {
        std::uint64_t gen = 0;
        const auto now = clock::now();
        const auto start = core->batch_start_time(*w, policy.max_batch_delay, now, gen);
        if (start <= now) break;
        w->own.collect_wait = gen;
        w->own.batch_timer->expires_at(start);
        co_await w->own.batch_timer->async_wait(asio::as_tuple(asio::use_awaitable));  // or nudged
        w->own.collect_wait = 0;
        const asio::cancellation_state state = co_await asio::this_coro::cancellation_state;
        if (state.cancelled() != asio::cancellation_type::none) {
          co_return;  // the pool cancelled the worker: it completes the batch's callers
        }
      }
      const request_base* handling = nullptr;
      auto units = core->start_batch(*w, handling);
      if (units.empty()) {  // every unit ended while it waited
        have = core->fill_batch(*w);
        continue;
      }
      served += units.size();
      if (units.front()->streamed) {  // served alone
        co_await serve_stream(*core, model, stream_handle, static_cast<entry_type&>(*units.front()), *w);
        have = core->fill_batch(*w);
        continue;
      }
      requests.clear();
      results.clear();
      for (auto& u : units) requests.push_back(std::move(static_cast<entry_type&>(*u).request));
      std::exception_ptr batch_error;
      w->own.handling = handling;  // the key queue's deadlines may interrupt this batch once all its callers left
      try {
        if constexpr (requires { handle.single; }) {
          if (requests.size() == 1) {
            results.emplace_back(co_await handle.single(model, std::move(requests.front())));
          } else {
            results = co_await handle.batch(model, std::span<Request>(requests));
          }
        } else {
          results = co_await handle.batch(model, std::span<Request>(requests));
        }
      } catch (...) {
        batch_error = std::current_exception();
      }
      w->own.handling = nullptr;
      if (std::exchange(w->own.interrupted, false)) co_await asio::this_coro::reset_cancellation_state();
      if (!batch_error && results.size() != units.size()) {
        batch_error = std::make_exception_ptr(std::logic_error("coropool: the batch handler returned " +
                                                               std::to_string(results.size()) + " results for " +
                                                               std::to_string(units.size()) + " requests"));
      }
      // User code (breaker_counts), before the lock.
      const bool batch_failure = batch_error && core->counts_as_failure(batch_error);
      errors.assign(units.size(), batch_error ? 1 : 0);
      failures.assign(units.size(), 0);
      if (!batch_error) {
        for (std::size_t i = 0; i < units.size(); ++i) {
          if (auto e = results[i].error()) {
            errors[i] = 1;
            failures[i] = core->counts_as_failure(e) ? 1 : 0;
          }
        }
      }
      // Each item's answer, made before any is claimed: a Response whose
      // default constructor throws then ends the worker holding the batch
      // (whose callers the pool completes), and loses no caller claimed.
      values.clear();
      item_errors.assign(units.size(), nullptr);
      for (std::size_t i = 0; i < units.size(); ++i) {
        if (errors[i]) {
          item_errors[i] = batch_error ? batch_error : results[i].error();
          values.emplace_back();
        } else {
          values.push_back(std::move(results[i].value()));
        }
      }
      deliveries.clear();
      have = core->finish_batch(*w, units, errors, failures, batch_error != nullptr, batch_failure, deliveries);
      for (std::size_t k = 0; k < deliveries.size(); ++k) {
        const std::size_t i = deliveries[k].first;
        auto& entry = static_cast<entry_type&>(*deliveries[k].second);
        if (k + 1 == deliveries.size() || deliveries[k + 1].first != i) {
          answers.send(entry, item_errors[i], std::move(values[i]));  // its last caller
        } else if constexpr (std::is_copy_constructible_v<Response>) {
          answers.send(entry, item_errors[i], Response(values[i]));  // a run's callers share it
        } else {
          answers.send(entry, item_errors[i], std::move(values[i]));  // unreachable: runs need a copyable Response
        }
      }
    }
  }

  /// Every caller of a run gets the answer: a copy of the Response, or the same exception.
  static void answer_callers(answer_sender<entry_type, Response>& answers, std::vector<request_ptr>& callers,
                             const std::exception_ptr& error, Response& response) {
    if constexpr (std::is_copy_constructible_v<Response>) {
      for (std::size_t i = 0; i + 1 < callers.size(); ++i) {
        answers.send(static_cast<entry_type&>(*callers[i]), error, Response(response));
      }
      answers.send(static_cast<entry_type&>(*callers.back()), error, std::move(response));
    } else {
      // Unreachable: Pool refuses a coalesce_key for a Response it cannot copy.
      answers.send(static_cast<entry_type&>(*callers.front()), error, std::move(response));
    }
  }

  /// Serves the stream request `entry` that `w` holds, if it still goes to
  /// its reader. Once started a stream is its reader's: timeouts and
  /// cancellation no longer apply.
  template <class Model, class StreamHandle>
  static asio::awaitable<void> serve_stream(pool_core& core, Model& model, StreamHandle& stream_handle,
                                            entry_type& entry, worker_record& w) {
    if (!core.claim_answer(entry, w)) co_return;
    w.shared.state.transition(worker_state::processing);  // refused once the worker is told to stop
    stream_state<Response>& stream = *entry.stream();
    std::exception_ptr error;
    try {
      StreamWriter<Response> writer(stream.shared_from_this());
      co_await stream_handle(model, std::move(entry.request), writer);
    } catch (...) {
      error = std::current_exception();
    }
    // Cancelled because the pool cancelled the worker (shutdown's deadline, or
    // declared dead), not because its reader left: the reader is told why.
    // Any other error is the handler's own.
    const errc cancelled = w.shared.cancelled_because.load(std::memory_order_acquire);
    if (error && cancelled != errc{} && !stream.reader_gone() && is_operation_aborted(error)) {
      error = std::make_exception_ptr(boost::system::system_error(make_error_code(cancelled)));
    }
    stream.end(std::move(error));
    w.shared.state.transition(worker_state::ready);
  }

  struct park_initiation {
    pool_core* core;
    worker_record* worker;

    template <class Handler>
    void operator()(Handler&& handler) const {
      core->park(*worker, std::forward<Handler>(handler));
    }
  };
};

}  // namespace coropool::detail
