#pragma once

#include "coropool/detail/asio.hpp"
#include "coropool/detail/completion.hpp"
#include "coropool/error.hpp"

#include <boost/intrusive/list.hpp>
#include <boost/smart_ptr/intrusive_ptr.hpp>

#include <atomic>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace coropool::detail {

class key_queue;
struct worker_record;

/// One submitted request, type-erased over the pool's Request and Response
/// and the caller's handler. Its phase and list links are guarded by its
/// key's queue lock; whoever moves it to `done` under that lock, and only
/// they, completes the caller: that is the exactly-once rule (see key_queue).
class request_base {
  std::atomic<std::uint32_t> refs_{0};  // first: beside the vtable pointer, where it fills the padding

 public:
  /// `attached`: a caller coalesced onto a run (see coalescing below), which
  /// is itself waiting_room, queued or in_flight.
  enum class phase : std::uint8_t { waiting_room, queued, in_flight, attached, done };

  using hook = boost::intrusive::list_member_hook<boost::intrusive::link_mode<boost::intrusive::safe_link>>;

  request_base() = default;
  request_base(const request_base&) = delete;
  request_base& operator=(const request_base&) = delete;

  /// Completes the caller with a pool error: `error`, where the pool made
  /// one (a failed wave's spawn_error), or a system_error of `ec`.
  virtual void fail(error_code ec, std::exception_ptr error) = 0;

  /// Destroys the caller's handler without calling it: the execution context
  /// is being destroyed, as Asio does with every operation still pending then.
  virtual void abandon() noexcept = 0;

  // Guarded by its key queue's lock. Laid out to fill no more cache lines
  // than it must: a deep queue's requests are what a worker's cache holds.
  std::uint32_t deadline_slot = 0;  // see deadline_index: in its heap at slot - 1, or 0: in its list
  phase state = phase::waiting_room;
  std::uint8_t priority = 0;   // its level: 0 is the highest
  bool is_run = false;         // a run of coalesced callers (see below)
  bool streamed = false;       // submit_stream()'s: served alone, never in a batch
  clock::time_point accepted;  // when the key took it: its latency counts from here
  clock::time_point deadline;  // time_point::max(): never
  hook queue_hook;             // in its level's queue, or among its level's callers waiting for room
  hook deadline_hook;          // in deadline_index's list of the key's outstanding requests
  union {
    worker_record* worker = nullptr;  // the worker it was handed to (in_flight)
    request_base* run;                // an attached caller's: the run it waits for
  };

  // Coalescing (PoolConfig's coalesce_key). Identical requests share one
  // *run*: a request_entry of its own that holds the Request, is queued and
  // handled like any request, and answers the callers attached to it. Each
  // caller is a request of its own (its handler, deadline, cancellation),
  // outstanding in the key's queue, with phase `attached`.
  struct run_info;
  /// What a run's callers share; only a run (is_run) has one.
  virtual run_info& coalesced() noexcept { std::terminate(); }

  key_queue* queue = nullptr;  // its key's, set before the request is published
  std::uint64_t probe = 0;     // the half-open breaker epoch it probes; 0: not a probe

  friend void intrusive_ptr_add_ref(request_base* r) noexcept { r->refs_.fetch_add(1, std::memory_order_relaxed); }
  friend void intrusive_ptr_release(request_base* r) noexcept {
    if (r->refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) r->destroy();
  }

 protected:
  virtual ~request_base();

  /// Destroys the request and frees its memory, as it was allocated.
  virtual void destroy() noexcept { delete this; }
};

using request_ptr = boost::intrusive_ptr<request_base>;

/// Whether `e` is a system_error of `operation_aborted`: a cancellation.
inline bool is_operation_aborted(const std::exception_ptr& e) {
  try {
    if (e) std::rethrow_exception(e);
  } catch (const boost::system::system_error& error) {
    return error.code() == asio::error::operation_aborted;
  } catch (...) {
  }
  return false;
}

using request_list =
    boost::intrusive::list<request_base,
                           boost::intrusive::member_hook<request_base, request_base::hook, &request_base::queue_hook>,
                           boost::intrusive::constant_time_size<true>>;
using deadline_list = boost::intrusive::list<
    request_base, boost::intrusive::member_hook<request_base, request_base::hook, &request_base::deadline_hook>,
    boost::intrusive::constant_time_size<false>>;

/// A run's own: what its callers share (see request_base, "Coalescing").
struct request_base::run_info {
  std::string identity;  // what coalesce_key named
  request_list callers;  // attached and not done, first come first (their queue_hook: they are in no queue)
  request_base* next_retired = nullptr;  // ended, its map reference to drop after the lock (key_queue::retired_)
};

inline request_base::~request_base() = default;

/// A request as a worker sees it: the Request to serve and the way to answer.
template <class Chunk>
class stream_state;

template <class Request, class Response>
class request_entry : public request_base {
 public:
  explicit request_entry(Request&& r) : request(std::move(r)) {}

  /// The stream a worker writes its answer to, for submit_stream's requests.
  virtual stream_state<Response>* stream() noexcept { return nullptr; }

  /// Hands the answer (a Response, or the handler's exception) to the caller.
  virtual void complete(std::exception_ptr error, Response response) = 0;

  /// The executor the caller's handler runs on, when it is an
  /// any_io_executor (the default of every Asio token): answers to such
  /// callers may be delivered in batches (see answer_batch). Null otherwise.
  virtual const executor* batch_executor() const noexcept { return nullptr; }

  /// Calls the caller's handler now; the caller runs on batch_executor()
  /// already. `self` is the batch's reference to this request: request_op
  /// drops it before the handler runs, so that the handler's next request can
  /// reuse the memory when that was the last reference (as Asio frees an
  /// operation before its upcall).
  virtual void invoke(std::exception_ptr error, Response response,
                      [[maybe_unused]] boost::intrusive_ptr<request_entry> self) {
    complete(std::move(error), std::move(response));  // self keeps *this alive until then
  }

  void fail(error_code ec, std::exception_ptr error) final {
    complete(error ? std::move(error) : std::make_exception_ptr(boost::system::system_error(ec)), Response{});
  }

  Request request;
};

/// Where a request's caller is completed, and the work that keeps the
/// caller's execution context running until then. When the caller runs on
/// the pool's own execution context, the key's request timer, armed while
/// any request of the key is outstanding, already keeps that context
/// running: the request then counts no work of its own, which on an
/// any_io_executor would cost a type-erased prefer() and two atomic
/// operations per request.
template <class Handler>
class request_work {
 public:
  request_work(const Handler& handler, const executor& pool_executor, const asio::execution_context*)
      : guard_(make_handler_work(handler, pool_executor)) {}

  auto get_executor() const noexcept { return guard_.get_executor(); }

 private:
  handler_work<Handler> guard_;
};

template <class Handler>
requires std::is_same_v<asio::associated_executor_t<Handler, executor>, executor>
class request_work<Handler> {
 public:
  request_work(const Handler& handler, const executor& pool_executor, const asio::execution_context* pool_context)
      : executor_(asio::get_associated_executor(handler, pool_executor)) {
    if (&asio::query(executor_, asio::execution::context) != pool_context) {
      executor_ = asio::prefer(executor_, asio::execution::outstanding_work.tracked);
    }
  }

  const executor& get_executor() const noexcept { return executor_; }

 private:
  executor executor_;
};

/// The caller's handler, `void(std::exception_ptr, Response)`, and the work it keeps alive.
///
/// Allocated with Asio's recycling allocator, as Asio allocates its own
/// operations, and freed before the handler runs when nothing else holds it
/// (invoke): a caller's next request then takes the memory its last one freed,
/// on the same thread, instead of operator new freeing on one thread what
/// another allocated (with glibc, contending for that thread's arena). Not
/// with the handler's associated allocator: a request may outlive its upcall
/// (a worker or the timer may still hold it), and Asio's contract for that
/// allocator is that its memory is freed before the upcall.
template <class Request, class Response, class Handler>
class request_op final : public request_entry<Request, Response> {
  using allocator_type = asio::recycling_allocator<request_op>;

 public:
  static boost::intrusive_ptr<request_op> create(Request&& r, Handler&& handler, const executor& pool_executor,
                                                 const asio::execution_context* pool_context) {
    allocator_type allocator;
    request_op* memory = allocator.allocate(1);
    try {
      return boost::intrusive_ptr<request_op>(
          new (memory) request_op(std::move(r), std::move(handler), pool_executor, pool_context));
    } catch (...) {
      allocator.deallocate(memory, 1);
      throw;
    }
  }

  request_op(Request&& r, Handler&& handler, const executor& pool_executor, const asio::execution_context* pool_context)
      : request_entry<Request, Response>(std::move(r)),
        work_(handler, pool_executor, pool_context),
        handler_(std::move(handler)) {}

  Handler& handler() noexcept { return handler_; }

  void complete(std::exception_ptr error, Response response) override {
    auto work = std::move(work_);
    asio::defer(work.get_executor(), asio::append(std::move(handler_), std::move(error), std::move(response)));
  }

  const executor* batch_executor() const noexcept override {
    if constexpr (std::is_same_v<asio::associated_executor_t<Handler, executor>, executor>) {
      return &work_.get_executor();
    } else {
      return nullptr;
    }
  }

  void invoke(std::exception_ptr error, Response response,
              boost::intrusive_ptr<request_entry<Request, Response>> self) override {
    auto work = std::move(work_);
    auto handler = std::move(handler_);
    self.reset();  // may destroy *this: touch no member below
    std::move(handler)(std::move(error), std::move(response));
  }

  void abandon() noexcept override {
    [[maybe_unused]] auto work = std::move(work_);
    [[maybe_unused]] auto handler = std::move(handler_);
  }

 private:
  void destroy() noexcept override {
    this->~request_op();
    allocator_type().deallocate(this, 1);
  }

  request_work<Handler> work_;
  Handler handler_;
};

/// A streamed request: its caller reads a stream_state instead of waiting
/// for one completion, so every outcome the pool decides (a timeout, a
/// refusal, a cancellation, a failed wave) ends the stream in-band.
/// A run of coalesced requests: holds the Request that its first caller
/// gave, is queued and handled as one request, and has no handler of its
/// own: the worker answers each caller attached to it (see key_queue).
template <class Request, class Response>
class coalesced_run final : public request_entry<Request, Response> {
 public:
  explicit coalesced_run(Request&& r) : request_entry<Request, Response>(std::move(r)) { this->is_run = true; }

  /// Makes the run for `first`'s identity, taking its Request.
  static request_ptr make(request_base& first) {
    auto& entry = static_cast<request_entry<Request, Response>&>(first);
    return request_ptr(new coalesced_run(std::move(entry.request)));
  }

  request_base::run_info& coalesced() noexcept override { return info_; }
  void complete(std::exception_ptr, Response) override {}  // its callers are answered, not the run
  void abandon() noexcept override {}

 private:
  request_base::run_info info_;
};

template <class Request, class Response, class StreamState>
class stream_request_op final : public request_entry<Request, Response> {
 public:
  stream_request_op(Request&& r, std::shared_ptr<StreamState> stream_state)
      : request_entry<Request, Response>(std::move(r)), state_(std::move(stream_state)) {
    this->streamed = true;
  }

  StreamState* stream() noexcept override { return state_.get(); }

  void complete(std::exception_ptr error, Response) override { state_->end(std::move(error)); }

  void abandon() noexcept override { state_->abandon(); }

 private:
  std::shared_ptr<StreamState> state_;
};

}  // namespace coropool::detail
