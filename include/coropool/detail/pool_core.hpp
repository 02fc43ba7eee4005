#pragma once

#include "coropool/config.hpp"
#include "coropool/detail/asio.hpp"
#include "coropool/detail/waiter.hpp"
#include "coropool/error.hpp"

#include <spdlog/logger.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace coropool::detail {

struct key_state;

/// One worker coroutine's bookkeeping. `strand` is the worker's own: its
/// coroutine runs there, and so does everything that touches `stop_signal`.
/// Its key owns it; the key, in turn, lives as long as the pool's core, which
/// the worker's coroutine and handlers hold: a plain pointer back makes no cycle.
struct worker_record {
  worker_record(std::uint64_t worker_id, key_state& owner, const executor& ex)
      : id(worker_id), key(&owner), strand(asio::make_strand(ex)) {}

  const std::uint64_t id;
  key_state* const key;
  const strand_type strand;

  // Set on the pool strand, read by the worker: a stop that arrives before the
  // coroutine has an operation to cancel is still seen.
  std::atomic<bool> stop_requested{false};

  // Worker strand only.
  asio::cancellation_signal stop_signal;
  bool finished = false;

  // Pool strand only.
  bool ready = false;
};

/// Everything the pool knows of one key. `ready_workers` is read from any
/// thread; the rest only on the pool strand.
struct key_state {
  explicit key_state(std::string key_name) : name(std::move(key_name)) {}

  const std::string name;
  std::atomic<std::size_t> ready_workers{0};

  std::size_t loading = 0;  // loads in flight: the current spawn wave
  std::exception_ptr last_failure;
  std::list<waiter_group> waiters;
  std::vector<std::shared_ptr<worker_record>> workers;
};

/// The shared state of a Pool. Its coroutines and handlers hold it by
/// shared_ptr, so it outlives the Pool object until the last of them is done.
class pool_core : public std::enable_shared_from_this<pool_core> {
 public:
  /// The coroutine one worker runs: load the model, report it, serve until stopped.
  using worker_body = std::function<asio::awaitable<void>(std::shared_ptr<pool_core>, std::shared_ptr<worker_record>)>;

  pool_core(executor ex, PoolConfig config, worker_body body)
      : executor_(std::move(ex)),
        strand_(asio::make_strand(executor_)),
        config_(std::move(config)),
        log_(config_.logger ? config_.logger : spdlog::default_logger()),
        body_(std::move(body)),
        shutdown_timer_(strand_) {
    if (config_.cold_start_workers == 0 || config_.spawn_timeout <= clock::duration::zero()) {
      throw boost::system::system_error(make_error_code(errc::invalid_argument), "coropool::PoolConfig");
    }
  }

  const executor& get_executor() const noexcept { return executor_; }
  const PoolConfig& config() const noexcept { return config_; }

  std::size_t ready_workers(const std::string& key) const {
    std::lock_guard lock(keys_mutex_);
    auto it = keys_.find(key);
    return it == keys_.end() ? 0 : it->second->ready_workers.load(std::memory_order_acquire);
  }

  /// Starts a wait for `key`'s workers; callable from any thread.
  template <bool AsException, class Handler>
  void start_wait(Handler&& handler, std::string key, clock::duration timeout) {
    using op_type = waiter_op<std::decay_t<Handler>, AsException>;
    auto op = std::make_shared<op_type>(executor_, std::forward<Handler>(handler));
    auto slot = asio::get_associated_cancellation_slot(op->handler());
    if (slot.is_connected()) {
      // A cancellation may be emitted from any thread: it only posts to the strand.
      slot.assign([weak_op = std::weak_ptr<waiter>(op), weak_core = weak_from_this()](asio::cancellation_type) {
        auto core = weak_core.lock();
        if (auto w = weak_op.lock(); core && w) {
          asio::post(core->strand_, [core, w] { core->finish(*w, asio::error::operation_aborted); });
        }
      });
    }
    asio::dispatch(strand_, [self = shared_from_this(), op = std::move(op), key = std::move(key), timeout]() mutable {
      self->register_waiter(std::move(op), key, timeout);
    });
  }

  /// Starts shutdown, or joins one already started; `handler` (which may be
  /// empty) completes when every coroutine of the pool has finished.
  template <class Handler>
  void start_shutdown_op(clock::duration load_deadline, Handler&& handler) {
    start_shutdown(load_deadline, std::make_unique<completion_op<std::decay_t<Handler>, error_code>>(
                                      std::forward<Handler>(handler), executor_));
  }

  /// `op` is null when nobody waits for the shutdown (the Pool's destructor).
  void start_shutdown(clock::duration load_deadline, std::unique_ptr<completion<error_code>> op) {
    asio::dispatch(strand_, [self = shared_from_this(), load_deadline, op = std::move(op)]() mutable {
      self->shutdown(load_deadline, std::move(op));
    });
  }

  /// Called by a worker on its strand once its model is loaded.
  void worker_loaded(std::shared_ptr<worker_record> w) {
    asio::defer(strand_, [self = shared_from_this(), w = std::move(w)] { self->on_loaded(w); });
  }

 private:
  // --- everything below runs on strand_ ---

  key_state& key_for(const std::string& name) {
    std::lock_guard lock(keys_mutex_);
    auto& slot = keys_[name];
    if (!slot) slot = std::make_shared<key_state>(name);
    return *slot;
  }

  void register_waiter(std::shared_ptr<waiter> w, const std::string& key, clock::duration timeout) {
    if (key.empty() || timeout <= clock::duration::zero()) return finish(*w, errc::invalid_argument);
    if (stopping_) return finish(*w, errc::shutting_down);
    key_state& k = key_for(key);
    if (k.ready_workers.load(std::memory_order_relaxed) > 0) return finish(*w, {});

    w->key = &k;
    w->group = group_for(k, w->batch_executor);
    w->position = w->group->members.insert(w->group->members.end(), w);
    w->timer.expires_after(timeout);
    w->timer.async_wait([self = shared_from_this(), w](error_code ec) {
      if (ec) return;  // disarmed: the waiter was finished on the strand
      asio::dispatch(self->strand_, [self, w] {
        if (w->done) return;
        self->log_->debug("coropool: wait for key '{}' timed out", w->key->name);
        self->finish(*w, errc::spawn_timeout);
      });
    });
    ensure_spawning(k);
  }

  /// Completes one waiter exactly once: later calls (its timer, a late
  /// cancellation, the wave) find it done and do nothing.
  /// The handler is completed before its timer is disarmed: cancelling the
  /// timer is not what wakes the caller.
  void finish(waiter& w, error_code ec) {
    if (w.done) return;
    w.done = true;
    w.complete(ec, nullptr);
    if (w.key) {
      auto keep = *w.position;  // the list may hold the last reference
      w.group->members.erase(w.position);
      if (w.group->members.empty()) w.key->waiters.erase(w.group);
      w.key = nullptr;
      w.timer.cancel();
    }
  }

  /// The group of the key's waiters on `target`. Only the most recent groups
  /// are searched: callers on many executors make more, smaller groups.
  static std::list<waiter_group>::iterator group_for(key_state& k, const std::optional<executor>& target) {
    constexpr int searched = 8;
    int looked = 0;
    for (auto it = k.waiters.end(); it != k.waiters.begin() && looked < searched; ++looked) {
      if ((--it)->target == target) return it;
    }
    return k.waiters.insert(k.waiters.end(), waiter_group{target, {}});
  }

  /// Completes every waiter of a key (the end of its spawn wave, or shutdown),
  /// in batches of one executor each (see wake_batch).
  void finish_all(key_state& k, error_code ec, const std::exception_ptr& error = nullptr) {
    std::vector<wake_batch> batches;
    for (auto& group : std::exchange(k.waiters, {})) {
      for (auto& w : group.members) {
        w->done = true;
        w->key = nullptr;
        if (!group.target) {
          w->complete(ec, error);
          w->timer.cancel();
          continue;
        }
        if (batches.empty() || batches.back().target != *group.target ||
            batches.back().waiters.size() == wake_batch::capacity) {
          batches.push_back(wake_batch{*group.target, {}, ec, error});
          batches.back().waiters.reserve(wake_batch::capacity);
        }
        batches.back().waiters.push_back(std::move(w));
      }
    }
    submit_wake(batches);
  }

  /// Starts one spawn wave unless the key has workers or one is under way:
  /// however many callers ask, a cold key is loaded once.
  void ensure_spawning(key_state& k) {
    if (k.loading > 0 || k.ready_workers.load(std::memory_order_relaxed) > 0) return;
    const std::size_t n = config_.cold_start_workers;
    log_->info("coropool: key '{}' is cold, spawning {} worker(s)", k.name, n);
    k.last_failure = nullptr;
    for (std::size_t i = 0; i < n; ++i) spawn_worker(k);
  }

  void spawn_worker(key_state& k) {
    auto w = std::make_shared<worker_record>(++next_worker_id_, k, executor_);
    k.workers.push_back(w);
    ++k.loading;
    ++live_workers_;
    asio::co_spawn(
        w->strand, body_(shared_from_this(), w),
        asio::bind_cancellation_slot(
            w->stop_signal.slot(), asio::bind_executor(w->strand, [self = shared_from_this(), w](std::exception_ptr e) {
              w->finished = true;
              asio::defer(self->strand_, [self, w, e = std::move(e)] { self->on_exit(w, e); });
            })));
  }

  void on_loaded(const std::shared_ptr<worker_record>& w) {
    key_state& k = *w->key;
    --k.loading;
    w->ready = true;
    k.ready_workers.fetch_add(1, std::memory_order_release);
    if (stopping_) return request_stop(w);
    finish_all(k, {});  // wake first, then log
    log_->info("coropool: key '{}' worker {} ready", k.name, w->id);
  }

  void on_exit(const std::shared_ptr<worker_record>& w, const std::exception_ptr& e) {
    key_state& k = *w->key;
    std::erase(k.workers, w);
    --live_workers_;
    if (w->ready) {
      k.ready_workers.fetch_sub(1, std::memory_order_release);
    } else {
      --k.loading;
      if (!stopping_) {
        k.last_failure = e ? e : std::make_exception_ptr(std::runtime_error("loader ended without a model"));
        log_->warn("coropool: key '{}' worker {} failed to load: {}", k.name, w->id,
                   spawn_error::describe(k.last_failure));
        if (k.loading == 0 && k.ready_workers.load(std::memory_order_relaxed) == 0) {
          finish_all(k, errc::spawn_failed, std::make_exception_ptr(spawn_error(k.name, k.last_failure)));
        }
      }
    }
    if (stopping_ && live_workers_ == 0) finish_shutdown();
  }

  /// Cancels whatever the worker awaits (its load or its idle wait). The
  /// signal is emitted on the worker's own strand, where its coroutine runs.
  void request_stop(const std::shared_ptr<worker_record>& w) {
    w->stop_requested.store(true, std::memory_order_release);
    asio::post(w->strand, [w] {
      if (!w->finished) w->stop_signal.emit(asio::cancellation_type::terminal);
    });
  }

  void shutdown(clock::duration load_deadline, std::unique_ptr<completion<error_code>> op) {
    if (op) shutdown_ops_.push_back(std::move(op));
    if (!stopping_) {
      stopping_ = true;
      log_->info("coropool: shutting down ({} worker(s) running)", live_workers_);
      // keys_ changes only on this strand: reading it here needs no lock.
      for (auto& [name, k] : keys_) {
        finish_all(*k, errc::shutting_down);
        for (auto& w : k->workers) {
          if (w->ready || load_deadline <= clock::duration::zero()) request_stop(w);
        }
      }
      if (live_workers_ > 0 && load_deadline > clock::duration::zero()) {
        // Loads in flight may finish until the deadline; then they are cancelled.
        shutdown_timer_.expires_after(load_deadline);
        shutdown_timer_.async_wait([self = shared_from_this()](error_code ec) {
          if (ec) return;
          for (auto& [name, k] : self->keys_)
            for (auto& w : k->workers) self->request_stop(w);
        });
      }
    }
    if (live_workers_ == 0) finish_shutdown();
  }

  void finish_shutdown() {
    shutdown_timer_.cancel();
    auto ops = std::exchange(shutdown_ops_, {});
    if (!ops.empty()) log_->info("coropool: shut down");
    for (auto& op : ops) op->complete(error_code{});
  }

  const executor executor_;
  const strand_type strand_;
  const PoolConfig config_;
  const std::shared_ptr<spdlog::logger> log_;
  const worker_body body_;

  // Guards the map's structure, so that any thread can look a key up; it is
  // written only on the strand and never held across a suspension.
  mutable std::mutex keys_mutex_;
  std::unordered_map<std::string, std::shared_ptr<key_state>> keys_;

  bool stopping_ = false;
  std::size_t live_workers_ = 0;
  std::uint64_t next_worker_id_ = 0;
  timer_type shutdown_timer_;
  std::vector<std::unique_ptr<completion<error_code>>> shutdown_ops_;
};

}  // namespace coropool::detail
