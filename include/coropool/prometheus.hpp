#pragma once

/// @file
/// `coropool::to_prometheus`: a PoolStats snapshot in the Prometheus text format.

#include "coropool/stats.hpp"

#include <string>
#include <string_view>

namespace coropool {

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
///
/// Pool-wide figures have no `key` label: `<prefix>_memory_budget_bytes`, and
/// `<prefix>_requests_refused_total` for PoolStats::rejected.
///
/// @param stats  The snapshot to render.
/// @param prefix What every metric's name starts with, before an underscore.
/// @return The exposition text, one sample per line, ending in a newline:
/// what a `/metrics` endpoint serves.
///
/// @code
/// std::string body = coropool::to_prometheus(pool.stats());  // coropool_workers{key="bert",state="idle"} 2 ...
/// @endcode
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
  header("queued_requests_by_priority", "gauge", "Requests waiting in the key's queue, by priority level.");
  for (const auto& [key, k] : stats.keys) {
    for (std::size_t i = 0; i < k.queued_by_priority.size(); ++i) {
      sample("queued_requests_by_priority", key_label(key) + ",priority=\"" + std::to_string(i) + "\"",
             static_cast<double>(k.queued_by_priority[i]));
    }
  }
  per_key("waiting_for_room", "gauge", "Callers held back by a full queue.",
          [](const KeyStats& k) { return k.waiting_for_room; });
  per_key("waiters", "gauge", "Callers waiting for workers.", [](const KeyStats& k) { return k.waiters; });
  per_key("in_flight_requests", "gauge", "Requests being handled.", [](const KeyStats& k) { return k.in_flight; });
  per_key("requests_submitted_total", "counter", "Requests accepted.", [](const KeyStats& k) { return k.submitted; });
  per_key("requests_completed_total", "counter", "Requests answered with a response.",
          [](const KeyStats& k) { return k.completed; });
  per_key("requests_failed_total", "counter", "Requests answered with an error.",
          [](const KeyStats& k) { return k.failed; });
  per_key("requests_timed_out_total", "counter", "Requests that ran past their deadline.",
          [](const KeyStats& k) { return k.timed_out; });
  per_key("requests_expired_before_dispatch_total", "counter",
          "Requests whose deadline passed before a worker took them.",
          [](const KeyStats& k) { return k.expired_before_dispatch; });
  per_key("requests_expired_in_handler_total", "counter", "Requests whose deadline passed while their handler ran.",
          [](const KeyStats& k) { return k.expired_in_handler; });
  per_key("requests_held_back_total", "counter", "Requests held back by a full queue for a higher priority.",
          [](const KeyStats& k) { return k.held_back; });
  per_key("requests_coalesced_total", "counter", "Requests that joined an identical request's run.",
          [](const KeyStats& k) { return k.coalesced; });
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

  auto histogram = [&](std::string_view name, std::string_view help, auto field) {
    header(name, "histogram", help);
    const std::string n(name);
    for (const auto& [key, k] : stats.keys) {
      const LatencyHistogram& h = field(k);
      std::uint64_t cumulative = 0;
      for (std::size_t i = 0; i + 1 < LatencyHistogram::bucket_count; ++i) {  // the last bucket is +Inf's
        cumulative += h.buckets[i];
        sample(n + "_bucket",
               key_label(key) + ",le=\"" + detail::format_number(LatencyHistogram::upper_bound_us(i) / 1e6) + "\"",
               static_cast<double>(cumulative));
      }
      sample(n + "_bucket", key_label(key) + ",le=\"+Inf\"", static_cast<double>(h.count));
      sample(n + "_sum", key_label(key), h.sum_us / 1e6);
      sample(n + "_count", key_label(key), static_cast<double>(h.count));
    }
  };
  histogram("request_latency_seconds", "Submission to answer.",
            [](const KeyStats& k) -> const LatencyHistogram& { return k.latency; });
  histogram("request_queue_seconds", "Submission until a worker took the request.",
            [](const KeyStats& k) -> const LatencyHistogram& { return k.queue_time; });
  histogram("batch_wait_seconds", "How long a batch's first request waited for the batch to start.",
            [](const KeyStats& k) -> const LatencyHistogram& { return k.batch_wait; });
  per_key("batches_total", "counter", "Batches run.", [](const KeyStats& k) { return k.batches; });
  // Batch sizes in power-of-two buckets (1, 2, 4, ... 65536), from the exact counts KeyStats keeps.
  header("batch_size", "histogram", "Requests per batch run.");
  for (const auto& [key, k] : stats.keys) {
    std::uint64_t cumulative = 0, requests = 0, next = 1;
    for (std::size_t bound = 1; bound <= 65536; bound *= 2) {
      for (; next <= bound && next < k.batch_sizes.size(); ++next) {
        cumulative += k.batch_sizes[next];
        requests += next * k.batch_sizes[next];
      }
      sample("batch_size_bucket", key_label(key) + ",le=\"" + std::to_string(bound) + "\"",
             static_cast<double>(cumulative));
    }
    sample("batch_size_bucket", key_label(key) + ",le=\"+Inf\"", static_cast<double>(cumulative));
    sample("batch_size_sum", key_label(key), static_cast<double>(requests));
    sample("batch_size_count", key_label(key), static_cast<double>(cumulative));
  }
  return out;
}

}  // namespace coropool
