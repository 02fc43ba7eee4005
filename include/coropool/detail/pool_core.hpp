#pragma once

// pool_core: the shared state of a Pool, and the policy that runs on its strand.
//
// A Pool holds its core by shared_ptr, and so do the core's coroutines and
// handlers: it outlives the Pool until the last of them is done. The core
// decides when keys spawn, when workers stop, what health and memory demand,
// and how shutdown proceeds; the request path itself is each key's
// key_queue, which any thread runs under the queue's own lock.
//
// Who touches what:
// - any thread: the members under "Any thread" below, each key's queue and
//   its atomics (key_state::gauges), keys_ under keys_mutex_, stopping_;
// - a worker's strand: the members under "Workers", which its coroutine calls;
// - the pool strand (strand_): everything else. The strand never blocks: it
//   takes a key queue's lock for a few list operations, never across a suspension.
//
// The member templates are in detail/impl/pool_core.hpp; the other bodies in
// detail/impl/*.ipp (COROPOOL_DECL: inline when header-only; see
// detail/compilation.hpp), by topic: pool_core.ipp (construction and
// the map of keys), requests.ipp (the request path's
// entry points and the waiters), spawn.ipp (spawn waves, scale-up, memory),
// lifecycle.ipp (a worker's load, stop and exit), health.ipp (the maintenance
// tick, health sweep, idle eviction), commands.ipp (users'
// commands), shutdown.ipp, stats.ipp.

#include "coropool/config.hpp"
#include "coropool/detail/asio.hpp"
#include "coropool/detail/compilation.hpp"
#include "coropool/detail/completion.hpp"
#include "coropool/detail/key_state.hpp"
#include "coropool/detail/memory.hpp"
#include "coropool/detail/orchestrator.hpp"
#include "coropool/detail/registry.hpp"
#include "coropool/detail/request.hpp"
#include "coropool/detail/waiter.hpp"
#include "coropool/detail/worker_record.hpp"
#include "coropool/error.hpp"
#include "coropool/stats.hpp"

#include <spdlog/logger.h>

#include <boost/asio/thread_pool.hpp>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace coropool::detail {

class pool_core final : public std::enable_shared_from_this<pool_core>, public abandonable {
 public:
  /// The coroutine one worker runs: load the model, report it, serve until stopped (see worker_loop.hpp).
  using worker_body = std::function<asio::awaitable<void>(std::shared_ptr<pool_core>, std::shared_ptr<worker_record>)>;

  // --- Any thread ---

  /// Checks `config` (throws system_error with invalid_argument when out of range).
  pool_core(executor ex, PoolConfig config, worker_body body);
  ~pool_core();

  /// Makes a core known to its execution context (see abandonable) and spawns the warm keys.
  static std::shared_ptr<pool_core> create(executor ex, PoolConfig config, worker_body body);

  const executor& get_executor() const noexcept { return executor_; }
  const executor& compute_executor() const noexcept { return compute_executor_; }
  const asio::execution_context& context() const noexcept { return context_; }
  const PoolConfig& config() const noexcept { return config_; }
  pool_registry* registry() const noexcept { return registry_.load(std::memory_order_acquire); }
  const strand_type& strand() const noexcept { return strand_; }

  std::size_t queued_requests(const std::string& key) const;
  std::size_t live_workers(const std::string& key) const;
  std::size_t ready_workers(const std::string& key) const;
  /// A snapshot of every key's counters and gauges; changes nothing.
  PoolStats stats() const;

  /// Starts a wait for `key`'s workers.
  template <bool AsException, class Handler>
  void start_wait(Handler&& handler, std::string key, clock::duration timeout);
  /// Submits a request; `wait_for_room` picks backpressure over queue_full.
  /// `make_run` is set when the request is to be coalesced with identical
  /// ones named `identity` (see key_queue::enqueue_coalesced).
  template <class Op>
  void start_submit(boost::intrusive_ptr<Op> op, const std::string& key, bool wait_for_room,
                    const SubmitOptions& options = {}, std::string identity = {},
                    request_ptr (*make_run)(request_base&) = nullptr);
  /// Refuses a request before it reaches a key (counted pool-wide), with `ec` or `error`.
  void refuse(request_base& r, error_code ec, std::exception_ptr error = nullptr);
  /// Checks a request's options; sets its priority level from them.
  error_code apply_options(request_base& r, const SubmitOptions& options) const;
  /// Withdraws a request: completes it with operation_aborted unless it is done.
  void cancel_request(request_base& r);
  /// Hands a user's command to the strand, where it is handled or, once
  /// shutdown has begun, completed with shutting_down.
  void send_command(command c);
  /// Starts shutdown, or joins it; `op` (null for the Pool's destructor) completes when every coroutine has finished.
  void start_shutdown(clock::duration deadline, std::unique_ptr<completion<error_code>> op);
  template <class Handler>
  void start_shutdown_op(clock::duration deadline, Handler&& handler);

  // --- Workers: called by a worker's coroutine, on its strand ---

  /// False when the worker was stopped before its coroutine started.
  bool worker_starts(worker_record& w);
  void worker_loaded(std::shared_ptr<worker_record> w);
  /// The worker's next request, if one is queued; never suspends.
  request_ptr take_request(worker_record& w) { return w.key->queue.take(w); }
  /// Parks a worker until a request arrives; it is handed null when it is to leave.
  template <class Handler>
  void park(worker_record& w, Handler&& handler);
  /// Whether a worker's answer to `r` goes to its caller.
  bool claim_answer(request_base& r, worker_record& w);
  /// claim_answer() and take_request() under one lock; for a run of
  /// coalesced requests, `callers` receives the callers to answer.
  request_ptr claim_answer_and_take(request_base& r, worker_record& w, bool& answer, std::vector<request_ptr>& callers,
                                    bool error, bool failure);
  /// Batching workers (see key_queue, "Batching"): forwarded to the worker's key queue.
  bool fill_batch(worker_record& w) { return w.key->queue.fill_batch(w); }
  clock::time_point batch_start_time(worker_record& w, clock::duration delay, clock::time_point now,
                                     std::uint64_t& gen) {
    return w.key->queue.batch_start_time(w, delay, now, gen);
  }
  std::vector<request_ptr> start_batch(worker_record& w, const request_base*& handling) {
    const auto now = clock::now();
    w.own.last_progress = now;
    return w.key->queue.start_batch(w, now, handling);
  }
  bool finish_batch(worker_record& w, const std::vector<request_ptr>& units, const std::vector<char>& errors,
                    const std::vector<char>& failures, bool batch_error, bool batch_failure,
                    std::vector<std::pair<std::size_t, request_ptr>>& deliveries) {
    const auto now = clock::now();
    w.own.last_progress = now;
    return w.key->queue.finish_batch(w, units, errors, failures, batch_error, batch_failure, now, deliveries);
  }
  /// Whether an exception of `load` or `handle` counts against the breaker
  /// (PoolConfig::breaker_counts): user code, called outside every lock.
  bool counts_as_failure(const std::exception_ptr& e) const;

 private:
  bool stopping() const noexcept { return stopping_.load(std::memory_order_acquire); }

  // Keys (any thread; the map under keys_mutex_).
  key_state* find_key(const std::string& name) const;
  key_state& key_for(const std::string& name);
  std::vector<key_state*> all_keys() const;

  // Waiters (requests.ipp).
  void register_waiter(std::shared_ptr<waiter> w, const std::string& key, clock::duration timeout);

  // Spawning (spawn.ipp).
  void attend(key_state& k);
  void ensure_spawning(key_state& k);
  static bool spawning(const key_state& k) { return k.spawn.loading > 0 || k.spawn.memory_pending > 0; }
  void fail_for_memory(key_state& k);
  std::uint64_t footprint(key_state& k);
  bool spawn_worker(key_state& k);
  bool make_room(key_state& k, std::uint64_t bytes);
  void start_waiting_spawns();
  bool start_worker_if_room(key_state& k);
  void start_worker(key_state& k, memory_reservation reservation);
  void refill(key_state& k);
  void disarm_request_timer_if_unused(key_state& k);

  // A worker's life (lifecycle.ipp).
  void on_loaded(const std::shared_ptr<worker_record>& w);
  void retire(const std::shared_ptr<worker_record>& w);
  void on_exit(const std::shared_ptr<worker_record>& w, const std::exception_ptr& e);
  void fail_current(worker_record& w, error_code ec);
  void request_stop(const std::shared_ptr<worker_record>& w, errc because);
  void stop_gracefully(const std::shared_ptr<worker_record>& w);
  void stop_parked(std::vector<std::shared_ptr<worker_record>> released);
  void finish_closing(key_queue::closing c);  // a key's close() or start_draining(): stops and nudges
  void declare_dead(const std::shared_ptr<worker_record>& w, error_code ec, const char* why);

  // Health and maintenance (health.ipp).
  void start_maintenance();
  void on_tick();
  void health_sweep(clock::time_point now);
  void ping(const std::shared_ptr<worker_record>& w);
  void on_pong(const pong& p);
  void evict_idle(key_state& k, clock::time_point now);

  // Commands (commands.ipp).
  void on_command(command c);
  void scale(key_state& k, std::size_t target);
  void evict(key_state& k);
  void advance_commands(key_state& k);
  void abort_restart(key_state& k);

  // Shutdown (shutdown.ipp).
  void shutdown(clock::duration deadline, const std::shared_ptr<completion<error_code>>& op);
  void close_keys();
  void abandon_work();
  void finish_shutdown();
  void abandon() noexcept override;

  // Fixed at construction.
  const executor executor_;
  const asio::execution_context& context_;
  const strand_type strand_;
  const PoolConfig config_;
  const std::shared_ptr<spdlog::logger> log_;
  const worker_body body_;
  std::optional<asio::thread_pool> compute_pool_;
  executor compute_executor_;

  // Any thread.
  mutable std::mutex keys_mutex_;  // the map's structure; written on the strand, never held across a suspension
  std::unordered_map<std::string, std::shared_ptr<key_state>> keys_;
  std::atomic<bool> stopping_{false};       // shutdown has begun; raised under keys_mutex_ (see key_for)
  std::atomic<std::uint64_t> rejected_{0};  // refused before reaching a key
  std::atomic<pool_registry*> registry_{nullptr};

  // Pool strand.
  memory_planner<key_state, worker_record> memory_;
  std::size_t live_workers_ = 0;  // worker coroutines running, retired ones included
  std::uint64_t next_worker_id_ = 0;
  std::vector<std::shared_ptr<worker_record>> retired_;  // out of routing, their coroutines still running
  maintenance_tick tick_;
  timer_type shutdown_timer_;
  clock::time_point shutdown_deadline_ = clock::time_point::max();  // the earliest asked for; max(): none
  std::vector<std::shared_ptr<completion<error_code>>> shutdown_ops_;
};

}  // namespace coropool::detail

#include "coropool/detail/impl/pool_core.hpp"

#if defined(COROPOOL_HEADER_ONLY)
#include "coropool/detail/impl/commands.ipp"
#include "coropool/detail/impl/health.ipp"
#include "coropool/detail/impl/lifecycle.ipp"
#include "coropool/detail/impl/pool_core.ipp"
#include "coropool/detail/impl/requests.ipp"
#include "coropool/detail/impl/shutdown.ipp"
#include "coropool/detail/impl/spawn.ipp"
#include "coropool/detail/impl/stats.ipp"
#endif
