#pragma once

// pool_core: construction, and the map of keys.

#include "coropool/detail/pool_core.hpp"

#include <spdlog/spdlog.h>

#include <boost/asio/execution/context.hpp>
#include <boost/asio/query.hpp>

#include <algorithm>
#include <thread>

namespace coropool::detail {

COROPOOL_DECL pool_core::pool_core(executor ex, PoolConfig config, worker_body body)
    : executor_(std::move(ex)),
      context_(asio::query(executor_, asio::execution::context)),
      strand_(asio::make_strand(executor_)),
      config_(std::move(config)),
      log_(config_.logger ? config_.logger : spdlog::default_logger()),
      body_(std::move(body)),
      memory_(config_.memory_budget, config_.on_memory_change),
      tick_(strand_, config_.health_interval, config_.maintenance_interval),
      shutdown_timer_(strand_) {
  if (config_.cold_start_workers == 0 || config_.max_workers_per_key < config_.cold_start_workers ||
      config_.queue_capacity == 0 || config_.stream_buffer == 0 || config_.spawn_timeout <= clock::duration::zero() ||
      config_.request_timeout <= clock::duration::zero() || config_.min_workers_per_key > config_.max_workers_per_key ||
      config_.health_interval <= clock::duration::zero() || config_.health_timeout < config_.health_interval ||
      config_.idle_timeout <= clock::duration::zero() || config_.maintenance_interval <= clock::duration::zero() ||
      config_.open_duration <= clock::duration::zero() || config_.half_open_probes == 0 ||
      config_.max_request_timeout < config_.request_timeout || config_.priority_weights.empty() ||
      config_.priority_weights.size() > 16 || !batch_config_valid(config_.batching) ||
      std::any_of(config_.priority_weights.begin(), config_.priority_weights.end(),
                  [](unsigned w) { return w == 0 || w > 1024; }) ||
      std::find(config_.warm_keys.begin(), config_.warm_keys.end(), std::string()) != config_.warm_keys.end()) {
    throw boost::system::system_error(make_error_code(errc::invalid_argument), "coropool::PoolConfig");
  }
  if (config_.compute_executor) {
    compute_executor_ = *config_.compute_executor;
  } else {
    const std::size_t n = config_.compute_threads ? config_.compute_threads : std::thread::hardware_concurrency();
    compute_pool_.emplace(std::max<std::size_t>(n, 1));
    compute_executor_ = compute_pool_->get_executor();
  }
}

COROPOOL_DECL std::shared_ptr<pool_core> pool_core::create(executor ex, PoolConfig config, worker_body body) {
  auto core = std::make_shared<pool_core>(ex, std::move(config), std::move(body));
  auto& registry = asio::use_service<pool_registry>(asio::query(ex, asio::execution::context));
  registry.add(core);
  core->registry_.store(&registry, std::memory_order_release);
  if (!core->config_.warm_keys.empty()) {
    asio::dispatch(core->strand_, task([core] {
                     for (const auto& key : core->config_.warm_keys) {
                       key_state& k = core->key_for(key);
                       if (core->stopping()) return;
                       core->ensure_spawning(k);
                       core->refill(k);
                     }
                   }));
  }
  return core;
}

COROPOOL_DECL pool_core::~pool_core() {
  if (auto* registry = registry_.load(std::memory_order_acquire)) registry->remove(this);
  // The owned compute pool joins its threads here. Every worker has finished
  // by now, and with them every offload of theirs: the threads are idle.
}

COROPOOL_DECL key_state* pool_core::find_key(const std::string& name) const {
  std::lock_guard lock(keys_mutex_);
  auto it = keys_.find(name);
  return it == keys_.end() ? nullptr : it->second.get();
}

/// The key named `name`, made on first use; any thread. A key made once
/// shutdown has begun is born closed: shutdown raises stopping_ under
/// keys_mutex_ before it closes the keys it finds, so a submit racing it to
/// a new key is refused with shutting_down either way.
COROPOOL_DECL key_state& pool_core::key_for(const std::string& name) {
  std::lock_guard lock(keys_mutex_);
  auto& slot = keys_[name];
  if (!slot) {
    slot = std::make_shared<key_state>(name, executor_, config_, weak_from_this(), log_.get());
    if (stopping_.load(std::memory_order_relaxed)) slot->queue.close();
  }
  return *slot;
}

/// Every key, for the strand's sweeps: keys_ grows under its mutex from any thread.
COROPOOL_DECL std::vector<key_state*> pool_core::all_keys() const {
  std::lock_guard lock(keys_mutex_);
  std::vector<key_state*> keys;
  keys.reserve(keys_.size());
  for (auto& [name, k] : keys_) keys.push_back(k.get());
  return keys;
}

}  // namespace coropool::detail
