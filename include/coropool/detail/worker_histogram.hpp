#pragma once

#include "coropool/stats.hpp"

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>

namespace coropool::detail {

/// A LatencyHistogram that one thread at a time writes and any thread reads:
/// a worker's, recorded by its own coroutine outside its key's lock, read by
/// Pool::stats(). With one writer a record is relaxed loads and stores, no
/// read-modify-write, on lines that stay in that worker's core: kept under
/// the key's lock, two histograms shared by every worker of the key cost
/// `coropool_bench roundtrip` about 5 % (benchmarks/README.md, W1). A reader
/// racing a record may see it in its bucket and not yet in the sum, or the
/// reverse: `count` (the buckets' sum) and `sum_us` may be a record apart.
class worker_histogram {
 public:
  void record(double us) noexcept {
    auto& bucket = buckets_[latency_bucket(us, LatencyHistogram::bucket_count)];
    bucket.store(bucket.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    sum_us_.store(sum_us_.load(std::memory_order_relaxed) + us, std::memory_order_relaxed);
  }

  /// Adds what was recorded so far to `h`.
  void add_to(LatencyHistogram& h) const noexcept {
    for (std::size_t i = 0; i < LatencyHistogram::bucket_count; ++i) {
      const std::uint64_t n = buckets_[i].load(std::memory_order_relaxed);
      h.buckets[i] += n;
      h.count += n;
    }
    h.sum_us += sum_us_.load(std::memory_order_relaxed);
  }

 private:
  std::array<std::atomic<std::uint64_t>, LatencyHistogram::bucket_count> buckets_{};
  std::atomic<double> sum_us_{0};
};

}  // namespace coropool::detail
