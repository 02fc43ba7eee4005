#pragma once

/// @file
/// Dynamic batching: the result type of a batch handler, and the wrapper that
/// gives a Pool its batch handler (see PoolConfig::batching).

#include <exception>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <variant>

namespace coropool {

/// One item's result in a batch: a value, or that item's own exception.
///
/// Implicitly constructible from either, so that a batch handler can write
/// `results.push_back(value)` and `results.push_back(std::current_exception())`.
///
/// @code
/// std::vector<coropool::outcome<std::string>> results;
/// for (auto& text : batch) {
///   if (text.empty()) results.push_back(std::make_exception_ptr(std::invalid_argument("empty input")));
///   else results.push_back(model.classify(text));
/// }
/// @endcode
template <class T>
class outcome {
 public:
  /// A value.
  ///
  /// @param value The item's result.
  outcome(T value) : state_(std::in_place_index<0>, std::move(value)) {}  // NOLINT(google-explicit-constructor)

  /// An exception: only this item's caller gets it.
  ///
  /// @param error The exception; a null one is a bad argument: that item's
  ///              caller gets `std::invalid_argument` instead.
  outcome(std::exception_ptr error)  // NOLINT(google-explicit-constructor)
      : state_(
            std::in_place_index<1>,
            error ? std::move(error)
                  : std::make_exception_ptr(std::invalid_argument("coropool: a batch result held a null exception"))) {}

  /// Whether it holds a value.
  ///
  /// @return True for a value, false for an exception.
  bool has_value() const noexcept { return state_.index() == 0; }

  /// The value; only when has_value().
  ///
  /// @return The item's result, to read or move from.
  T& value() & noexcept { return *std::get_if<0>(&state_); }

  /// The exception; null when it holds a value.
  ///
  /// @return The item's exception, or null.
  std::exception_ptr error() const noexcept {
    const auto* e = std::get_if<1>(&state_);
    return e ? *e : nullptr;
  }

 private:
  std::variant<T, std::exception_ptr> state_;
};

/// A batch handler, and optionally the per-request handler beside it: what
/// a Pool takes in place of its `handle` (see batched()).
template <class BatchHandle, class Handle = void>
struct batch_handler {
  BatchHandle batch;  ///< `(Model&, std::span<Request>) -> asio::awaitable<std::vector<outcome<Response>>>`
  Handle single;      ///< `(Model&, Request) -> asio::awaitable<Response>`: serves a batch of one
};

/// A batch handler alone: a batch of one is a span of one.
template <class BatchHandle>
struct batch_handler<BatchHandle, void> {
  BatchHandle batch;  ///< `(Model&, std::span<Request>) -> asio::awaitable<std::vector<outcome<Response>>>`
};

namespace detail {
template <class T>
struct is_batch_handler : std::false_type {};
template <class BatchHandle, class Handle>
struct is_batch_handler<batch_handler<BatchHandle, Handle>> : std::true_type {};
}  // namespace detail

/// Makes a Pool batch: pass the result where a Pool takes its `handle`.
///
/// A worker of a key whose BatchConfig::max_batch_size is above 1 calls
/// `batch` with up to that many requests and answers each caller with its
/// item's outcome. Callers do not change: submit() is the same call.
///
/// @param batch `(Model&, std::span<Request>) -> asio::awaitable<std::vector<outcome<Response>>>`:
///              one result per request, in order. The requests are the
///              handler's to move from.
/// @return What a Pool's constructor takes as its `handle`.
template <class BatchHandle>
batch_handler<std::decay_t<BatchHandle>> batched(BatchHandle&& batch) {
  return {std::forward<BatchHandle>(batch)};
}

/// Makes a Pool batch, with a per-request handler beside the batch handler:
/// `handle` serves every batch of one (a lone request, a key whose
/// max_batch_size is 1), `batch` every larger batch.
///
/// @param batch  As above.
/// @param handle `(Model&, Request) -> asio::awaitable<Response>`.
/// @return What a Pool's constructor takes as its `handle`.
template <class BatchHandle, class Handle>
batch_handler<std::decay_t<BatchHandle>, std::decay_t<Handle>> batched(BatchHandle&& batch, Handle&& handle) {
  return {std::forward<BatchHandle>(batch), std::forward<Handle>(handle)};
}

}  // namespace coropool
