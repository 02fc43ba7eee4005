#pragma once

// What the orchestrator works with, on the pool's strand: users' commands
// (scale, evict, restart), workers' pongs, and the maintenance tick.
//
// A command is dispatched to the pool's strand and handled there
// (commands.ipp); it completes exactly once: when its work is done, or with
// shutting_down once shutdown has begun. A ping is a function posted to the
// worker's strand, where it runs beside the worker's coroutine (so it is
// answered while a handler is suspended, not while one blocks the thread);
// its pong is posted back to the pool's strand. (Asio channels carried both
// once; a function object costs no channel, variant or coroutine, which is
// most of what including coropool cost a build: see benchmarks/README.md, "Compile cost".)
//
// The maintenance tick is one timer at the earlier of the next health sweep
// and the next maintenance sweep, armed while the pool has workers.

#include "coropool/detail/asio.hpp"
#include "coropool/detail/completion.hpp"
#include "coropool/detail/worker_record.hpp"
#include "coropool/error.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>

namespace coropool::detail {

/// A worker's answer to a ping: the health sweep reads its last progress.
struct pong {
  std::shared_ptr<worker_record> worker;
  clock::time_point last_progress;  // when it last loaded, or answered or started a request
};

/// A user's command, and the handler it completes.
struct command {
  enum class kind : std::uint8_t { scale, evict, restart };
  kind what;
  std::string key;
  std::size_t workers = 0;  // scale's target
  std::shared_ptr<completion<error_code>> done;
};

/// The maintenance tick's timer and the instants of the next sweeps; pool strand.
class maintenance_tick {
 public:
  maintenance_tick(const strand_type& strand, clock::duration health_interval, clock::duration maintenance_interval)
      : timer_(strand), health_interval_(health_interval), maintenance_interval_(maintenance_interval) {}

  /// Arms the timer at the next sweep unless it is armed; `on_tick()` runs
  /// then. The sweeps' clock starts at the first arming after reset().
  template <class Handler>
  void arm(Handler&& on_tick) {
    if (armed_) return;
    const auto now = clock::now();
    if (next_health_ == unset) next_health_ = deadline_after(now, health_interval_);
    if (next_maintenance_ == unset) next_maintenance_ = deadline_after(now, maintenance_interval_);
    const auto next = std::min(next_health_, next_maintenance_);
    if (is_never(next)) return;  // both intervals are max(): never
    armed_ = true;
    timer_.expires_at(next);
    timer_.async_wait(wait_task([this, h = std::forward<Handler>(on_tick)](error_code ec) mutable {
      armed_ = false;  // `h` holds the pool, which owns *this
      if (!ec) h();
    }));
  }

  /// Which sweeps are due at `now`; moves their next instants on.
  struct due_sweeps {
    bool health = false;
    bool maintenance = false;
  };
  due_sweeps take_due(clock::time_point now) {
    due_sweeps due;
    if (now >= next_health_) {
      next_health_ = deadline_after(now, health_interval_);
      due.health = true;
    }
    if (now >= next_maintenance_) {
      next_maintenance_ = deadline_after(now, maintenance_interval_);
      due.maintenance = true;
    }
    return due;
  }

  /// The pool is idle: the next worker restarts the sweeps' clock.
  void reset() { next_health_ = next_maintenance_ = unset; }

  void cancel() { timer_.cancel(); }

 private:
  static constexpr clock::time_point unset = clock::time_point::min();
  timer_type timer_;
  const clock::duration health_interval_;
  const clock::duration maintenance_interval_;
  bool armed_ = false;
  clock::time_point next_health_ = unset;
  clock::time_point next_maintenance_ = unset;
};

}  // namespace coropool::detail
