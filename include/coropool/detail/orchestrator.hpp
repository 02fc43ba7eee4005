#pragma once

// The orchestrator and the maintenance tick: the pool's two ways of looking
// after its workers, both on the pool's strand.
//
// The orchestrator is one coroutine reading an inbox of pongs (workers'
// answers to health pings) and users' commands (scale, evict, restart). It
// runs while the pool has workers or commands, and leaves rather than wait
// when it has neither: an idle pool keeps no coroutine of its own. Every
// command sent completes exactly once: by the orchestrator, or with
// shutting_down when the inbox is closed (close() completes those still in it).
//
// The maintenance tick is one timer at the earlier of the next health sweep
// and the next maintenance sweep, armed while the pool has workers.

#include "coropool/detail/asio.hpp"
#include "coropool/detail/completion.hpp"
#include "coropool/detail/worker_record.hpp"
#include "coropool/error.hpp"
#include "coropool/worker_state.hpp"

#include <boost/asio/experimental/concurrent_channel.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <variant>

namespace coropool::detail {

/// A worker's answer to a ping: what the health sweep and stats see of it.
struct pong {
  std::shared_ptr<worker_record> worker;
  worker_state state;
  std::size_t in_flight;
  std::uint64_t served;
  clock::time_point last_progress;
};

/// A user's command to the orchestrator, and the handler it completes.
struct command {
  enum class kind : std::uint8_t { scale, evict, restart };
  kind what;
  std::string key;
  std::size_t workers = 0;  // scale's target
  std::shared_ptr<completion<error_code>> done;
};

/// What the orchestrator's inbox carries. `std::monostate` only wakes it.
using orchestrator_message = std::variant<std::monostate, pong, command>;

/// The orchestrator's inbox and its coroutine. `Host` (the pool's core)
/// provides strand(), has_workers(), stopped(), on_pong() and on_command().
class orchestrator {
 public:
  using inbox_channel = asio::experimental::concurrent_channel<void(error_code, orchestrator_message)>;

  explicit orchestrator(const executor& ex) : inbox_(ex, inbox_capacity) {}

  /// Starts the coroutine unless it runs; pool strand.
  template <class Host>
  void start(const std::shared_ptr<Host>& host) {
    if (running_ || host->stopped()) return;
    running_ = true;
    asio::co_spawn(host->strand(), run(host), asio::detached);
  }

  /// Wakes the coroutine, which may then find it has nothing left to look after.
  void wake() {
    if (running_) inbox_.try_send(error_code{}, orchestrator_message{});
  }

  /// The inbox; any thread sends to it.
  inbox_channel& inbox() noexcept { return inbox_; }

  /// Completes the commands still in the inbox with shutting_down (closing
  /// the channel would discard them), then closes it.
  void close() {
    while (inbox_.try_receive([](error_code, orchestrator_message m) {
      if (auto* c = std::get_if<command>(&m)) c->done->complete(errc::shutting_down);
    })) {
    }
    inbox_.close();
  }

 private:
  template <class Host>
  static asio::awaitable<void> run(std::shared_ptr<Host> host) {
    orchestrator& self = host->orchestrator_of();
    for (;;) {
      orchestrator_message message;
      if (!self.inbox_.try_receive([&](error_code, orchestrator_message m) { message = std::move(m); })) {
        if (!host->has_workers() || host->stopped()) break;  // nothing to look after: leave rather than wait
        auto [ec, m] = co_await self.inbox_.async_receive(asio::as_tuple(asio::use_awaitable));
        if (ec) break;
        message = std::move(m);
      }
      if (auto* p = std::get_if<pong>(&message)) {
        host->on_pong(*p);
      } else if (auto* c = std::get_if<command>(&message)) {
        host->on_command(std::move(*c));
      }
    }
    self.running_ = false;
  }

  static constexpr std::size_t inbox_capacity = 1024;
  inbox_channel inbox_;
  bool running_ = false;
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
    timer_.async_wait([this, h = std::forward<Handler>(on_tick)](error_code ec) mutable {
      armed_ = false;  // `h` holds the pool, which owns *this
      if (!ec) h();
    });
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
