#pragma once

#include <atomic>
#include <cstdint>

namespace coropool::detail {

/// A mutex for critical sections of a few list operations, taken by callers
/// and workers on different threads at once. It spins briefly before it
/// sleeps: on a contended std::mutex each collision costs a futex sleep and
/// a wake, far longer than the section itself. The sleep is the standard
/// futex wait (std::atomic::wait), so a holder that is preempted is waited
/// for without burning the core. Never held across a suspension.
class spin_mutex {
 public:
  void lock() noexcept {
    if (try_lock()) return;
    for (int i = 0; i < spin_limit; ++i) {
      pause();
      if (state_.load(std::memory_order_relaxed) == unlocked && try_lock()) return;
    }
    // Contended: mark it so that the holder's unlock wakes us.
    while (state_.exchange(contended, std::memory_order_acquire) != unlocked) {
      state_.wait(contended, std::memory_order_relaxed);
    }
  }

  bool try_lock() noexcept {
    std::uint32_t expected = unlocked;
    return state_.compare_exchange_strong(expected, locked, std::memory_order_acquire, std::memory_order_relaxed);
  }

  void unlock() noexcept {
    if (state_.exchange(unlocked, std::memory_order_release) == contended) state_.notify_one();
  }

 private:
  static constexpr std::uint32_t unlocked = 0;
  static constexpr std::uint32_t locked = 1;
  static constexpr std::uint32_t contended = 2;
  static constexpr int spin_limit = 100;

  // The builtin behind _mm_pause: <immintrin.h> would cost every user's
  // translation unit about 100 MiB of compiler memory for this one instruction.
  static void pause() noexcept {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    __builtin_ia32_pause();
#endif
  }

  std::atomic<std::uint32_t> state_{unlocked};
};

}  // namespace coropool::detail
