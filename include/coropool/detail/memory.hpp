#pragma once

#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <utility>

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

}  // namespace coropool::detail
