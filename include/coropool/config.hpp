#pragma once

/// @file
/// `coropool::PoolConfig`: the knobs of a pool, with the defaults of the system it replaces.

#include <chrono>
#include <cstddef>
#include <memory>

namespace spdlog {
class logger;
}

namespace coropool {

/// Configuration of a `coropool::Pool`. Every field has a default; set only what differs.
///
/// @code
/// coropool::PoolConfig cfg;
/// cfg.cold_start_workers = 1;
/// cfg.spawn_timeout = std::chrono::seconds(10);
/// @endcode
struct PoolConfig {
  /// Workers a cold key's spawn wave loads at once (at least 1).
  std::size_t cold_start_workers = 2;

  /// The deadline `wait_for_workers(key)` uses when the caller gives none (positive).
  std::chrono::steady_clock::duration spawn_timeout = std::chrono::seconds(30);

  /// Where the pool logs spawns, load failures and timeouts. Null means
  /// `spdlog::default_logger()` as it is when the pool is constructed.
  std::shared_ptr<spdlog::logger> logger;
};

}  // namespace coropool
