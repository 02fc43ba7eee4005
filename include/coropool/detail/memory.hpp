#pragma once

#include "coropool/detail/time.hpp"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

namespace coropool::detail {

/// The pool-wide byte budget. Reservations are made on the pool's strand
/// only, so a check and its reservation cannot interleave with another's.
/// Releases are made there too, when a worker ends; a reservation's
/// destructor is only the safety net, and a release only ever lowers the total.
class memory_governor {
 public:
  using observer = std::function<void(std::uint64_t reserved, std::uint64_t budget)>;

  memory_governor(std::uint64_t budget, observer watch)
      : budget_(budget ? budget : default_budget()), watch_(std::move(watch)) {}

  std::uint64_t budget() const noexcept { return budget_; }
  std::uint64_t reserved() const noexcept { return reserved_.load(std::memory_order_acquire); }

  /// Reserves `bytes` if they fit; pool strand only.
  bool try_reserve(std::uint64_t bytes) {
    const std::uint64_t now = reserved_.load(std::memory_order_acquire);
    if (bytes > budget_ || now > budget_ - bytes) return false;
    changed(reserved_.fetch_add(bytes, std::memory_order_acq_rel) + bytes);
    return true;
  }

  void release(std::uint64_t bytes) {
    if (bytes) changed(reserved_.fetch_sub(bytes, std::memory_order_acq_rel) - bytes);
  }

  /// 80 % of physical memory, read once.
  static std::uint64_t default_budget() {
    static const std::uint64_t budget = [] {
      const long pages = ::sysconf(_SC_PHYS_PAGES);
      const long page = ::sysconf(_SC_PAGE_SIZE);
      if (pages <= 0 || page <= 0) return std::uint64_t{1} << 62;  // unknown: unlimited in practice
      return static_cast<std::uint64_t>(pages) * static_cast<std::uint64_t>(page) / 5 * 4;
    }();
    return budget;
  }

 private:
  void changed(std::uint64_t total) {
    if (watch_) watch_(total, budget_);
  }

  const std::uint64_t budget_;
  const observer watch_;
  std::atomic<std::uint64_t> reserved_{0};
};

/// One worker's reservation: released exactly once, by release() or by its
/// destructor, to the governor it came from.
class memory_reservation {
 public:
  memory_reservation() = default;
  memory_reservation(std::shared_ptr<memory_governor> governor, std::uint64_t bytes)
      : governor_(std::move(governor)), bytes_(bytes) {}
  memory_reservation(const memory_reservation&) = delete;
  memory_reservation& operator=(const memory_reservation&) = delete;
  memory_reservation(memory_reservation&& other) noexcept
      : governor_(std::move(other.governor_)), bytes_(std::exchange(other.bytes_, 0)) {}
  memory_reservation& operator=(memory_reservation&& other) noexcept {
    if (this != &other) {
      release();
      governor_ = std::move(other.governor_);
      bytes_ = std::exchange(other.bytes_, 0);
    }
    return *this;
  }
  ~memory_reservation() { release(); }

  std::uint64_t bytes() const noexcept { return bytes_; }

  /// Gives the bytes back to the governor; returns how many.
  std::uint64_t release() noexcept {
    const std::uint64_t bytes = std::exchange(bytes_, 0);
    if (bytes && governor_) governor_->release(bytes);
    return bytes;
  }

 private:
  std::shared_ptr<memory_governor> governor_;
  std::uint64_t bytes_ = 0;
};

/// The memory budget as the pool's strand plans it: what is reserved (the
/// governor), what is promised to spawns waiting for room, and what workers
/// evicted for them will free when they end. Pool strand only.
///
/// A spawn that does not fit may evict idle workers of other keys, least
/// recently used first, and then waits, in order, until they have ended. A
/// spawn is never promised room that the budget cannot give once the workers
/// already leaving are gone, so waiting spawns always start eventually.
template <class Key, class Worker>
class memory_planner {
 public:
  memory_planner(std::uint64_t budget, memory_governor::observer watch)
      : governor_(std::make_shared<memory_governor>(budget, std::move(watch))) {}

  const memory_governor& governor() const noexcept { return *governor_; }

  /// Reserves `bytes` now, if they fit.
  bool try_reserve(std::uint64_t bytes, memory_reservation& reservation) {
    if (!governor_->try_reserve(bytes)) return false;
    reservation = memory_reservation(governor_, bytes);
    return true;
  }

  /// How many bytes idle workers must free, beyond what is being freed, for
  /// `bytes` more to fit once every waiting spawn has started; 0: they fit.
  std::uint64_t shortfall(std::uint64_t bytes) const {
    const std::uint64_t committed = governor_->reserved() + promised_ + bytes;
    const std::uint64_t available = governor_->budget() + freeing_;
    return committed <= available ? 0 : committed - available;
  }

  /// An idle worker that could be evicted: its bytes, and since when it is idle.
  struct candidate {
    std::shared_ptr<Worker> worker;
    clock::time_point idle_since;
    std::uint64_t bytes;
  };

  /// The least recently used candidates that free `need` bytes together;
  /// none when all of them would not. They are counted as being freed.
  std::vector<std::shared_ptr<Worker>> choose_victims(std::vector<candidate> candidates, std::uint64_t need) {
    std::sort(candidates.begin(), candidates.end(),
              [](const candidate& a, const candidate& b) { return a.idle_since < b.idle_since; });
    std::uint64_t found = 0;
    std::size_t chosen = 0;
    while (chosen < candidates.size() && found < need) found += candidates[chosen++].bytes;
    std::vector<std::shared_ptr<Worker>> victims;
    if (found < need) return victims;
    for (std::size_t i = 0; i < chosen; ++i) victims.push_back(std::move(candidates[i].worker));
    freeing_ += found;
    return victims;
  }

  /// A victim ended and released `bytes`.
  void victim_freed(std::uint64_t bytes) { freeing_ -= bytes; }

  /// A spawn of `key` waits for `bytes` to be freed.
  void promise(Key& key, std::uint64_t bytes) {
    promised_ += bytes;
    waiting_.push_back({&key, bytes});
  }

  /// Hands the waiting spawns, in order, to `start(key)`, which returns
  /// whether it started (or dropped) that spawn; stops at the first that waits on.
  template <class Start>
  void start_waiting(Start&& start) {
    while (!waiting_.empty() && start(*waiting_.front().key)) {
      promised_ -= waiting_.front().bytes;
      waiting_.pop_front();
    }
  }

 private:
  struct waiting_spawn {
    Key* key;
    std::uint64_t bytes;
  };

  std::shared_ptr<memory_governor> governor_;
  std::deque<waiting_spawn> waiting_;
  std::uint64_t promised_ = 0;  // bytes of the waiting spawns
  std::uint64_t freeing_ = 0;   // bytes the chosen victims hold until they end
};

}  // namespace coropool::detail
