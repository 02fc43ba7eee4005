// The server's own metrics: HTTP answers by endpoint and status, and their
// latency, rendered in the Prometheus text format next to the pool's.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <utility>

namespace model_server {

class HttpMetrics {
 public:
  /// Counts one answer. Called before the answer is written, so that a client
  /// that has read an answer finds it counted in /metrics.
  void record(const std::string& endpoint, unsigned status, double seconds) {
    std::lock_guard lock(mutex_);
    ++answers_[{endpoint, status}];
    auto& h = durations_[endpoint];
    ++h.count;
    h.sum += seconds;
    for (std::size_t i = 0; i < bounds.size(); ++i) {
      if (seconds <= bounds[i]) ++h.buckets[i];
    }
  }

  std::atomic<std::int64_t> connections{0};  ///< Connections open now.

  /// The exposition: `model_server_http_requests_total{endpoint,code}`,
  /// `model_server_http_request_duration_seconds{endpoint}` and
  /// `model_server_http_connections`.
  std::string render() const {
    std::ostringstream out;
    std::lock_guard lock(mutex_);
    out << "# HELP model_server_http_requests_total HTTP requests answered, by endpoint and status code.\n"
        << "# TYPE model_server_http_requests_total counter\n";
    for (const auto& [label, n] : answers_) {
      out << "model_server_http_requests_total{endpoint=\"" << label.first << "\",code=\"" << label.second << "\"} "
          << n << "\n";
    }
    out << "# HELP model_server_http_request_duration_seconds From a request's last byte read to its answer ready.\n"
        << "# TYPE model_server_http_request_duration_seconds histogram\n";
    for (const auto& [endpoint, h] : durations_) {
      for (std::size_t i = 0; i < bounds.size(); ++i) {
        out << "model_server_http_request_duration_seconds_bucket{endpoint=\"" << endpoint << "\",le=\"" << bounds[i]
            << "\"} " << h.buckets[i] << "\n";
      }
      out << "model_server_http_request_duration_seconds_bucket{endpoint=\"" << endpoint << "\",le=\"+Inf\"} "
          << h.count << "\n"
          << "model_server_http_request_duration_seconds_sum{endpoint=\"" << endpoint << "\"} " << h.sum << "\n"
          << "model_server_http_request_duration_seconds_count{endpoint=\"" << endpoint << "\"} " << h.count << "\n";
    }
    out << "# HELP model_server_http_connections HTTP connections open.\n"
        << "# TYPE model_server_http_connections gauge\n"
        << "model_server_http_connections " << connections.load() << "\n";
    return out.str();
  }

 private:
  static constexpr std::array<double, 14> bounds = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                    0.1,    0.25,  0.5,    1,     2.5,  5,     10};
  struct Histogram {
    std::array<std::uint64_t, bounds.size()> buckets{};
    std::uint64_t count = 0;
    double sum = 0;
  };
  mutable std::mutex mutex_;  // held for a few additions; never across I/O
  std::map<std::pair<std::string, unsigned>, std::uint64_t> answers_;
  std::map<std::string, Histogram> durations_;
};

}  // namespace model_server
