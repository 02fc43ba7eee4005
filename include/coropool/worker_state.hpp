#pragma once

/// @file
/// `coropool::worker_state`: the life of one worker, and which changes of
/// state are legal.

#include <array>
#include <atomic>
#include <cassert>
#include <cstddef>
#include <string_view>

namespace coropool {

/// Where a worker is in its life.
///
/// @code
/// Spawning -> Loading -> Ready <-> Processing
///                  |       ^
///                  v       v
///               Failed    Idle
///                  |
///                  v            any live state -> Evicting -> Dead
///                 Dead
/// @endcode
///
/// A worker is *live* from Spawning to Idle. Idle workers (parked with an
/// empty queue) are the only ones idle eviction and the memory governor may
/// choose; Loading and Processing workers are never evicted by policy, only
/// stopped by shutdown, eviction of their whole key, or death.
enum class worker_state : unsigned char {
  spawning,    ///< Created; its coroutine has not started.
  loading,     ///< Running `load`.
  ready,       ///< Loaded, between requests.
  processing,  ///< Running `handle` (or a stream handler).
  idle,        ///< Parked: its key's queue is empty.
  evicting,    ///< Told to stop; leaves when what it is doing ends.
  failed,      ///< Its load failed.
  dead,        ///< Its coroutine has ended. Final.
};

/// The number of worker states.
inline constexpr std::size_t worker_state_count = 8;

/// The state's name, lower case, as `to_prometheus` writes it.
///
/// @param s The state.
/// @return Its enumerator's name: `"spawning"`, `"loading"`, ... `"dead"`.
constexpr std::string_view to_string(worker_state s) noexcept {
  constexpr std::array<std::string_view, worker_state_count> names{"spawning", "loading",  "ready",  "processing",
                                                                   "idle",     "evicting", "failed", "dead"};
  return names[static_cast<std::size_t>(s)];
}

/// Whether a worker may go from `from` to `to`: the one place the state
/// machine is written down.
///
/// @param from The state the worker is in.
/// @param to   The state it would go to.
/// @return True for the arrows of worker_state's diagram; false for every
/// other pair, staying in the same state included.
///
/// @code
/// static_assert(coropool::is_legal_transition(coropool::worker_state::idle, coropool::worker_state::ready));
/// static_assert(!coropool::is_legal_transition(coropool::worker_state::dead, coropool::worker_state::loading));
/// @endcode
constexpr bool is_legal_transition(worker_state from, worker_state to) noexcept {
  using enum worker_state;
  switch (from) {
    case spawning:
      return to == loading || to == evicting;
    case loading:
      return to == ready || to == failed || to == evicting;
    case ready:
      return to == processing || to == idle || to == evicting;
    case processing:
      return to == ready || to == evicting;
    case idle:
      return to == ready || to == evicting;
    case evicting:
    case failed:
      return to == dead;
    case dead:
      return false;
  }
  return false;
}

namespace detail {

/// A worker's state, changed from the worker's strand, the pool's strand and
/// submitters under the key's lock; read by anyone (stats, pongs).
class worker_state_cell {
 public:
  worker_state load() const noexcept { return state_.load(std::memory_order_acquire); }

  /// Moves a live worker (Spawning to Idle) to Evicting; false, quietly,
  /// when it is evicting, failed or dead already.
  bool begin_eviction() noexcept {
    worker_state from = state_.load(std::memory_order_relaxed);
    do {
      if (from == worker_state::evicting || from == worker_state::failed || from == worker_state::dead) return false;
    } while (!state_.compare_exchange_weak(from, worker_state::evicting, std::memory_order_acq_rel,
                                           std::memory_order_relaxed));
    return true;
  }

  /// Moves to `to` if that is legal from the current state. A worker that was
  /// told to stop meanwhile (Evicting) stays there: that race is expected,
  /// and refused quietly. Any other illegal change is a bug: it asserts in
  /// debug builds and is refused in release builds.
  bool transition(worker_state to) noexcept {
    worker_state from = state_.load(std::memory_order_relaxed);
    do {
      if (!is_legal_transition(from, to)) {
        assert((from == worker_state::evicting || from == worker_state::dead) &&
               "coropool: illegal worker state transition");
        return false;
      }
    } while (!state_.compare_exchange_weak(from, to, std::memory_order_acq_rel, std::memory_order_relaxed));
    return true;
  }

 private:
  std::atomic<worker_state> state_{worker_state::spawning};
};

}  // namespace detail
}  // namespace coropool
