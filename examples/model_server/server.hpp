// The model server: Open Inference Protocol over HTTP/1.1 (Boost.Beast), fastText
// models served by coropool pools. main.cpp fills ServerOptions from the command line.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace model_server {

struct ServerOptions {
  std::string address = "127.0.0.1";
  unsigned short port = 8000;                  // 0: the system picks one (printed, and written to port_file)
  std::string port_file;                       // written once listening, for scripts
  std::filesystem::path model_dir = "models";  // {model_dir}/{name}.bin
  unsigned threads = 1;                        // io threads
  bool io_per_core = false;                    // one io_context, pool and acceptor per io thread
  std::size_t compute_threads = 0;             // 0: one per hardware thread
  std::size_t workers = 1;                     // a cold model's first wave (per core)
  std::size_t max_workers = 2;                 // per model (per core)
  std::size_t queue_capacity = 64;             // per model (per core)
  std::chrono::microseconds request_timeout = std::chrono::seconds(10);
  std::chrono::microseconds max_request_timeout = std::chrono::seconds(60);
  std::size_t max_batch_size = 32;
  std::chrono::microseconds max_batch_delay{0};
  std::uint64_t memory_budget = 0;  // bytes; 0: the pool's default (80 % of RAM)
  std::vector<std::string> warm;    // models loaded at start
  std::chrono::microseconds idle_timeout = std::chrono::seconds(300);
  std::chrono::microseconds drain_grace{0};  // after a signal: not ready, still accepting
  std::chrono::microseconds drain_timeout = std::chrono::seconds(10);
  std::chrono::microseconds client_timeout = std::chrono::seconds(30);
  std::size_t max_body_bytes = 1 << 20;
  unsigned retry_after_seconds = 1;
  std::size_t failure_threshold = 5;  // the breaker
  std::chrono::microseconds open_duration = std::chrono::seconds(30);
  std::map<std::string, std::chrono::microseconds> delays;  // fault injection: a model's batches wait this long first
};

/// Serves until SIGTERM or SIGINT, then drains (see README, "The model server").
///
/// @return The process's exit code: 0 after a clean drain.
int run_server(const ServerOptions& options);

}  // namespace model_server
