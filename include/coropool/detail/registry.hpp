#pragma once

#include "coropool/detail/asio.hpp"

#include <boost/asio/execution_context.hpp>

#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace coropool::detail {

/// What a pool parks outside Asio's own queues (idle workers, queued requests)
/// must go when its execution context is destroyed, as Asio's pending
/// operations do: a parked worker's coroutine owns the pool that owns the
/// parked worker, a cycle only the context's shutdown can break.
class abandonable {
 public:
  abandonable() = default;
  abandonable(const abandonable&) = delete;
  abandonable& operator=(const abandonable&) = delete;
  virtual void abandon() noexcept = 0;

 protected:
  ~abandonable() = default;
};

/// The execution-context service that knows the context's pools.
class pool_registry final : public asio::execution_context::service {
 public:
  using key_type = pool_registry;
  static inline asio::execution_context::id id;

  explicit pool_registry(asio::execution_context& context) : asio::execution_context::service(context) {}

  template <class Pool>
  void add(const std::shared_ptr<Pool>& pool) {
    std::lock_guard lock(mutex_);
    pools_[pool.get()] = pool;
  }

  void remove(abandonable* pool) {
    std::lock_guard lock(mutex_);
    pools_.erase(pool);
  }

 private:
  void shutdown() override {
    std::vector<std::shared_ptr<abandonable>> pools;
    {
      std::lock_guard lock(mutex_);
      for (auto& [raw, weak] : pools_)
        if (auto p = weak.lock()) pools.push_back(std::move(p));
    }
    // Outside the lock: a pool destroyed by its abandoned coroutines removes itself.
    for (auto& p : pools) p->abandon();
  }

  std::mutex mutex_;
  std::unordered_map<abandonable*, std::weak_ptr<abandonable>> pools_;
};

}  // namespace coropool::detail
