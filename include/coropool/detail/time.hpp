#pragma once

// The pool's clock, and the one place where a deadline is computed.

#include <chrono>
#include <type_traits>

// COROPOOL_TESTING_CLOCK_HEADER names a header that declares
// `coropool::testing::clock`, which then replaces the clock of every deadline
// and timer of the pool. It exists for tests that run a pool in virtual time
// (tests/sim/manual_clock.hpp). Every translation unit of a program must see
// the same definition, or none.
#ifdef COROPOOL_TESTING_CLOCK_HEADER
#include COROPOOL_TESTING_CLOCK_HEADER
namespace coropool::detail {
using clock = ::coropool::testing::clock;
}
#else
namespace coropool::detail {
using clock = std::chrono::steady_clock;
}
#endif

namespace coropool::detail {

static_assert(std::is_same_v<clock::duration, std::chrono::steady_clock::duration>,
              "PoolConfig's durations are steady_clock's: a testing clock must use the same duration");

/// `from + d`, saturated at the clock's range: any duration up to
/// `duration::max()` is defined, and a deadline past the range is
/// `time_point::max()`, which the pool reads as never.
constexpr clock::time_point deadline_after(clock::time_point from, clock::duration d) noexcept {
  if (d > clock::duration::zero() && from > clock::time_point::max() - d) return clock::time_point::max();
  if (d < clock::duration::zero() && from < clock::time_point::min() - d) return clock::time_point::min();
  return from + d;
}

/// Whether a deadline is never reached (see deadline_after). The pool arms no
/// timer that would only wait for it, except a key's request timer, which
/// also stands for its callers' work (see request_work).
constexpr bool is_never(clock::time_point deadline) noexcept { return deadline == clock::time_point::max(); }

}  // namespace coropool::detail
