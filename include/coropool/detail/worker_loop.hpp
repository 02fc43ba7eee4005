#pragma once

// The worker loop: the coroutine each worker runs, instantiated once per
// Pool type. It loads the model, then takes requests from its key's queue
// (parking when there is none), runs the user's handler, and hands the
// answer back through the queue, which decides whether it still goes to the
// caller (see key_queue). The loop never holds a lock across a suspension
// or while user code runs.

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
    static_assert(std::is_invocable_v<Load&, const std::string&>,
                  "load must be callable as load(const std::string& key)");
    using Model = typename awaitable_value<std::invoke_result_t<Load&, const std::string&>>::type;
    static_assert(std::is_invocable_r_v<asio::awaitable<Response>, Handle&, Model&, Request>,
                  "handle must be callable as handle(Model&, Request) -> asio::awaitable<Response>");
    static_assert(std::is_default_constructible_v<Response> && std::is_move_constructible_v<Response>,
                  "Response must be default and move constructible (it completes as co_spawn's result does)");
    static_assert(std::is_invocable_r_v<asio::awaitable<void>, StreamHandle&, Model&, Request, StreamWriter<Response>&>,
                  "stream_handle must be callable as stream_handle(Model&, Request, StreamWriter<Response>&) -> "
                  "asio::awaitable<void>");
    return [load = std::move(load), handle = std::move(handle), stream_handle = std::move(stream_handle)](
               std::shared_ptr<pool_core> core, std::shared_ptr<worker_record> w) {
      return run<Model>(load, handle, stream_handle, std::move(core), std::move(w));
    };
  }

 private:
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
      }
      auto& entry = static_cast<entry_type&>(*r);
      if (auto* stream = entry.stream()) {
        // Once started a stream is its reader's: timeouts and cancellation no longer apply.
        if (core->claim_answer(entry, *w)) {
          w->shared.state.transition(worker_state::processing);  // refused once the worker is told to stop
          co_await serve_stream(model, stream_handle, entry.request, *stream, *w);
          w->shared.state.transition(worker_state::ready);
        }
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

  template <class Model, class StreamHandle>
  static asio::awaitable<void> serve_stream(Model& model, StreamHandle& stream_handle, Request& request,
                                            stream_state<Response>& stream, worker_record& w) {
    std::exception_ptr error;
    try {
      StreamWriter<Response> writer(stream.shared_from_this());
      co_await stream_handle(model, std::move(request), writer);
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
