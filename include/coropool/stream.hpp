#pragma once

/// @file
/// `coropool::Stream` and `coropool::StreamWriter`: a streamed response, chunk by chunk.

#include "coropool/detail/asio.hpp"
#include "coropool/detail/stream_state.hpp"
#include "coropool/error.hpp"

#include <cstddef>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>

namespace coropool {

/// The worker's end of a stream: what a stream handler writes its chunks to.
///
/// @par Thread Safety
/// One writer: the worker's coroutine.
template <class Chunk>
class StreamWriter {
 public:
  explicit StreamWriter(std::shared_ptr<detail::stream_state<Chunk>> state) : state_(std::move(state)) {}

  /// Writes one chunk, waiting while the reader's buffer is full (a slow
  /// reader slows the writer; nothing is buffered beyond
  /// `PoolConfig::stream_buffer` chunks).
  ///
  /// @throws boost::system::system_error with `asio::error::operation_aborted`
  /// when the reader has left (destroyed its Stream) or the pool stopped the
  /// worker: let it propagate, and the worker is free for the next request.
  asio::awaitable<void> write(Chunk chunk) {
    return asio::async_initiate<const asio::use_awaitable_t<>&, void(error_code)>(
        write_initiation{state_.get()}, asio::use_awaitable, std::move(chunk));
  }

  /// Whether the reader has left; a generator may check it between costly steps.
  bool reader_gone() const { return state_->reader_gone(); }

 private:
  // A raw pointer: GCC 12 may destroy a co_await expression's temporary twice.
  struct write_initiation {
    detail::stream_state<Chunk>* state;

    template <class Handler>
    void operator()(Handler&& handler, Chunk chunk) const {
      auto ex = asio::get_associated_executor(handler);
      state->write(std::move(chunk), std::forward<Handler>(handler), detail::executor(ex));
    }
  };

  std::shared_ptr<detail::stream_state<Chunk>> state_;
};

/// The caller's end of a streamed response (see `Pool::submit_stream`):
/// read it chunk by chunk until its end or its error.
///
/// Destroying it (or calling close()) leaves the stream: a request still
/// queued is withdrawn and never handled, and a worker writing to it is
/// stopped at its next write and freed.
///
/// @par Thread Safety
/// One reader at a time.
///
/// @code
/// auto stream = pool.submit_stream("llm", prompt);
/// while (auto token = co_await stream.next()) std::cout << *token;
/// @endcode
template <class Chunk>
class Stream {
 public:
  Stream(std::shared_ptr<detail::stream_state<Chunk>> state, std::function<void()> withdraw)
      : state_(std::move(state)), withdraw_(std::move(withdraw)) {}

  Stream(Stream&&) noexcept = default;
  Stream& operator=(Stream&& other) noexcept {
    if (this != &other) {
      close();
      state_ = std::move(other.state_);
      withdraw_ = std::move(other.withdraw_);
    }
    return *this;
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  ~Stream() { close(); }

  /// Reads the next chunk.
  ///
  /// @par Completion Signature
  /// @code void(std::exception_ptr, std::optional<Chunk>) @endcode
  /// The next chunk; nullopt once the stream has ended; or, after the last
  /// chunk, the stream's error: the stream handler's exception, unchanged,
  /// or a `system_error` with a coropool::errc (`request_timeout` while it
  /// waited for a worker, `shutting_down`, `queue_full`...) or, after close(),
  /// `asio::error::operation_aborted`.
  template <class CompletionToken = asio::default_completion_token_t<detail::executor>>
  auto async_next(CompletionToken&& token = asio::default_completion_token_t<detail::executor>()) {
    return asio::async_initiate<CompletionToken, void(std::exception_ptr, std::optional<Chunk>)>(
        read_initiation{state_.get()}, token);
  }

  /// Reads the next chunk: nullopt at the end; throws the stream's error.
  asio::awaitable<std::optional<Chunk>> next() { return async_next(asio::use_awaitable); }

  /// Leaves the stream (see the class description); next() then fails with
  /// `operation_aborted`. Called by the destructor.
  void close() {
    if (!state_) return;
    state_->leave();
    if (withdraw_) std::exchange(withdraw_, nullptr)();
  }

 private:
  struct read_initiation {
    detail::stream_state<Chunk>* state;

    template <class Handler>
    void operator()(Handler&& handler) const {
      auto ex = asio::get_associated_executor(handler, asio::system_executor());
      state->read(std::forward<Handler>(handler), detail::executor(ex));
    }
  };

  std::shared_ptr<detail::stream_state<Chunk>> state_;
  std::function<void()> withdraw_;
};

}  // namespace coropool
