#pragma once

/// @file
/// `coropool::PoolStats`: a snapshot of a pool's counters and gauges, and
/// `coropool::to_prometheus`, which renders it in the Prometheus text format.

#include "coropool/worker_state.hpp"

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>

namespace coropool {

/// A key's circuit breaker state.
enum class breaker_state : unsigned char { closed, open, half_open };

/// The state's name, lower case.
constexpr std::string_view to_string(breaker_state s) noexcept {
  switch (s) {
    case breaker_state::closed:
      return "closed";
    case breaker_state::open:
      return "open";
    case breaker_state::half_open:
      return "half_open";
  }
  return "unknown";
}

/// Request latencies (submission to answer) in power-of-two buckets of
/// microseconds: bucket i counts latencies in [2^(i-1), 2^i) µs (bucket 0:
/// below 1 µs; the last: everything longer).
struct LatencyHistogram {
  static constexpr std::size_t bucket_count = 32;
  std::array<std::uint64_t, bucket_count> buckets{};
  std::uint64_t count = 0;
  double sum_us = 0;

  /// The bucket's upper bound in microseconds.
  static constexpr double upper_bound_us(std::size_t bucket) noexcept {
    return static_cast<double>(std::uint64_t{1} << bucket);
  }

  void record(double us) noexcept {
    const auto whole = us < 1 ? std::uint64_t{0} : static_cast<std::uint64_t>(us);
    std::size_t bucket = static_cast<std::size_t>(std::bit_width(whole));
    if (bucket >= bucket_count) bucket = bucket_count - 1;
    ++buckets[bucket];
    ++count;
    sum_us += us;
  }

  /// The upper bound of the bucket holding quantile `q` (0 < q <= 1); 0 when empty.
  double quantile_us(double q) const noexcept {
    if (count == 0) return 0;
    const auto rank = static_cast<std::uint64_t>(q * static_cast<double>(count) + 0.999999);
    std::uint64_t seen = 0;
    for (std::size_t i = 0; i < bucket_count; ++i) {
      seen += buckets[i];
      if (seen >= rank) return upper_bound_us(i);
    }
    return upper_bound_us(bucket_count - 1);
  }

  LatencyHistogram& operator+=(const LatencyHistogram& other) noexcept {
    for (std::size_t i = 0; i < bucket_count; ++i) buckets[i] += other.buckets[i];
    count += other.count;
    sum_us += other.sum_us;
    return *this;
  }
};

/// One key's counters (since the pool was constructed) and gauges (now).
struct KeyStats {
  std::array<std::size_t, worker_state_count> workers{};  ///< Workers by worker_state.
  std::size_t queued = 0;                                 ///< Requests in the queue.
  std::size_t waiting_for_room = 0;                       ///< Callers held back by a full queue.
  std::size_t waiters = 0;                                ///< Callers in wait_for_workers.
  std::size_t in_flight = 0;                              ///< Requests being handled.
  std::uint64_t submitted = 0;                            ///< Requests accepted into the key.
  std::uint64_t completed = 0;                            ///< Answered with a Response.
  std::uint64_t failed = 0;     ///< Answered with the handler's exception, or a pool error not counted below.
  std::uint64_t timed_out = 0;  ///< Completed with errc::request_timeout.
  std::uint64_t cancelled = 0;  ///< Cancelled by their callers.
  std::uint64_t rejected = 0;   ///< Refused: queue_full, circuit_open, shutting_down.
  std::uint64_t loads = 0;      ///< Loads started.
  std::uint64_t load_failures = 0;
  std::uint64_t evictions = 0;  ///< Workers stopped by idle eviction, evict() or the memory governor.
  std::uint64_t restarts = 0;   ///< Workers replaced by restart().
  std::uint64_t deaths = 0;     ///< Workers declared dead, or whose coroutine died.
  breaker_state breaker = breaker_state::closed;
  std::uint64_t breaker_opened = 0;   ///< Times the breaker opened.
  std::uint64_t memory_reserved = 0;  ///< Bytes reserved by the key's workers.
  LatencyHistogram latency;

  /// The number of workers in state `s`.
  std::size_t workers_in(worker_state s) const noexcept { return workers[static_cast<std::size_t>(s)]; }
};

/// A pool's snapshot: every key, and the pool-wide figures.
struct PoolStats {
  std::map<std::string, KeyStats> keys;
  std::uint64_t rejected = 0;         ///< Refused before reaching a key (empty key, shutdown).
  std::uint64_t memory_budget = 0;    ///< PoolConfig::memory_budget, in bytes.
  std::uint64_t memory_reserved = 0;  ///< Bytes reserved by all workers.

  /// Every key's figures summed.
  KeyStats total() const {
    KeyStats t;
    for (const auto& [name, k] : keys) {
      for (std::size_t i = 0; i < worker_state_count; ++i) t.workers[i] += k.workers[i];
      t.queued += k.queued;
      t.waiting_for_room += k.waiting_for_room;
      t.waiters += k.waiters;
      t.in_flight += k.in_flight;
      t.submitted += k.submitted;
      t.completed += k.completed;
      t.failed += k.failed;
      t.timed_out += k.timed_out;
      t.cancelled += k.cancelled;
      t.rejected += k.rejected;
      t.loads += k.loads;
      t.load_failures += k.load_failures;
      t.evictions += k.evictions;
      t.restarts += k.restarts;
      t.deaths += k.deaths;
      t.breaker_opened += k.breaker_opened;
      t.memory_reserved += k.memory_reserved;
      t.latency += k.latency;
    }
    t.rejected += rejected;
    return t;
  }
};

namespace detail {

/// A label value as the Prometheus text format wants it: \, " and newline escaped.
inline std::string escape_label(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

inline std::string format_number(double v) {
  std::string s = std::to_string(v);
  // std::to_string writes six decimals; trim them for integers.
  const auto dot = s.find('.');
  if (dot != std::string::npos) {
    s.erase(s.find_last_not_of('0') + 1);
    if (s.back() == '.') s.pop_back();
  }
  return s;
}

}  // namespace detail

/// Renders `stats` in the Prometheus text exposition format (version 0.0.4):
/// a `# HELP` and a `# TYPE` line per metric, counters named `_total`,
/// per-key series labelled `key="..."` (escaped), the latency histogram with
/// cumulative `le` buckets in seconds.
inline std::string to_prometheus(const PoolStats& stats, std::string_view prefix = "coropool") {
  std::string out;
  const std::string p(prefix);
  auto header = [&](std::string_view name, std::string_view type, std::string_view help) {
    out += "# HELP " + p + "_" + std::string(name) + " " + std::string(help) + "\n";
    out += "# TYPE " + p + "_" + std::string(name) + " " + std::string(type) + "\n";
  };
  auto sample = [&](std::string_view name, const std::string& labels, double value) {
    out += p + "_" + std::string(name);
    if (!labels.empty()) out += "{" + labels + "}";
    out += " " + detail::format_number(value) + "\n";
  };
  auto key_label = [](const std::string& key) { return "key=\"" + detail::escape_label(key) + "\""; };
  auto per_key = [&](std::string_view name, std::string_view type, std::string_view help, auto field) {
    header(name, type, help);
    for (const auto& [key, k] : stats.keys) sample(name, key_label(key), static_cast<double>(field(k)));
  };

  header("workers", "gauge", "Workers by state.");
  for (const auto& [key, k] : stats.keys) {
    for (std::size_t i = 0; i < worker_state_count; ++i) {
      sample("workers", key_label(key) + ",state=\"" + std::string(to_string(static_cast<worker_state>(i))) + "\"",
             static_cast<double>(k.workers[i]));
    }
  }
  per_key("queued_requests", "gauge", "Requests waiting in the key's queue.",
          [](const KeyStats& k) { return k.queued; });
  per_key("waiting_for_room", "gauge", "Callers held back by a full queue.",
          [](const KeyStats& k) { return k.waiting_for_room; });
  per_key("waiters", "gauge", "Callers waiting for workers.", [](const KeyStats& k) { return k.waiters; });
  per_key("in_flight_requests", "gauge", "Requests being handled.", [](const KeyStats& k) { return k.in_flight; });
  per_key("requests_submitted_total", "counter", "Requests accepted.", [](const KeyStats& k) { return k.submitted; });
  per_key("requests_completed_total", "counter", "Requests answered with a response.",
          [](const KeyStats& k) { return k.completed; });
  per_key("requests_failed_total", "counter", "Requests answered with an error.",
          [](const KeyStats& k) { return k.failed; });
  per_key("requests_timed_out_total", "counter", "Requests that ran past request_timeout.",
          [](const KeyStats& k) { return k.timed_out; });
  per_key("requests_cancelled_total", "counter", "Requests cancelled by their callers.",
          [](const KeyStats& k) { return k.cancelled; });
  per_key("requests_rejected_total", "counter", "Requests refused by a key.",
          [](const KeyStats& k) { return k.rejected; });
  per_key("loads_total", "counter", "Model loads started.", [](const KeyStats& k) { return k.loads; });
  per_key("load_failures_total", "counter", "Model loads that failed.",
          [](const KeyStats& k) { return k.load_failures; });
  per_key("evictions_total", "counter", "Workers evicted.", [](const KeyStats& k) { return k.evictions; });
  per_key("restarts_total", "counter", "Workers replaced by restart.", [](const KeyStats& k) { return k.restarts; });
  per_key("worker_deaths_total", "counter", "Workers declared dead.", [](const KeyStats& k) { return k.deaths; });
  header("breaker_state", "gauge", "Circuit breaker state: 1 for the current one.");
  for (const auto& [key, k] : stats.keys) {
    for (auto s : {breaker_state::closed, breaker_state::open, breaker_state::half_open}) {
      sample("breaker_state", key_label(key) + ",state=\"" + std::string(to_string(s)) + "\"", k.breaker == s ? 1 : 0);
    }
  }
  per_key("breaker_opened_total", "counter", "Times the circuit breaker opened.",
          [](const KeyStats& k) { return k.breaker_opened; });
  per_key("memory_reserved_bytes", "gauge", "Bytes reserved by the key's workers.",
          [](const KeyStats& k) { return k.memory_reserved; });
  header("memory_budget_bytes", "gauge", "The pool's memory budget.");
  sample("memory_budget_bytes", "", static_cast<double>(stats.memory_budget));
  header("requests_refused_total", "counter", "Requests refused before reaching a key.");
  sample("requests_refused_total", "", static_cast<double>(stats.rejected));

  header("request_latency_seconds", "histogram", "Submission to answer.");
  for (const auto& [key, k] : stats.keys) {
    std::uint64_t cumulative = 0;
    for (std::size_t i = 0; i + 1 < LatencyHistogram::bucket_count; ++i) {  // the last bucket is +Inf's
      cumulative += k.latency.buckets[i];
      sample("request_latency_seconds_bucket",
             key_label(key) + ",le=\"" + detail::format_number(LatencyHistogram::upper_bound_us(i) / 1e6) + "\"",
             static_cast<double>(cumulative));
    }
    sample("request_latency_seconds_bucket", key_label(key) + ",le=\"+Inf\"", static_cast<double>(k.latency.count));
    sample("request_latency_seconds_sum", key_label(key), k.latency.sum_us / 1e6);
    sample("request_latency_seconds_count", key_label(key), static_cast<double>(k.latency.count));
  }
  return out;
}

}  // namespace coropool
