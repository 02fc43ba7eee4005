#pragma once

#include "coropool/detail/asio.hpp"
#include "coropool/detail/waiter.hpp"
#include "coropool/error.hpp"

#include <boost/intrusive/list.hpp>
#include <boost/smart_ptr/intrusive_ptr.hpp>

#include <atomic>
#include <cstdint>
#include <exception>
#include <memory>
#include <utility>

namespace coropool::detail {

struct key_state;

/// One submitted request, type-erased over the pool's Request and Response
/// and the caller's handler. Its phase and list links are guarded by its
/// key's mutex; whoever moves it to `done` under that mutex, and only they,
/// completes the caller: that is the exactly-once rule.
class request_base {
 public:
  enum class phase : std::uint8_t { waiting_room, queued, in_flight, done };

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

  // Guarded by the key's mutex.
  phase state = phase::waiting_room;
  clock::time_point deadline;
  hook queue_hook;     // in the key's queue, or among the callers waiting for room
  hook deadline_hook;  // among the key's outstanding requests, by deadline

  key_state* key = nullptr;  // set before the request is published

  friend void intrusive_ptr_add_ref(request_base* r) noexcept { r->refs_.fetch_add(1, std::memory_order_relaxed); }
  friend void intrusive_ptr_release(request_base* r) noexcept {
    if (r->refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete r;
  }

 protected:
  virtual ~request_base() = default;

 private:
  std::atomic<std::uint32_t> refs_{0};
};

using request_ptr = boost::intrusive_ptr<request_base>;

using request_list =
    boost::intrusive::list<request_base,
                           boost::intrusive::member_hook<request_base, request_base::hook, &request_base::queue_hook>,
                           boost::intrusive::constant_time_size<true>>;
using deadline_list = boost::intrusive::list<
    request_base, boost::intrusive::member_hook<request_base, request_base::hook, &request_base::deadline_hook>,
    boost::intrusive::constant_time_size<false>>;

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

  void fail(error_code ec, std::exception_ptr error) final {
    complete(error ? std::move(error) : std::make_exception_ptr(boost::system::system_error(ec)), Response{});
  }

  Request request;
};

/// The caller's handler, `void(std::exception_ptr, Response)`, and the work it keeps alive.
template <class Request, class Response, class Handler>
class request_op final : public request_entry<Request, Response> {
 public:
  request_op(Request&& r, Handler&& handler, const executor& fallback)
      : request_entry<Request, Response>(std::move(r)),
        work_(make_handler_work(handler, fallback)),
        handler_(std::move(handler)) {}

  Handler& handler() noexcept { return handler_; }

  void complete(std::exception_ptr error, Response response) override {
    defer_completion(std::move(work_), std::move(handler_), std::move(error), std::move(response));
  }

  void abandon() noexcept override {
    [[maybe_unused]] auto work = std::move(work_);
    [[maybe_unused]] auto handler = std::move(handler_);
  }

 private:
  handler_work<Handler> work_;
  Handler handler_;
};

/// A streamed request: its caller reads a stream_state instead of waiting
/// for one completion, so every outcome the pool decides (a timeout, a
/// refusal, a cancellation, a failed wave) ends the stream in-band.
template <class Request, class Response, class StreamState>
class stream_request_op final : public request_entry<Request, Response> {
 public:
  stream_request_op(Request&& r, std::shared_ptr<StreamState> stream_state)
      : request_entry<Request, Response>(std::move(r)), state_(std::move(stream_state)) {}

  StreamState* stream() noexcept override { return state_.get(); }

  void complete(std::exception_ptr error, Response) override { state_->end(std::move(error)); }

  void abandon() noexcept override { state_->abandon(); }

 private:
  std::shared_ptr<StreamState> state_;
};

}  // namespace coropool::detail
