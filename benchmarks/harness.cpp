#include "harness.hpp"

#include <sys/resource.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

namespace coropool_bench {

int io_threads() {
  static const int threads = [] {
    const char* value = std::getenv("COROPOOL_BENCH_THREADS");
    return value ? std::max(1, std::atoi(value)) : 2;
  }();
  return threads;
}

Row::Row(std::string_view bench, std::string_view impl, int threads) {
  head_.append("\"bench\":\"").append(bench).append("\",\"impl\":\"").append(impl).append("\",\"threads\":");
  head_.append(std::to_string(threads));
}

Row& Row::param(std::string_view key, long long value) {
  if (!params_.empty()) params_.push_back(',');
  params_.append("\"").append(key).append("\":").append(std::to_string(value));
  return *this;
}

Row& Row::metric(std::string_view key, double value, int decimals) {
  char number[64];
  std::snprintf(number, sizeof number, "%.*f", decimals, value);
  metrics_.append(",\"").append(key).append("\":").append(number);
  return *this;
}

void Row::write() const {
  std::printf("{%s,\"params\":{%s}%s}\n", head_.c_str(), params_.c_str(), metrics_.c_str());
  std::fflush(stdout);
}

Percentiles percentiles(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  auto at = [&](double q) { return values[static_cast<std::size_t>(q * static_cast<double>(values.size() - 1))]; };
  return {at(0.50), at(0.99), values.back()};
}

double cpu_seconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& tv) {
    return static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) / 1e6;
  };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

}  // namespace coropool_bench
