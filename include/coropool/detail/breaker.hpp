#pragma once

#include "coropool/detail/asio.hpp"
#include "coropool/stats.hpp"

#include <cstddef>
#include <cstdint>

namespace coropool::detail {

/// A key's circuit breaker. Guarded by its key queue's lock; it never runs user
/// code (the pool asks the user's predicate before it takes the lock).
///
/// closed --failure_threshold consecutive failures--> open --open_duration-->
/// half-open: `probes` requests pass; as many successes close it, a failure
/// opens it again. A probe that ends without an outcome (cancelled, timed out
/// in the queue) gives its slot back.
class circuit_breaker {
 public:
  circuit_breaker(std::size_t failure_threshold, clock::duration open_duration, std::size_t probes)
      : threshold_(failure_threshold), open_duration_(open_duration), probes_(probes) {}

  breaker_state state() const noexcept { return state_; }

  /// The state at `now`, without changing it: an open breaker whose time is
  /// up reads as half-open, as the next request will find it.
  breaker_state state_at(clock::time_point now) const noexcept {
    return state_ == breaker_state::open && now >= open_until_ ? breaker_state::half_open : state_;
  }

  /// Whether the breaker refuses everything at `now` (waiters are refused then).
  bool refuses(clock::time_point now) {
    if (state_ == breaker_state::open && now >= open_until_) enter_half_open();
    return state_ == breaker_state::open || (state_ == breaker_state::half_open && admitted_ >= probes_);
  }

  /// Admits a request at `now`, or refuses it. `probe` tells which half-open
  /// epoch the request probes (0: not a probe).
  bool admit(clock::time_point now, std::uint64_t& probe) {
    probe = 0;
    if (refuses(now)) return false;
    if (state_ == breaker_state::half_open) {
      ++admitted_;
      probe = epoch_;
    }
    return true;
  }

  /// A probe of `epoch` ended without an outcome.
  void release_probe(std::uint64_t epoch) {
    if (state_ == breaker_state::half_open && epoch == epoch_ && admitted_ > 0) --admitted_;
  }

  void record(bool failure, clock::time_point now) {
    if (threshold_ == 0) return;  // disabled
    if (!failure) {
      // Stored only when it changes: a success is the common case, and a
      // store would dirty this line under the key's lock on every answer,
      // which the next critical section on the other core then has to fetch.
      if (failures_ != 0) failures_ = 0;
      if (state_ == breaker_state::half_open && ++successes_ >= probes_) {
        state_ = breaker_state::closed;
        ++epoch_;
      }
      return;
    }
    if (state_ == breaker_state::open) return;  // a late outcome of a request admitted before
    if (state_ == breaker_state::half_open || ++failures_ >= threshold_) open(now);
  }

  std::uint64_t times_opened() const noexcept { return opened_; }

 private:
  void open(clock::time_point now) {
    state_ = breaker_state::open;
    open_until_ = deadline_after(now, open_duration_);  // never, for open_duration = max()
    failures_ = 0;
    ++epoch_;
    ++opened_;
  }

  void enter_half_open() {
    state_ = breaker_state::half_open;
    admitted_ = 0;
    successes_ = 0;
    ++epoch_;
  }

  const std::size_t threshold_;
  const clock::duration open_duration_;
  const std::size_t probes_;
  breaker_state state_ = breaker_state::closed;
  std::size_t failures_ = 0;
  std::size_t admitted_ = 0;
  std::size_t successes_ = 0;
  std::uint64_t epoch_ = 1;
  std::uint64_t opened_ = 0;
  clock::time_point open_until_;
};

}  // namespace coropool::detail
