#pragma once

#include "coropool/detail/asio.hpp"
#include "coropool/detail/completion.hpp"
#include "coropool/detail/registry.hpp"

#include <cstddef>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>

namespace coropool::detail {

/// The bounded buffer between one writer (a worker) and one reader (the
/// caller), on any threads. The end of a stream, or its error, is kept apart
/// from the chunks and delivered after the last of them: it never waits for
/// room and never discards a buffered chunk.
template <class Chunk>
class stream_state final : public abandonable, public std::enable_shared_from_this<stream_state<Chunk>> {
 public:
  explicit stream_state(std::size_t capacity) : capacity_(capacity) {}

  ~stream_state() {
    if (registry_) registry_->remove(this);
  }

  /// A parked reader's coroutine owns the Stream that owns this state: the
  /// execution context's destruction must break that cycle (see abandonable).
  void register_with(pool_registry* registry) {
    if (!registry) return;
    registry_ = registry;
    registry->add(this->shared_from_this());
  }

  void abandon() noexcept override {
    std::unique_ptr<completion<error_code>> writer;
    std::unique_ptr<completion<std::exception_ptr, std::optional<Chunk>>> reader;
    {
      std::lock_guard lock(mutex_);
      registry_ = nullptr;
      writer = std::move(writer_);
      reader = std::move(reader_);
    }
  }

  /// Completes `void(error_code)`: success once the chunk is buffered (or
  /// handed to a waiting reader); `operation_aborted` when the reader left,
  /// the stream already ended, or the write was cancelled.
  template <class Handler>
  void write(Chunk&& chunk, Handler&& handler, const executor& fallback) {
    auto op =
        std::make_unique<completion_op<std::decay_t<Handler>, error_code>>(std::forward<Handler>(handler), fallback);
    std::unique_ptr<completion<std::exception_ptr, std::optional<Chunk>>> reader;
    error_code result;
    {
      std::lock_guard lock(mutex_);
      if (ended_ || reader_gone_ || writer_) {
        result = asio::error::operation_aborted;
      } else if (reader_) {
        reader = std::move(reader_);  // the buffer is empty whenever a reader waits
      } else if (buffer_.size() < capacity_) {
        buffer_.push_back(std::move(chunk));
      } else {
        pending_.emplace(std::move(chunk));
        assign_write_cancellation(*op);
        writer_ = std::move(op);
        return;
      }
    }
    if (reader) reader->complete(nullptr, std::optional<Chunk>(std::move(chunk)));
    op->complete(result);
  }

  /// Completes `void(std::exception_ptr, std::optional<Chunk>)`: the next
  /// chunk; nullopt at the end; the stream's error after its last chunk.
  template <class Handler>
  void read(Handler&& handler, const executor& fallback) {
    auto op = std::make_unique<completion_op<std::decay_t<Handler>, std::exception_ptr, std::optional<Chunk>>>(
        std::forward<Handler>(handler), fallback);
    std::unique_ptr<completion<error_code>> writer;
    std::optional<Chunk> chunk;
    std::exception_ptr error;
    {
      std::lock_guard lock(mutex_);
      if (!buffer_.empty()) {
        chunk.emplace(std::move(buffer_.front()));
        buffer_.pop_front();
        if (writer_) {  // room now: the waiting writer's chunk joins the buffer
          buffer_.push_back(std::move(*pending_));
          pending_.reset();
          writer = std::move(writer_);
        }
      } else if (reader_gone_ || reader_) {  // after close(): aborted, even once the writer has ended
        error = std::make_exception_ptr(boost::system::system_error(asio::error::operation_aborted));
      } else if (ended_) {
        error = error_;
      } else {
        reader_ = std::move(op);
        return;
      }
    }
    if (writer) writer->complete(error_code());
    op->complete(std::move(error), std::move(chunk));
  }

  /// Ends the stream, once: with `error`, or normally when it is null. A
  /// waiting writer is stopped; the reader gets the buffered chunks first.
  /// Returns false when the stream had already ended.
  bool end(std::exception_ptr error) {
    std::unique_ptr<completion<error_code>> writer;
    std::unique_ptr<completion<std::exception_ptr, std::optional<Chunk>>> reader;
    {
      std::lock_guard lock(mutex_);
      if (ended_) return false;
      ended_ = true;
      error_ = error;
      writer = std::move(writer_);
      pending_.reset();
      if (buffer_.empty()) reader = std::move(reader_);
    }
    if (writer) writer->complete(asio::error::operation_aborted);
    if (reader) reader->complete(std::move(error), std::nullopt);
    return true;
  }

  /// The reader left: buffered chunks are dropped, the writer is stopped,
  /// and a read still waiting completes with `operation_aborted` at once (as
  /// an Asio I/O object's close() completes its pending operations).
  void leave() {
    std::unique_ptr<completion<error_code>> writer;
    std::unique_ptr<completion<std::exception_ptr, std::optional<Chunk>>> reader;
    {
      std::lock_guard lock(mutex_);
      reader_gone_ = true;
      buffer_.clear();
      pending_.reset();
      writer = std::move(writer_);
      reader = std::move(reader_);
    }
    if (writer) writer->complete(asio::error::operation_aborted);
    if (reader) {
      reader->complete(std::make_exception_ptr(boost::system::system_error(asio::error::operation_aborted)),
                       std::nullopt);
    }
  }

  bool reader_gone() const {
    std::lock_guard lock(mutex_);
    return reader_gone_;
  }

 private:
  // A worker's coroutine is cancelled (shutdown's deadline) while it waits for room.
  template <class Op>
  void assign_write_cancellation(Op& op) {
    auto slot = asio::get_associated_cancellation_slot(op.handler());
    if (!slot.is_connected()) return;
    // A weak reference: a slot keeps its handler until its owner's next operation replaces it.
    slot.assign([weak = this->weak_from_this()](asio::cancellation_type) {
      if (auto self = weak.lock()) self->stop_writer();
    });
  }

  void stop_writer() {
    std::unique_ptr<completion<error_code>> writer;
    {
      std::lock_guard lock(mutex_);
      writer = std::move(writer_);
      pending_.reset();
    }
    if (writer) writer->complete(asio::error::operation_aborted);
  }

  mutable std::mutex mutex_;
  const std::size_t capacity_;
  pool_registry* registry_ = nullptr;
  std::deque<Chunk> buffer_;
  std::optional<Chunk> pending_;  // the waiting writer's chunk
  std::unique_ptr<completion<error_code>> writer_;
  std::unique_ptr<completion<std::exception_ptr, std::optional<Chunk>>> reader_;
  bool ended_ = false;
  bool reader_gone_ = false;
  std::exception_ptr error_;
};

}  // namespace coropool::detail
