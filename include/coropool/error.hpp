#pragma once

/// @file
/// coropool's error codes (`coropool::errc`, with their own `error_category`) and
/// `coropool::spawn_error`, the exception that carries a failed load's cause.

#include <boost/system/error_code.hpp>
#include <boost/system/system_error.hpp>

#include <exception>
#include <string>
#include <type_traits>

namespace coropool {

/// Errors a coropool operation completes with.
///
/// Cancellation follows Asio: an operation cancelled through its cancellation
/// slot completes with `boost::asio::error::operation_aborted`, so coropool
/// defines no error of its own for it.
enum class errc {
  invalid_argument = 1,  ///< An argument was out of range: empty key, non-positive timeout.
  spawn_failed,          ///< Every load of the key's spawn wave failed; see spawn_error::cause().
  spawn_timeout,         ///< No worker of the key was ready before the caller's deadline.
  request_timeout,       ///< A request was not answered within `request_timeout`.
  queue_full,            ///< The key's request queue was full and the caller asked not to wait.
  circuit_open,          ///< The key's circuit breaker is open.
  memory_exhausted,      ///< The memory budget had no room for another worker.
  worker_lost,           ///< The worker serving the request died.
  shutting_down,         ///< The pool is shutting down or has shut down.
};

namespace detail {

class error_category final : public boost::system::error_category {
 public:
  // A fixed id lets categories from different shared objects compare equal.
  constexpr error_category() noexcept : boost::system::error_category(0xC0C0'0001'7E57'0001ULL) {}

  const char* name() const noexcept override { return "coropool"; }

  std::string message(int ev) const override {
    switch (static_cast<errc>(ev)) {
      case errc::invalid_argument:
        return "invalid argument";
      case errc::spawn_failed:
        return "spawning workers failed";
      case errc::spawn_timeout:
        return "timed out waiting for workers";
      case errc::request_timeout:
        return "request timed out";
      case errc::queue_full:
        return "request queue is full";
      case errc::circuit_open:
        return "circuit breaker is open";
      case errc::memory_exhausted:
        return "memory budget exhausted";
      case errc::worker_lost:
        return "worker lost";
      case errc::shutting_down:
        return "pool is shutting down";
    }
    return "unknown coropool error";
  }
};

}  // namespace detail

/// The category of `coropool::errc`, named `"coropool"`.
///
/// @return The one instance. Its fixed id makes it compare equal across
/// shared objects that each hold a copy of this header's code.
inline const boost::system::error_category& error_category() noexcept {
  static const detail::error_category category;
  return category;
}

/// Makes an `error_code` of `coropool::error_category()`; it also lets an
/// `errc` convert to `boost::system::error_code` and compare with one.
///
/// @param e The error.
/// @return `{static_cast<int>(e), coropool::error_category()}`.
inline boost::system::error_code make_error_code(errc e) noexcept { return {static_cast<int>(e), error_category()}; }

/// Thrown by the awaitable conveniences when a spawn wave failed: a
/// `system_error` with `errc::spawn_failed` whose `what()` names the key and
/// the loader's message, and whose `cause()` is the loader's own exception.
///
/// The pool makes one per failed wave and hands the same exception to every
/// caller that waited on the wave.
///
/// @code
/// try {
///   co_await pool.wait_for_workers("bert");
/// } catch (const coropool::spawn_error& e) {
///   std::cerr << e.what() << '\n';      // key 'bert': <the loader's message>
///   std::rethrow_exception(e.cause());  // the loader's own exception, unchanged
/// }
/// @endcode
class spawn_error : public boost::system::system_error {
 public:
  /// Makes the error of `key`'s failed wave.
  ///
  /// @param key   The key whose loads failed; named in `what()`.
  /// @param cause The exception of the load that failed last; may be null.
  spawn_error(const std::string& key, std::exception_ptr cause)
      : boost::system::system_error(make_error_code(errc::spawn_failed), "key '" + key + "': " + describe(cause)),
        cause_(std::move(cause)) {}

  /// The exception the loader threw.
  ///
  /// @return The cause given at construction: the loader's exception, or
  /// null when none was recorded.
  const std::exception_ptr& cause() const noexcept { return cause_; }

  /// The message of an exception, or a placeholder for one that is not a `std::exception`.
  ///
  /// @param e The exception; may be null.
  /// @return `e`'s `what()`; `"unknown exception"` when `e` is not a
  /// `std::exception`; `"no cause recorded"` when `e` is null.
  static std::string describe(const std::exception_ptr& e) {
    if (!e) return "no cause recorded";
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      return ex.what();
    } catch (...) {
      return "unknown exception";
    }
  }

 private:
  std::exception_ptr cause_;
};

}  // namespace coropool

namespace boost::system {
template <>
struct is_error_code_enum<coropool::errc> : std::true_type {};
}  // namespace boost::system
