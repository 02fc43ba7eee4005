#pragma once

// Virtual time for a pool: a clock that moves only when the test runs the
// io_context forward, and that jumps straight to the next timer instead of
// waiting for it.
//
// Why this is sound. Built with BOOST_ASIO_DISABLE_EPOLL, Asio runs its
// select reactor, which checks its timer queues against Clock::now() every
// time it runs, and asks WaitTraits::to_wait_duration how long to block for
// the earliest timer only when its thread has nothing else to run
// (select_reactor::run with a non-zero timeout, which the scheduler passes
// only when no other handler is queued). Answering "not at all" after moving
// the clock to that timer's expiry makes the reactor find it due and run it
// next: timers fire in order of expiry, each with the clock standing at its
// expiry, and everything ready runs before time moves on. (The epoll reactor
// will not do: with timerfd, which Boost 1.81 cannot turn off, it asks for
// the wait whenever a timer is scheduled and checks timers only when the
// kernel says.) On one thread, with no I/O and no other thread touching the
// pool, a run is then a function of the program's inputs alone: the same
// input, the same run.

#ifndef BOOST_ASIO_DISABLE_EPOLL
#error "manual_clock needs BOOST_ASIO_DISABLE_EPOLL (see above)"
#endif

#include <boost/asio/basic_waitable_timer.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/wait_traits.hpp>

#include <chrono>
#include <cstddef>
#include <stdexcept>

namespace coropool::testing {

/// A steady clock whose now() the test moves (see the file's comment).
struct manual_clock {
  using duration = std::chrono::steady_clock::duration;
  using rep = duration::rep;
  using period = duration::period;
  using time_point = std::chrono::time_point<manual_clock>;
  static constexpr bool is_steady = true;

  /// Far from zero and from min(), so that no test meets a sentinel by chance.
  static constexpr time_point start{std::chrono::hours(1)};

  static time_point now() noexcept { return now_; }

  /// Moves the clock forward to `t` (never back).
  static void jump_to(time_point t) noexcept {
    if (t > now_) now_ = t;
  }

  /// `now() + d`, saturated at time_point::max().
  static time_point after(duration d) noexcept { return d >= time_point::max() - now_ ? time_point::max() : now_ + d; }

  /// Back to `start`, for the next independent run of a program.
  static void reset() noexcept { now_ = start; }

 private:
  static inline time_point now_ = start;
};

/// The pool's clock in programs built with COROPOOL_TESTING_CLOCK_HEADER naming this file.
using clock = manual_clock;

/// A timer of virtual time.
using manual_timer = boost::asio::basic_waitable_timer<manual_clock>;

/// A run of the io_context went past its budget of handlers: something spins.
struct spin_detected : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Runs `ioc` (on this thread only) until virtual time `until`: every handler
/// ready at each instant, every timer due by `until` in order of expiry. The
/// clock then stands at `until` and nothing ready is left. A sentinel timer at
/// `until` keeps a timer in Asio's queue, so the reactor always has one to
/// jump to and the thread never blocks. Throws spin_detected when more than
/// `per_instant` handlers run without the clock moving. Returns how many
/// handlers ran, the sentinel's not counted.
inline std::size_t run_until(boost::asio::io_context& ioc, manual_clock::time_point until,
                             std::size_t per_instant = 100'000) {
  std::size_t ran = 0;
  std::size_t at_this_instant = 0;
  auto instant = manual_clock::now();
  auto count = [&] {
    ++ran;
    if (manual_clock::now() != instant) {
      instant = manual_clock::now();
      at_this_instant = 0;
    }
    if (++at_this_instant > per_instant) {
      throw spin_detected("more than " + std::to_string(per_instant) + " handlers without the clock moving");
    }
  };
  bool reached = false;
  manual_timer sentinel(ioc, until);
  sentinel.async_wait([&](boost::system::error_code) { reached = true; });
  ioc.restart();
  while (!reached) {
    if (ioc.run_one()) count();
  }
  manual_clock::jump_to(until);
  while (ioc.poll_one()) count();
  return ran - 1;  // not the sentinel's own
}

/// Runs what is ready now, without moving the clock.
inline std::size_t run_ready(boost::asio::io_context& ioc) { return run_until(ioc, manual_clock::now()); }

/// Whether `ioc` has no work left at all: no handler, no timer, no operation
/// (its run() would return). Runs what is ready first.
inline bool out_of_work(boost::asio::io_context& ioc) {
  ioc.restart();
  ioc.poll();
  return ioc.stopped();
}

}  // namespace coropool::testing

/// Asio's hook for a clock's waits (see the file's comment): time jumps to
/// the earliest timer, and the reactor does not block.
template <>
struct boost::asio::wait_traits<coropool::testing::manual_clock> {
  using clock = coropool::testing::manual_clock;

  static clock::duration to_wait_duration(const clock::duration& d) {
    if (d > clock::duration::zero()) clock::jump_to(clock::after(d));
    return clock::duration::zero();
  }

  static clock::duration to_wait_duration(const clock::time_point& t) {
    clock::jump_to(t);
    return clock::duration::zero();
  }
};
