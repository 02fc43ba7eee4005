#pragma once

#include "coropool/config.hpp"
#include "coropool/detail/asio.hpp"
#include "coropool/detail/breaker.hpp"
#include "coropool/detail/memory.hpp"
#include "coropool/detail/registry.hpp"
#include "coropool/detail/request.hpp"
#include "coropool/detail/spin_mutex.hpp"
#include "coropool/detail/waiter.hpp"
#include "coropool/error.hpp"
#include "coropool/stats.hpp"
#include "coropool/worker_state.hpp"

#include <spdlog/logger.h>
#include <spdlog/spdlog.h>

#include <boost/asio/execution/context.hpp>
#include <boost/asio/experimental/concurrent_channel.hpp>
#include <boost/asio/query.hpp>
#include <boost/asio/thread_pool.hpp>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

namespace coropool::detail {

struct key_state;
struct worker_record;

/// The orchestrator's ping to one worker: a sequence number.
using ping_channel = asio::experimental::concurrent_channel<void(error_code, std::uint64_t)>;

/// A worker's answer to a ping: what the health sweep and stats see of it.
struct pong {
  std::shared_ptr<worker_record> worker;
  worker_state state;
  std::size_t in_flight;
  std::uint64_t served;
  clock::time_point last_progress;  // when it last loaded, or answered or started a request
};

/// A user's command to the orchestrator, and the handler it completes.
struct command {
  enum class kind : std::uint8_t { scale, evict, restart };
  kind what;
  std::string key;
  std::size_t workers = 0;  // scale's target
  std::shared_ptr<completion<error_code>> done;
};

/// What the orchestrator's inbox carries. `std::monostate` only wakes it.
using orchestrator_message = std::variant<std::monostate, pong, command>;
using inbox_channel = asio::experimental::concurrent_channel<void(error_code, orchestrator_message)>;

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
  // Set on the pool strand before the coroutine is cancelled (request_stop):
  // what a stream cut short by that cancellation tells its reader. errc{}: not cancelled.
  std::atomic<errc> cancelled_because{errc{}};

  worker_state_cell state;
  std::atomic<std::uint64_t> served{0};

  // The health channel: the pool pings, the worker's responder answers.
  ping_channel ping{strand, 1};

  // Worker strand only.
  asio::cancellation_signal stop_signal;
  bool finished = false;
  clock::time_point last_progress;

  // Pool strand only.
  bool ready = false;
  bool retired = false;        // out of routing: evicted, stopped or declared dead
  bool declared_dead = false;  // by the health sweep
  clock::time_point last_pong;
  clock::time_point reported_progress;      // last_progress, as its latest pong told
  std::shared_ptr<worker_record> replaces;  // restart: the worker this one takes over from
  memory_reservation reservation;           // its key's footprint, held until it ends
  bool memory_victim = false;               // evicted to make room for another key's spawn

  // Guarded by the key's mutex: the worker's coroutine while it waits for a
  // request (it is then among the key's idle workers). Like a pending
  // operation, it keeps its executor's work count up meanwhile.
  std::unique_ptr<completion<request_ptr>> parked;
  request_ptr current;  // the request it is handling

  clock::time_point idle_since;  // when it parked
};

/// Everything the pool knows of one key. The atomics are read from any
/// thread; the spawn state only on the pool strand; the request path under
/// `mutex`, which is never held across a suspension or while user code runs.
struct key_state {
  key_state(std::string key_name, const executor& ex, const PoolConfig& config)
      : name(std::move(key_name)),
        breaker(config.failure_threshold, config.open_duration, config.half_open_probes),
        timeout_timer(ex) {}
  key_state(const key_state&) = delete;
  key_state& operator=(const key_state&) = delete;

  ~key_state() {
    // Requests still here were abandoned with their execution context.
    queue.clear();
    room_waiters.clear();
    outstanding.clear_and_dispose([](request_base* r) { intrusive_ptr_release(r); });
  }

  const std::string name;
  std::atomic<std::size_t> ready_workers{0};
  std::atomic<std::size_t> live_workers{0};  // loading or serving
  std::atomic<bool> attention_pending{false};

  // Pool strand only.
  std::size_t loading = 0;  // loads in flight: the current spawn wave or scale-up
  std::exception_ptr last_failure;
  std::list<waiter_group> waiters;
  std::vector<std::shared_ptr<worker_record>> workers;  // routable: loading or serving, not retired
  bool warm = false;                                    // spawned and not evicted since: kept at min_workers_per_key
  std::size_t memory_pending = 0;                       // spawns waiting for evicted workers to free memory
  bool memory_short = false;                            // the last spawn found no room in the budget
  bool scale_up_failed = false;            // a load failed while the key served: scale-up waits for the next tick
  std::optional<std::uint64_t> footprint;  // PoolConfig::worker_footprint, asked once
  std::atomic<std::uint64_t> memory_reserved{0};
  struct scale_op {
    std::size_t target;
    std::shared_ptr<completion<error_code>> done;
  };
  std::vector<scale_op> scale_ops;
  std::vector<std::shared_ptr<completion<error_code>>> evict_ops;
  std::vector<std::weak_ptr<worker_record>> restart_left;  // workers a restart has still to replace
  std::vector<std::shared_ptr<completion<error_code>>> restart_ops;

  // Counters of lifecycle events, changed on the strand, read by stats().
  std::atomic<std::uint64_t> loads{0};
  std::atomic<std::uint64_t> load_failures{0};
  std::atomic<std::uint64_t> deaths{0};
  std::atomic<std::uint64_t> evictions{0};
  std::atomic<std::uint64_t> restarts{0};
  std::atomic<std::size_t> waiter_count{0};

  // The request path, guarded by `mutex`. A request is in `outstanding`
  // (which holds a reference to it) from its acceptance until it is done,
  // and meanwhile in `room_waiters`, in `queue`, or in a worker's hands.
  // Invariants: idle workers only when `queue` is empty; room waiters only
  // when `queue` is full.
  spin_mutex mutex;
  request_list room_waiters;
  request_list queue;
  deadline_list outstanding;
  std::vector<worker_record*> idle;
  bool closed = false;    // shutdown: no new requests; workers leave once the queue is empty
  bool draining = false;  // evict(): workers leave once the queue is empty
  bool timer_armed = false;
  circuit_breaker breaker;
  // Every worker whose coroutine runs, retired ones included (for stats).
  std::vector<std::shared_ptr<worker_record>> all_workers;
  // Request counters (see KeyStats).
  std::uint64_t submitted = 0, completed = 0, failed = 0, timed_out = 0, cancelled = 0, rejected = 0;
  LatencyHistogram latency;
  timer_type timeout_timer;  // the deadline of the oldest outstanding request
};

/// The shared state of a Pool. Its coroutines and handlers hold it by
/// shared_ptr, so it outlives the Pool object until the last of them is done.
class pool_core final : public std::enable_shared_from_this<pool_core>, public abandonable {
 public:
  /// The coroutine one worker runs: load the model, report it, serve until stopped.
  using worker_body = std::function<asio::awaitable<void>(std::shared_ptr<pool_core>, std::shared_ptr<worker_record>)>;

  pool_core(executor ex, PoolConfig config, worker_body body)
      : executor_(std::move(ex)),
        context_(asio::query(executor_, asio::execution::context)),
        strand_(asio::make_strand(executor_)),
        config_(std::move(config)),
        log_(config_.logger ? config_.logger : spdlog::default_logger()),
        body_(std::move(body)),
        memory_(std::make_shared<memory_governor>(config_.memory_budget, config_.on_memory_change)),
        shutdown_timer_(strand_),
        tick_timer_(strand_),
        inbox_(executor_, inbox_capacity) {
    if (config_.cold_start_workers == 0 || config_.max_workers_per_key < config_.cold_start_workers ||
        config_.queue_capacity == 0 || config_.stream_buffer == 0 || config_.spawn_timeout <= clock::duration::zero() ||
        config_.request_timeout <= clock::duration::zero() ||
        config_.min_workers_per_key > config_.max_workers_per_key ||
        config_.health_interval <= clock::duration::zero() || config_.health_timeout < config_.health_interval ||
        config_.idle_timeout <= clock::duration::zero() || config_.maintenance_interval <= clock::duration::zero() ||
        config_.open_duration <= clock::duration::zero() || config_.half_open_probes == 0 ||
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

  /// Makes the pool known to its execution context, whose destruction then
  /// abandons what the pool holds parked (see abandonable).
  static std::shared_ptr<pool_core> create(executor ex, PoolConfig config, worker_body body) {
    auto core = std::make_shared<pool_core>(ex, std::move(config), std::move(body));
    auto& registry = asio::use_service<pool_registry>(asio::query(ex, asio::execution::context));
    registry.add(core);
    core->registry_.store(&registry, std::memory_order_release);
    if (!core->config_.warm_keys.empty()) {
      asio::dispatch(core->strand_, [core] {
        for (const auto& key : core->config_.warm_keys) {
          key_state& k = core->key_for(key);
          if (core->stopping_) return;
          core->ensure_spawning(k);
          core->refill(k);
        }
      });
    }
    return core;
  }

  ~pool_core() {
    if (auto* registry = registry_.load(std::memory_order_acquire)) registry->remove(this);
    // The owned compute pool joins its threads here. Every worker has finished
    // by now, and with them every offload of theirs: the threads are idle.
  }

  const executor& compute_executor() const noexcept { return compute_executor_; }

  const executor& get_executor() const noexcept { return executor_; }

  /// The execution context of the pool's executor.
  const asio::execution_context& context() const noexcept { return context_; }
  const PoolConfig& config() const noexcept { return config_; }

  /// Requests of `key` waiting for a worker (not counting those waiting for room).
  std::size_t queued_requests(const std::string& key) const {
    key_state* k = find_key(key);
    if (!k) return 0;
    std::lock_guard lock(k->mutex);
    return k->queue.size();
  }

  std::size_t live_workers(const std::string& key) const {
    key_state* k = find_key(key);
    return k ? k->live_workers.load(std::memory_order_acquire) : 0;
  }

  std::size_t ready_workers(const std::string& key) const {
    std::lock_guard lock(keys_mutex_);
    auto it = keys_.find(key);
    return it == keys_.end() ? 0 : it->second->ready_workers.load(std::memory_order_acquire);
  }

  /// A snapshot of every key's counters and gauges; callable from any thread.
  PoolStats stats() const {
    PoolStats s;
    s.rejected = rejected_.load(std::memory_order_relaxed);
    s.memory_budget = memory_->budget();
    s.memory_reserved = memory_->reserved();
    std::lock_guard keys_lock(keys_mutex_);
    const auto now = clock::now();
    for (const auto& [name, k] : keys_) {
      KeyStats& ks = s.keys[name];
      ks.waiters = k->waiter_count.load(std::memory_order_relaxed);
      ks.loads = k->loads.load(std::memory_order_relaxed);
      ks.load_failures = k->load_failures.load(std::memory_order_relaxed);
      ks.deaths = k->deaths.load(std::memory_order_relaxed);
      ks.evictions = k->evictions.load(std::memory_order_relaxed);
      ks.restarts = k->restarts.load(std::memory_order_relaxed);
      ks.memory_reserved = k->memory_reserved.load(std::memory_order_relaxed);
      std::lock_guard lock(k->mutex);
      for (const auto& w : k->all_workers) ++ks.workers[static_cast<std::size_t>(w->state.load())];
      ks.in_flight = ks.workers_in(worker_state::processing);
      ks.queued = k->queue.size();
      ks.waiting_for_room = k->room_waiters.size();
      ks.submitted = k->submitted;
      ks.completed = k->completed;
      ks.failed = k->failed;
      ks.timed_out = k->timed_out;
      ks.cancelled = k->cancelled;
      ks.rejected = k->rejected;
      k->breaker.refuses(now);  // brings an open breaker whose time is up to half-open
      ks.breaker = k->breaker.state();
      ks.breaker_opened = k->breaker.times_opened();
      ks.latency = k->latency;
    }
    return s;
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

  /// Submits a request; callable from any thread. `wait_for_room` picks
  /// backpressure over `queue_full` when the key's queue is full.
  template <class Op>
  void start_submit(boost::intrusive_ptr<Op> op, const std::string& key, bool wait_for_room) {
    if (key.empty()) return refuse(*op, errc::invalid_argument);
    if (stopping_flag_.load(std::memory_order_acquire)) return refuse(*op, errc::shutting_down);
    key_state& k = key_for(key);
    op->key = &k;
    if constexpr (requires { op->handler(); }) {
      // Assigned before the request is published: once it is, a worker may complete it on another thread.
      auto slot = asio::get_associated_cancellation_slot(op->handler());
      if (slot.is_connected()) {
        slot.assign([weak_core = weak_from_this(), r = request_ptr(op)](asio::cancellation_type) {
          if (auto core = weak_core.lock()) core->cancel_request(*r);
        });
      }
    }
    enqueue(k, request_ptr(std::move(op)), wait_for_room);
  }

  /// Withdraws a request: completes it with `operation_aborted` unless it is done.
  void cancel_request(request_base& r) {
    if (!r.key) return;  // refused before it reached a key: done already
    {
      std::lock_guard lock(r.key->mutex);
      if (r.state == request_base::phase::done) return;
      claim_locked(*r.key, r);  // the caller's reference keeps r alive
      ++outcome_counter_locked(*r.key, asio::error::operation_aborted);
    }
    r.fail(asio::error::operation_aborted, nullptr);
  }

  pool_registry* registry() const noexcept { return registry_.load(std::memory_order_acquire); }

  /// A worker's next request, if one is queued; never suspends.
  request_ptr take_request(worker_record& w) {
    std::lock_guard lock(w.key->mutex);
    return take_locked(w);
  }

  /// Parks a worker until a request arrives; it is handed null when it is to
  /// leave (stopped, or its key closed and drained). Runs on the worker's strand.
  template <class Handler>
  void park(worker_record& w, Handler&& handler) {
    key_state& k = *w.key;
    request_ptr r;
    {
      std::lock_guard lock(k.mutex);
      r = take_locked(w);
      if (!r && !k.closed && !k.draining && !w.stop_requested.load(std::memory_order_relaxed)) {
        w.parked = std::make_unique<completion_op<std::decay_t<Handler>, request_ptr>>(std::forward<Handler>(handler),
                                                                                       executor_);
        w.state.transition(worker_state::idle);
        w.idle_since = clock::now();
        k.idle.push_back(&w);
        return;
      }
    }
    asio::defer(w.strand, asio::append(std::forward<Handler>(handler), std::move(r)));
  }

  /// Whether a worker's answer to `r` goes to the caller: false when the
  /// request was completed meanwhile (timed out, cancelled, shut down).
  bool claim_answer(request_base& r, worker_record& w) {
    w.last_progress = clock::now();
    std::lock_guard lock(r.key->mutex);
    return claim_answer_locked(r, w, false);
  }

  /// Whether an exception of `load` or `handle` counts against the key's
  /// breaker (PoolConfig::breaker_counts). User code: call it outside locks.
  bool counts_as_failure(const std::exception_ptr& e) const {
    if (!e) return false;
    if (config_.breaker_counts) return config_.breaker_counts(e);
    return !is_operation_aborted(e);
  }

  /// claim_answer() and then take_request(), under one lock: the worker's
  /// loop pays one lock per request.
  request_ptr claim_answer_and_take(request_base& r, worker_record& w, bool& answer, bool error, bool failure) {
    // Outside the lock, which every submit of the key contends for: the clock
    // read, and the latency (`accepted` is fixed once the request is queued).
    const auto now = clock::now();
    w.last_progress = now;
    const double latency_us = std::chrono::duration<double, std::micro>(now - r.accepted).count();
    std::lock_guard lock(w.key->mutex);
    key_state& k = *w.key;
    k.breaker.record(failure, now);
    answer = claim_answer_locked(r, w, error);
    if (answer) k.latency.record(latency_us);
    return take_locked(w);
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
    w->state.transition(worker_state::ready);
    w->last_progress = clock::now();
    asio::co_spawn(w->strand, respond_to_pings(shared_from_this(), w), asio::detached);
    asio::defer(strand_, [self = shared_from_this(), w = std::move(w)] { self->on_loaded(w); });
  }

  /// Called by a worker on its strand when its coroutine starts: false when
  /// it was stopped before that.
  bool worker_starts(worker_record& w) {
    return w.state.transition(worker_state::loading) && !w.stop_requested.load(std::memory_order_acquire);
  }

 private:
  // --- the request path: any thread, under the key's mutex where it says _locked ---

  void enqueue(key_state& k, request_ptr r, bool wait_for_room) {
    using phase = request_base::phase;
    error_code refused;
    worker_record* woken = nullptr;
    std::unique_ptr<completion<request_ptr>> wake;
    bool attend_key = false;
    {
      std::lock_guard lock(k.mutex);
      const auto now = clock::now();  // under the lock: deadlines are queued in order
      if (k.closed) {
        refused = errc::shutting_down;
      } else if (!k.breaker.admit(now, r->probe)) {
        refused = errc::circuit_open;
      } else if (!k.idle.empty()) {
        // A parked worker takes it directly: the queue is empty whenever one is parked.
        woken = k.idle.back();
        k.idle.pop_back();
        wake = std::move(woken->parked);
        r->state = phase::in_flight;
        woken->current = r;
        woken->state.transition(worker_state::ready);
        woken->state.transition(worker_state::processing);
      } else if (k.queue.size() < config_.queue_capacity) {
        r->state = phase::queued;
        k.queue.push_back(*r);
      } else if (wait_for_room) {
        r->state = phase::waiting_room;
        k.room_waiters.push_back(*r);
      } else {
        refused = errc::queue_full;
      }
      if (refused) {
        r->state = phase::done;  // under the lock: a cancellation may look at it as soon as we unlock
        ++k.rejected;
      } else {
        ++k.submitted;
        r->accepted = now;
        r->deadline = deadline_after(now, config_.request_timeout);
        k.outstanding.push_back(*r);
        intrusive_ptr_add_ref(r.get());
        if (!k.timer_armed) arm_request_timer_locked(k, r->deadline);
        // Cold, or busy with room to grow: the strand decides (one post at a time per key).
        attend_key = !woken &&
                     (k.ready_workers.load(std::memory_order_relaxed) == 0 ||
                      k.live_workers.load(std::memory_order_relaxed) < config_.max_workers_per_key) &&
                     !k.attention_pending.exchange(true, std::memory_order_acq_rel);
      }
    }
    if (refused) return r->fail(refused, nullptr);
    if (wake) wake->complete(std::move(r));
    if (attend_key) asio::post(strand_, [self = shared_from_this(), k = &k] { self->attend(*k); });
  }

  /// Fails a request that was never accepted; nothing else can hold it yet.
  void refuse(request_base& r, error_code ec) {
    rejected_.fetch_add(1, std::memory_order_relaxed);
    r.state = request_base::phase::done;
    r.fail(ec, nullptr);
  }

  /// The worker is done with `r`: it is between requests again.
  bool claim_answer_locked(request_base& r, worker_record& w, bool error) {
    w.current = nullptr;
    w.served.fetch_add(1, std::memory_order_relaxed);
    w.state.transition(worker_state::ready);
    if (r.state == request_base::phase::done) return false;
    r.probe = 0;  // its outcome was recorded
    ++(error ? w.key->failed : w.key->completed);
    claim_locked(*r.key, r);  // the worker's reference keeps r alive
    return true;
  }

  /// The worker's next request: none when the queue is empty or the worker is stopped.
  request_ptr take_locked(worker_record& w) {
    key_state& k = *w.key;
    if (k.queue.empty() || w.stop_requested.load(std::memory_order_relaxed)) return nullptr;
    request_base& r = k.queue.front();
    k.queue.pop_front();
    r.state = request_base::phase::in_flight;
    w.current = request_ptr(&r);
    w.state.transition(worker_state::processing);
    promote_room_waiter_locked(k);
    return request_ptr(&r);
  }

  void promote_room_waiter_locked(key_state& k) {
    if (k.room_waiters.empty() || k.queue.size() >= config_.queue_capacity) return;
    request_base& r = k.room_waiters.front();
    k.room_waiters.pop_front();
    r.state = request_base::phase::queued;
    k.queue.push_back(r);
  }

  /// The counter of KeyStats that a caller completed by the pool with `ec`
  /// is counted in: the bucket named after what the caller sees.
  static std::uint64_t& outcome_counter_locked(key_state& k, error_code ec) {
    if (ec == errc::request_timeout) return k.timed_out;
    if (ec == asio::error::operation_aborted) return k.cancelled;
    return k.failed;
  }

  /// Marks `r` done and takes it off every list. The caller holds a reference
  /// of its own, so dropping the list's cannot destroy it under the lock.
  void claim_locked(key_state& k, request_base& r) {
    using phase = request_base::phase;
    if (r.probe) k.breaker.release_probe(std::exchange(r.probe, 0));  // ended without an outcome
    if (r.state == phase::queued) {
      k.queue.erase(k.queue.iterator_to(r));
      promote_room_waiter_locked(k);
    } else if (r.state == phase::waiting_room) {
      k.room_waiters.erase(k.room_waiters.iterator_to(r));
    }
    r.state = phase::done;
    k.outstanding.erase(k.outstanding.iterator_to(r));
    intrusive_ptr_release(&r);
  }

  /// Claims every outstanding request of `k` (or only those due by `due`).
  std::vector<request_ptr> claim_all_locked(key_state& k, std::optional<clock::time_point> due = std::nullopt) {
    std::vector<request_ptr> claimed;
    while (!k.outstanding.empty() && (!due || k.outstanding.front().deadline <= *due)) {
      claimed.emplace_back(&k.outstanding.front());
      claim_locked(k, *claimed.back());
    }
    return claimed;
  }

  /// Fails every outstanding request of `k`; none is dropped.
  void fail_requests(key_state& k, error_code ec, const std::exception_ptr& error = nullptr) {
    std::vector<request_ptr> claimed;
    {
      std::lock_guard lock(k.mutex);
      claimed = claim_all_locked(k);
      outcome_counter_locked(k, ec) += claimed.size();
    }
    for (auto& r : claimed) r->fail(ec, error);
  }

  /// Requests share the pool's request_timeout, so deadlines come in the
  /// order of submission: one timer per key, at the oldest, covers them all.
  /// It is left armed when the requests finish early: it then fires once,
  /// finds nothing due, and is not re-armed (or the key's last worker ends
  /// first and disarms it). Armed whenever a request of the key is
  /// outstanding, it also keeps the pool's execution context running for the
  /// callers that run there (see request_work); that is why requests that
  /// never time out (request_timeout = max()) arm it at max(), where it never fires.
  void arm_request_timer_locked(key_state& k, clock::time_point at) {
    k.timer_armed = true;
    k.timeout_timer.expires_at(at);
    k.timeout_timer.async_wait([self = shared_from_this(), k = &k](error_code ec) {
      if (!ec) self->on_request_timer(*k);
    });
  }

  /// A key with no workers and no outstanding request needs no deadline
  /// timer: disarming it leaves an idle pool with no pending operation (the
  /// timer is left armed on the request path itself, where a cancellation per
  /// request would cost a scheduler operation each).
  void disarm_request_timer_if_unused(key_state& k) {
    if (!k.workers.empty() || k.loading > 0) return;
    std::lock_guard lock(k.mutex);
    if (k.timer_armed && k.outstanding.empty()) {
      k.timer_armed = false;
      k.timeout_timer.cancel();
    }
  }

  void on_request_timer(key_state& k) {
    std::vector<request_ptr> expired;
    {
      std::lock_guard lock(k.mutex);
      k.timer_armed = false;
      expired = claim_all_locked(k, clock::now());
      outcome_counter_locked(k, errc::request_timeout) += expired.size();
      if (!k.outstanding.empty()) arm_request_timer_locked(k, k.outstanding.front().deadline);
    }
    if (!expired.empty()) log_->debug("coropool: {} request(s) of key '{}' timed out", expired.size(), k.name);
    for (auto& r : expired) r->fail(errc::request_timeout, nullptr);
  }

  /// Hands a parked worker null, which makes it leave.
  void release_parked_locked(worker_record& w, std::vector<worker_record*>& released) {
    auto it = std::find(w.key->idle.begin(), w.key->idle.end(), &w);
    if (it == w.key->idle.end()) return;
    w.key->idle.erase(it);
    released.push_back(&w);
  }

  static void wake_released(std::vector<worker_record*>& released) {
    for (worker_record* w : released) {
      std::exchange(w->parked, nullptr)->complete(request_ptr());
    }
  }

  /// The execution context is being destroyed: drop every parked worker and
  /// every request's handler without calling them, as Asio drops its own
  /// pending operations, so the coroutines they own are destroyed.
  void abandon() noexcept override {
    registry_.store(nullptr, std::memory_order_release);
    for (key_state* k : all_keys()) {
      std::vector<request_ptr> claimed;
      std::vector<std::unique_ptr<completion<request_ptr>>> parked;
      {
        std::lock_guard lock(k->mutex);
        claimed = claim_all_locked(*k);
        for (worker_record* w : std::exchange(k->idle, {})) {
          parked.push_back(std::move(w->parked));
        }
      }
      for (auto& r : claimed) r->abandon();
    }
  }

  // --- everything below runs on strand_ ---

  /// Spawns what a key's requests need: a wave when it is cold, one more
  /// worker when requests queue and every worker is busy. While a load is in
  /// flight nothing more is spawned, and the key's attention stays raised so
  /// that submits stop posting here: the load's end (on_loaded, on_exit) calls
  /// attend() again.
  void attend(key_state& k) {
    if (stopping_ || spawning(k)) return;
    k.attention_pending.store(false, std::memory_order_release);
    bool backlog = false;
    bool idle = false;
    {
      std::lock_guard lock(k.mutex);
      backlog = !k.queue.empty() || !k.room_waiters.empty();
      idle = !k.idle.empty();
      if (k.draining) return;  // evict(): the key's workers are leaving; advance_commands() attends after
    }
    if (!backlog) return;
    if (k.ready_workers.load(std::memory_order_relaxed) == 0) return ensure_spawning(k);
    if (!idle && k.workers.size() < config_.max_workers_per_key && !k.scale_up_failed) {
      log_->info("coropool: key '{}' is busy, adding worker {} of at most {}", k.name, k.workers.size() + 1,
                 config_.max_workers_per_key);
      spawn_worker(k);
    }
  }

  key_state* find_key(const std::string& name) const {
    std::lock_guard lock(keys_mutex_);
    auto it = keys_.find(name);
    return it == keys_.end() ? nullptr : it->second.get();
  }

  /// The key named `name`, made on first use. A key made once shutdown has
  /// begun is born closed: shutdown raises its flag under keys_mutex_ before
  /// it closes the keys it finds, so a submit racing it to a new key is
  /// refused with shutting_down either way.
  key_state& key_for(const std::string& name) {
    std::lock_guard lock(keys_mutex_);
    auto& slot = keys_[name];
    if (!slot) {
      slot = std::make_shared<key_state>(name, executor_, config_);
      slot->closed = stopping_flag_.load(std::memory_order_relaxed);
    }
    return *slot;
  }

  /// Every key, for the strand's sweeps: keys_ grows under its mutex from any thread.
  std::vector<key_state*> all_keys() const {
    std::lock_guard lock(keys_mutex_);
    std::vector<key_state*> keys;
    keys.reserve(keys_.size());
    for (auto& [name, k] : keys_) keys.push_back(k.get());
    return keys;
  }

  void register_waiter(std::shared_ptr<waiter> w, const std::string& key, clock::duration timeout) {
    if (key.empty() || timeout <= clock::duration::zero()) return finish(*w, errc::invalid_argument);
    if (stopping_) return finish(*w, errc::shutting_down);
    key_state& k = key_for(key);
    bool refused = false;
    {
      std::lock_guard lock(k.mutex);
      refused = k.breaker.refuses(clock::now());
    }
    if (refused) return finish(*w, errc::circuit_open);
    if (k.ready_workers.load(std::memory_order_relaxed) > 0) return finish(*w, {});

    w->key = &k;
    w->group = group_for(k, w->batch_executor);
    w->position = w->group->members.insert(w->group->members.end(), w);
    k.waiter_count.fetch_add(1, std::memory_order_relaxed);
    // A deadline of never arms no timer: the handler's work guard keeps its context running.
    if (const auto deadline = deadline_after(clock::now(), timeout); !is_never(deadline)) {
      w->timer.expires_at(deadline);
      w->timer.async_wait([self = shared_from_this(), w](error_code ec) {
        if (ec) return;  // disarmed: the waiter was finished on the strand
        asio::dispatch(self->strand_, [self, w] {
          if (w->done) return;
          self->log_->debug("coropool: wait for key '{}' timed out", w->key->name);
          self->finish(*w, errc::spawn_timeout);
        });
      });
    }
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
      w.key->waiter_count.fetch_sub(1, std::memory_order_relaxed);
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
    k.waiter_count.store(0, std::memory_order_relaxed);
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
    if (spawning(k) || k.ready_workers.load(std::memory_order_relaxed) > 0) return;
    const std::size_t n = config_.cold_start_workers;
    log_->info("coropool: key '{}' is cold, spawning {} worker(s)", k.name, n);
    k.last_failure = nullptr;
    std::size_t started = 0;
    while (started < n && spawn_worker(k)) ++started;  // as many as the memory budget allows
    if (started == 0) fail_for_memory(k);
  }

  /// Loads in flight, or spawns waiting for memory: either way a spawn is under way.
  static bool spawning(const key_state& k) { return k.loading > 0 || k.memory_pending > 0; }

  /// No worker of `k` could be spawned within the memory budget: its
  /// waiters, and its requests if nobody serves them, fail with memory_exhausted.
  void fail_for_memory(key_state& k) {
    log_->warn("coropool: key '{}' has no room in the memory budget ({} of {} bytes reserved)", k.name,
               memory_->reserved(), memory_->budget());
    finish_all(k, errc::memory_exhausted);
    if (k.workers.empty()) fail_requests(k, errc::memory_exhausted);
    disarm_request_timer_if_unused(k);
  }

  std::uint64_t footprint(key_state& k) {
    if (!k.footprint) k.footprint = config_.worker_footprint ? config_.worker_footprint(k.name) : 0;
    return *k.footprint;
  }

  /// Adds a worker to `k` if its footprint fits the memory budget, or can be
  /// made to fit by evicting idle workers of other keys, least recently used
  /// first: the spawn then waits until they have ended. False when neither.
  bool spawn_worker(key_state& k) {
    if (start_worker_if_room(k)) {
      k.memory_short = false;
      return true;
    }
    const std::uint64_t bytes = footprint(k);
    if (!make_room(k, bytes)) {
      k.memory_short = true;
      return false;
    }
    ++k.memory_pending;
    promised_ += bytes;
    memory_waiting_.push_back(&k);
    return true;
  }

  /// Evicts idle workers of keys other than `k` until, once they have ended,
  /// `bytes` more fit. False, evicting nobody, when all of them would not do.
  bool make_room(key_state& k, std::uint64_t bytes) {
    const std::uint64_t committed = memory_->reserved() + promised_ + bytes;
    const std::uint64_t available = memory_->budget() + freeing_;
    if (committed <= available) return true;  // workers already leaving free enough
    const std::uint64_t need = committed - available;
    struct candidate {
      std::shared_ptr<worker_record> worker;
      clock::time_point idle_since;
    };
    std::vector<candidate> candidates;
    for (key_state* other : all_keys()) {
      if (other == &k) continue;
      std::lock_guard lock(other->mutex);
      for (worker_record* w : other->idle) {
        if (auto owner = find_worker(*other, w); owner && owner->reservation.bytes() > 0) {
          candidates.push_back({std::move(owner), w->idle_since});
        }
      }
    }
    std::sort(candidates.begin(), candidates.end(),
              [](const candidate& a, const candidate& b) { return a.idle_since < b.idle_since; });
    std::uint64_t found = 0;
    std::size_t chosen = 0;
    while (chosen < candidates.size() && found < need) found += candidates[chosen++].worker->reservation.bytes();
    if (found < need) return false;
    for (std::size_t i = 0; i < chosen; ++i) {
      auto& w = candidates[i].worker;
      log_->info("coropool: evicting idle worker {} of key '{}' to make room for key '{}'", w->id, w->key->name,
                 k.name);
      w->memory_victim = true;
      freeing_ += w->reservation.bytes();
      w->key->evictions.fetch_add(1, std::memory_order_relaxed);
      stop_gracefully(w);
    }
    return true;
  }

  /// Starts the spawns that waited for memory, in order, while they fit
  /// (at shutdown, drops them).
  void start_waiting_spawns() {
    while (!memory_waiting_.empty()) {
      key_state& k = *memory_waiting_.front();
      if (!stopping_ && !start_worker_if_room(k)) break;
      memory_waiting_.pop_front();
      --k.memory_pending;
      promised_ -= footprint(k);
    }
  }

  /// Reserves `k`'s footprint and starts a worker with it, if it fits now.
  bool start_worker_if_room(key_state& k) {
    const std::uint64_t bytes = footprint(k);
    if (!memory_->try_reserve(bytes)) return false;
    start_worker(k, memory_reservation(memory_, bytes));
    return true;
  }

  void start_worker(key_state& k, memory_reservation reservation) {
    auto w = std::make_shared<worker_record>(++next_worker_id_, k, executor_);
    k.memory_reserved.fetch_add(reservation.bytes(), std::memory_order_relaxed);
    w->reservation = std::move(reservation);
    k.workers.push_back(w);
    k.loads.fetch_add(1, std::memory_order_relaxed);
    {
      std::lock_guard lock(k.mutex);
      k.all_workers.push_back(w);
    }
    k.warm = true;
    ++k.loading;
    ++live_workers_;
    k.live_workers.fetch_add(1, std::memory_order_release);
    asio::co_spawn(
        w->strand, body_(shared_from_this(), w),
        asio::bind_cancellation_slot(
            w->stop_signal.slot(), asio::bind_executor(w->strand, [self = shared_from_this(), w](std::exception_ptr e) {
              w->finished = true;
              asio::defer(self->strand_, [self, w, e = std::move(e)] { self->on_exit(w, e); });
            })));
    start_maintenance();
  }

  /// The health responder of a loaded worker: on its strand, beside the
  /// worker's own coroutine, so it answers while a handler is suspended but
  /// not while one blocks the thread. Each ping gets exactly one pong.
  static asio::awaitable<void> respond_to_pings(std::shared_ptr<pool_core> self, std::shared_ptr<worker_record> w) {
    for (;;) {
      auto [ec, seq] = co_await w->ping.async_receive(asio::as_tuple(asio::use_awaitable));
      if (ec) co_return;  // the worker is gone
      const worker_state state = w->state.load();
      orchestrator_message message(pong{w, state, state == worker_state::processing ? 1u : 0u,
                                        w->served.load(std::memory_order_relaxed), w->last_progress});
      auto [send_ec] =
          co_await self->inbox_.async_send(error_code{}, std::move(message), asio::as_tuple(asio::use_awaitable));
      if (send_ec) co_return;  // the pool has shut down
    }
  }

  void on_loaded(const std::shared_ptr<worker_record>& w) {
    key_state& k = *w->key;
    if (w->retired) return;  // stopped while its load ended
    --k.loading;
    w->ready = true;
    w->last_pong = w->reported_progress = clock::now();
    k.ready_workers.fetch_add(1, std::memory_order_release);
    k.scale_up_failed = false;
    if (stopping_) return;  // it serves what its key still has queued, then leaves
    finish_all(k, {});      // wake first, then log
    log_->info("coropool: key '{}' worker {} ready", k.name, w->id);
    if (auto old = std::exchange(w->replaces, nullptr)) stop_gracefully(old);
    attend(k);
    advance_commands(k);
  }

  /// Takes a worker out of its key's routing: it counts no more as one of
  /// the key's workers, although its coroutine may still be running.
  void retire(const std::shared_ptr<worker_record>& w) {
    if (w->retired) return;
    key_state& k = *w->key;
    w->retired = true;
    std::erase(k.workers, w);
    k.live_workers.fetch_sub(1, std::memory_order_release);
    if (w->ready) {
      k.ready_workers.fetch_sub(1, std::memory_order_release);
    } else {
      --k.loading;
    }
    if (!w->finished) retired_.push_back(w);
  }

  void on_exit(const std::shared_ptr<worker_record>& w, const std::exception_ptr& e) {
    key_state& k = *w->key;
    --live_workers_;
    w->ping.close();
    const bool was_routable = !w->retired;
    const bool loaded = w->ready;
    const bool load_failure = was_routable && !loaded && !stopping_;
    const bool counts = load_failure && counts_as_failure(e ? e : std::make_exception_ptr(std::runtime_error("")));
    {
      std::lock_guard lock(k.mutex);
      std::erase(k.all_workers, w);
      if (load_failure) k.breaker.record(counts, clock::now());
    }
    if (load_failure) k.load_failures.fetch_add(1, std::memory_order_relaxed);
    const std::uint64_t freed = w->reservation.release();  // a model's memory goes with its worker
    k.memory_reserved.fetch_sub(freed, std::memory_order_relaxed);
    if (w->memory_victim) freeing_ -= freed;
    start_waiting_spawns();
    retire(w);
    std::erase(retired_, w);
    if (was_routable && !loaded && !stopping_ && w->state.load() == worker_state::loading) {
      w->state.transition(worker_state::failed);
    } else {
      w->state.begin_eviction();
    }
    w->state.transition(worker_state::dead);
    if (was_routable && !loaded && !stopping_) {
      k.last_failure = e ? e : std::make_exception_ptr(std::runtime_error("loader ended without a model"));
      log_->warn("coropool: key '{}' worker {} failed to load: {}", k.name, w->id,
                 spawn_error::describe(k.last_failure));
      if (auto old = std::exchange(w->replaces, nullptr)) abort_restart(k);
      // A key that still serves does not retry a failed scale-up on every
      // submit (a load that fails at once would spin): the next tick does.
      if (k.ready_workers.load(std::memory_order_relaxed) > 0) k.scale_up_failed = true;
    } else if (was_routable && e) {
      // A loaded worker whose coroutine ended by an exception: as if declared dead.
      log_->error("coropool: key '{}' worker {} died: {}", k.name, w->id, spawn_error::describe(e));
      k.deaths.fetch_add(1, std::memory_order_relaxed);
      fail_current(*w, errc::worker_lost);
    }
    if (k.loading == 0 && k.ready_workers.load(std::memory_order_relaxed) == 0) {
      // Nobody is left to serve this key's requests, nor about to be.
      if (stopping_) {
        fail_requests(k, errc::shutting_down);
      } else if (was_routable && !loaded) {
        auto error = std::make_exception_ptr(spawn_error(k.name, k.last_failure));
        finish_all(k, errc::spawn_failed, error);
        fail_requests(k, errc::spawn_failed, error);
      }
    }
    // A load ended (see attend), or a worker that served is gone: what is still queued may need another.
    attend(k);
    advance_commands(k);
    disarm_request_timer_if_unused(k);
    if (stopping_ && live_workers_ == 0) finish_shutdown();
    if (live_workers_ == 0) wake_orchestrator();  // it ends when the pool has nothing left to look after
  }

  /// Fails the request a worker holds, if it is not done already.
  void fail_current(worker_record& w, error_code ec) {
    request_ptr lost;
    {
      std::lock_guard lock(w.key->mutex);
      w.key->breaker.record(true, clock::now());  // a worker lost counts against its key
      if (w.current && w.current->state != request_base::phase::done) {
        lost = w.current;
        claim_locked(*w.key, *lost);
        ++outcome_counter_locked(*w.key, ec);
      }
    }
    if (lost) lost->fail(ec, nullptr);
  }

  /// Stops a worker now: a parked one is handed null, and whatever it awaits
  /// (its load, its handler's operation) is cancelled. The signal is emitted
  /// on the worker's own strand, where its coroutine runs.
  void request_stop(const std::shared_ptr<worker_record>& w, errc because) {
    w->cancelled_because.store(because, std::memory_order_release);
    stop_gracefully(w);
    asio::post(w->strand, [w] {
      if (!w->finished) w->stop_signal.emit(asio::cancellation_type::terminal);
    });
  }

  /// Stops a worker once it has finished what it is doing: a parked one at
  /// once, a busy one after its current request; it takes no new one.
  void stop_gracefully(const std::shared_ptr<worker_record>& w) {
    w->stop_requested.store(true, std::memory_order_release);
    w->state.begin_eviction();
    std::vector<worker_record*> released;
    {
      std::lock_guard lock(w->key->mutex);
      release_parked_locked(*w, released);
    }
    wake_released(released);
    retire(w);
  }

  /// The health sweep found a worker unresponsive (no pong within
  /// health_timeout) or stuck on a request past its deadline: it leaves
  /// routing now, its caller is completed, a replacement is spawned where
  /// the key needs one, and its coroutine is cancelled.
  void declare_dead(const std::shared_ptr<worker_record>& w, error_code ec, const char* why) {
    key_state& k = *w->key;
    log_->error("coropool: key '{}' worker {} declared dead: {} (last progress reported {} ms ago)", k.name, w->id, why,
                std::chrono::duration_cast<std::chrono::milliseconds>(clock::now() - w->reported_progress).count());
    w->declared_dead = true;
    k.deaths.fetch_add(1, std::memory_order_relaxed);
    fail_current(*w, ec);
    w->ping.close();
    request_stop(w, errc::worker_lost);
    attend(k);
    refill(k);
  }

  // --- maintenance: one timer on the strand, armed while the pool has workers ---

  void start_maintenance() {
    start_orchestrator();
    if (tick_armed_ || stopping_ || live_workers_ == 0) return;
    const auto now = clock::now();
    if (next_health_ == unset) next_health_ = deadline_after(now, config_.health_interval);
    if (next_maintenance_ == unset) next_maintenance_ = deadline_after(now, config_.maintenance_interval);
    const auto next = std::min(next_health_, next_maintenance_);
    if (is_never(next)) return;  // both intervals are max(): never
    tick_armed_ = true;
    tick_timer_.expires_at(next);
    tick_timer_.async_wait([self = shared_from_this()](error_code ec) {
      self->tick_armed_ = false;
      if (!ec) self->on_tick();
    });
  }

  void on_tick() {
    if (stopping_) return;  // shutdown has its own deadline
    const auto now = clock::now();
    if (now >= next_health_) {
      next_health_ = deadline_after(now, config_.health_interval);
      health_sweep(now);
    }
    if (now >= next_maintenance_) {
      next_maintenance_ = deadline_after(now, config_.maintenance_interval);
      for (key_state* k : all_keys()) {
        evict_idle(*k, now);
        refill(*k);
      }
    }
    for (key_state* k : all_keys()) {
      if (std::exchange(k->scale_up_failed, false)) attend(*k);  // a failed scale-up's next try
    }
    if (live_workers_ == 0) {
      next_health_ = next_maintenance_ = unset;  // idle: the next worker restarts the clock
      return;
    }
    start_maintenance();
  }

  void health_sweep(clock::time_point now) {
    for (key_state* k : all_keys()) {
      for (auto w : std::vector(k->workers)) {  // declare_dead changes the list
        if (!w->ready) continue;                // loads are bounded by spawn_timeout's callers, not pinged
        if (now - w->last_pong > config_.health_timeout) {
          declare_dead(w, errc::worker_lost, "no pong within health_timeout");
          continue;
        }
        bool overdue = false;
        {
          std::lock_guard lock(k->mutex);
          overdue = w->current && w->current->deadline <= now;
        }
        if (overdue) {
          declare_dead(w, errc::request_timeout, "its request ran past request_timeout");
          continue;
        }
        w->ping.try_send(error_code{}, ++ping_sequence_);  // full: the last ping is still unanswered
      }
    }
  }

  void on_pong(const pong& p) {
    if (p.worker->retired) return;
    p.worker->last_pong = clock::now();
    p.worker->reported_progress = p.last_progress;
  }

  /// Stops workers parked for idle_timeout, oldest first, down to min_workers_per_key.
  void evict_idle(key_state& k, clock::time_point now) {
    std::vector<worker_record*> released;
    {
      std::lock_guard lock(k.mutex);
      std::size_t live = k.live_workers.load(std::memory_order_relaxed);
      // k.idle is a stack: the most recently parked is handed work first, the oldest age at the front.
      while (!k.idle.empty() && live > config_.min_workers_per_key &&
             now - k.idle.front()->idle_since >= config_.idle_timeout) {
        released.push_back(k.idle.front());
        k.idle.erase(k.idle.begin());
        --live;
      }
    }
    for (worker_record* w : released) {
      auto owner = find_worker(k, w);
      log_->info("coropool: key '{}' worker {} idle for {} ms, evicting", k.name, w->id,
                 std::chrono::duration_cast<std::chrono::milliseconds>(config_.idle_timeout).count());
      k.evictions.fetch_add(1, std::memory_order_relaxed);
      w->stop_requested.store(true, std::memory_order_release);
      w->state.begin_eviction();
      if (owner) retire(owner);
    }
    wake_released(released);
  }

  static std::shared_ptr<worker_record> find_worker(key_state& k, const worker_record* w) {
    for (auto& candidate : k.workers) {
      if (candidate.get() == w) return candidate;
    }
    return nullptr;
  }

  /// Keeps a warm key at min_workers_per_key.
  void refill(key_state& k) {
    if (stopping_ || !k.warm || spawning(k)) return;
    {
      std::lock_guard lock(k.mutex);
      if (k.breaker.refuses(clock::now())) return;  // an open breaker loads nothing
    }
    std::size_t live = k.live_workers.load(std::memory_order_relaxed);
    if (live >= config_.min_workers_per_key) return;
    log_->info("coropool: key '{}' has {} worker(s), refilling to {}", k.name, live, config_.min_workers_per_key);
    while (live < config_.min_workers_per_key && spawn_worker(k)) ++live;
  }

  // --- the orchestrator: one coroutine on the strand reading the inbox ---

  /// The orchestrator runs while the pool has workers or commands: a pool
  /// with neither keeps no coroutine of its own (co_spawn counts work).
  void start_orchestrator() {
    if (orchestrator_running_ || stopped_) return;
    orchestrator_running_ = true;
    asio::co_spawn(strand_, orchestrate(shared_from_this()), asio::detached);
  }

  void wake_orchestrator() {
    if (orchestrator_running_) inbox_.try_send(error_code{}, orchestrator_message{});
  }

  static asio::awaitable<void> orchestrate(std::shared_ptr<pool_core> self) {
    for (;;) {
      orchestrator_message message;
      if (!self->inbox_.try_receive([&](error_code, orchestrator_message m) { message = std::move(m); })) {
        if (self->live_workers_ == 0 || self->stopped_) break;  // nothing to look after: leave rather than wait
        auto [ec, m] = co_await self->inbox_.async_receive(asio::as_tuple(asio::use_awaitable));
        if (ec) break;
        message = std::move(m);
      }
      if (auto* p = std::get_if<pong>(&message)) {
        self->on_pong(*p);
      } else if (auto* c = std::get_if<command>(&message)) {
        self->on_command(std::move(*c));
      }
    }
    self->orchestrator_running_ = false;
  }

 public:
  /// Sends a user's command to the orchestrator; callable from any thread.
  /// Never dropped: a command the inbox cannot take completes with
  /// shutting_down.
  void send_command(command c) {
    asio::dispatch(strand_, [self = shared_from_this(), c = std::move(c)]() mutable {
      if (self->stopping_) return c.done->complete(errc::shutting_down);
      auto done = c.done;
      self->inbox_.async_send(error_code{}, orchestrator_message(std::move(c)), [done](error_code ec) {
        if (ec) done->complete(errc::shutting_down);  // the message, and with it the command, is gone
      });
      self->start_orchestrator();  // after the send: a new orchestrator may run inline and must find it
    });
  }

 private:
  void on_command(command c) {
    if (stopping_) return c.done->complete(errc::shutting_down);
    if (c.key.empty()) return c.done->complete(errc::invalid_argument);
    key_state& k = key_for(c.key);
    switch (c.what) {
      case command::kind::scale:
        if (c.workers > config_.max_workers_per_key) return c.done->complete(errc::invalid_argument);
        k.scale_ops.push_back({c.workers, c.done});
        scale(k, c.workers);
        break;
      case command::kind::evict:
        k.evict_ops.push_back(c.done);
        evict(k);
        break;
      case command::kind::restart:
        k.restart_ops.push_back(c.done);
        for (auto& w : k.workers) {
          if (!w->replaces) k.restart_left.push_back(w);
        }
        break;
    }
    advance_commands(k);
  }

  void scale(key_state& k, std::size_t target) {
    k.warm = true;
    std::size_t live = k.live_workers.load(std::memory_order_relaxed);
    if (live < target) {
      log_->info("coropool: key '{}' scaling up from {} to {} worker(s)", k.name, live, target);
      k.last_failure = nullptr;
      while (live < target && spawn_worker(k)) ++live;
      return;
    }
    if (live > target) log_->info("coropool: key '{}' scaling down from {} to {} worker(s)", k.name, live, target);
    // Idle workers first, then busy ones after their request; loading ones are left alone.
    std::vector<std::shared_ptr<worker_record>> chosen;
    {
      std::lock_guard lock(k.mutex);
      for (auto it = k.idle.begin(); it != k.idle.end() && live - chosen.size() > target; ++it) {
        if (auto w = find_worker(k, *it)) chosen.push_back(std::move(w));
      }
    }
    for (auto& w : k.workers) {
      if (live - chosen.size() <= target) break;
      if (w->ready && std::find(chosen.begin(), chosen.end(), w) == chosen.end()) chosen.push_back(w);
    }
    for (auto& w : chosen) stop_gracefully(w);
  }

  void evict(key_state& k) {
    log_->info("coropool: evicting key '{}' ({} worker(s)) once its queue drains", k.name,
               k.live_workers.load(std::memory_order_relaxed));
    k.warm = false;
    std::vector<worker_record*> released;
    {
      std::lock_guard lock(k.mutex);
      k.draining = true;
      released = std::exchange(k.idle, {});  // the queue is empty whenever a worker is parked
    }
    for (worker_record* w : released) {
      if (auto owner = find_worker(k, w)) {
        w->stop_requested.store(true, std::memory_order_release);
        w->state.begin_eviction();
        retire(owner);
      }
    }
    k.evictions.fetch_add(1, std::memory_order_relaxed);
    wake_released(released);
  }

  /// Completes the commands whose work is done and moves restarts on.
  void advance_commands(key_state& k) {
    if (stopping_) {  // what commands were waiting for will not come: no load, no restart after shutdown began
      for (auto& op : std::exchange(k.scale_ops, {})) op.done->complete(errc::shutting_down);
      for (auto& done : std::exchange(k.evict_ops, {})) done->complete(errc::shutting_down);
      for (auto& done : std::exchange(k.restart_ops, {})) done->complete(errc::shutting_down);
      k.restart_left.clear();
      return;
    }
    const std::size_t live = k.live_workers.load(std::memory_order_relaxed);
    const std::size_t ready = k.ready_workers.load(std::memory_order_relaxed);
    if (!spawning(k)) {
      std::erase_if(k.scale_ops, [&](const key_state::scale_op& op) {
        if (live > op.target) return false;
        // Short of the target for a reason of its own, or not at all: workers
        // that loaded and were then evicted as idle are no failure of the scale.
        error_code ec;
        if (ready < op.target && k.memory_short) {
          ec = errc::memory_exhausted;
        } else if (ready < op.target && k.last_failure) {
          ec = errc::spawn_failed;
        }
        op.done->complete(ec);
        return true;
      });
    }
    if (!k.evict_ops.empty() && live == 0) {
      {
        std::lock_guard lock(k.mutex);
        k.draining = false;
      }
      for (auto& done : std::exchange(k.evict_ops, {})) done->complete(error_code{});
      attend(k);  // requests that came meanwhile get a new wave
    }
    if (!k.restart_ops.empty() && !spawning(k)) {
      std::shared_ptr<worker_record> old;
      while (!old && !k.restart_left.empty()) {
        old = k.restart_left.back().lock();
        k.restart_left.pop_back();
        if (old && old->retired) old = nullptr;
      }
      if (!old) {
        for (auto& done : std::exchange(k.restart_ops, {})) done->complete(error_code{});
        return;
      }
      // One replacement at a time, loaded before the worker it replaces leaves: the key serves throughout.
      log_->info("coropool: key '{}' restarting worker {}", k.name, old->id);
      if (!start_worker_if_room(k)) {  // a replacement needs room of its own while the old worker serves
        for (auto& done : std::exchange(k.restart_ops, {})) done->complete(errc::memory_exhausted);
        k.restart_left.clear();
        return;
      }
      k.restarts.fetch_add(1, std::memory_order_relaxed);
      k.workers.back()->replaces = std::move(old);
    }
  }

  /// A restart's replacement failed to load: the workers left keep serving.
  void abort_restart(key_state& k) {
    k.restart_left.clear();
    for (auto& done : std::exchange(k.restart_ops, {})) done->complete(errc::spawn_failed);
  }

  /// Shutdown, step one: close every key. Queued requests still drain to
  /// their workers, which leave once their key's queue is empty.
  void close_keys() {
    for (key_state* k : all_keys()) {
      finish_all(*k, errc::shutting_down);
      std::vector<worker_record*> released;
      {
        std::lock_guard lock(k->mutex);
        k->closed = true;
        released = std::exchange(k->idle, {});
      }
      wake_released(released);
      if (k->loading == 0 && k->ready_workers.load(std::memory_order_relaxed) == 0) {
        fail_requests(*k, errc::shutting_down);  // nobody will serve them
      }
    }
  }

  /// Shutdown, at the deadline: what is left fails with shutting_down and
  /// every worker, loading or serving, is stopped.
  void abandon_work() {
    for (key_state* k : all_keys()) {
      fail_requests(*k, errc::shutting_down);
      for (auto& w : std::vector(k->workers)) request_stop(w, errc::shutting_down);  // it retires: copy the list
    }
    for (auto& w : std::vector(retired_)) request_stop(w, errc::shutting_down);
  }

  /// Starts shutdown, or joins the one under way; of several calls, the
  /// earliest deadline holds (a Pool destroyed during a long drain stops it now).
  void shutdown(clock::duration deadline, std::unique_ptr<completion<error_code>> op) {
    if (op) shutdown_ops_.push_back(std::move(op));
    if (!stopping_) {
      stopping_ = true;
      {
        std::lock_guard lock(keys_mutex_);  // see key_for
        stopping_flag_.store(true, std::memory_order_release);
      }
      log_->info("coropool: shutting down ({} worker(s) running)", live_workers_);
      close_keys();
    }
    const auto at = deadline_after(clock::now(), deadline);
    if (at < shutdown_deadline_ && live_workers_ > 0) {
      shutdown_deadline_ = at;
      if (deadline <= clock::duration::zero()) {
        shutdown_timer_.cancel();  // a later deadline's wait
        abandon_work();
      } else {                           // at < shutdown_deadline_ <= max(): a deadline that comes
        shutdown_timer_.expires_at(at);  // cancels a later deadline's wait
        shutdown_timer_.async_wait([self = shared_from_this()](error_code ec) {
          if (ec) return;
          self->log_->info("coropool: shutdown deadline reached, stopping {} worker(s)", self->live_workers_);
          self->abandon_work();
        });
      }
    }
    if (live_workers_ == 0) finish_shutdown();
  }

  void finish_shutdown() {
    shutdown_timer_.cancel();
    tick_timer_.cancel();
    if (!stopped_) {
      stopped_ = true;
      // Commands still in the inbox complete before it closes (close() would discard them).
      while (inbox_.try_receive([&](error_code, orchestrator_message m) {
        if (auto* c = std::get_if<command>(&m)) c->done->complete(errc::shutting_down);
      })) {
      }
      inbox_.close();
    }
    for (key_state* k : all_keys()) {
      std::lock_guard lock(k->mutex);
      k->timeout_timer.cancel();  // nothing is outstanding: let the timer's handler release the core
    }
    auto ops = std::exchange(shutdown_ops_, {});
    if (!ops.empty()) log_->info("coropool: shut down");
    for (auto& op : ops) op->complete(error_code{});
  }

  const executor executor_;
  const asio::execution_context& context_;
  const strand_type strand_;
  const PoolConfig config_;
  const std::shared_ptr<spdlog::logger> log_;
  const worker_body body_;

  // Guards the map's structure, so that any thread can look a key up; it is
  // written only on the strand and never held across a suspension.
  mutable std::mutex keys_mutex_;
  std::unordered_map<std::string, std::shared_ptr<key_state>> keys_;

  std::atomic<bool> stopping_flag_{false};  // stopping_, for submitters on any thread
  std::atomic<std::uint64_t> rejected_{0};  // refused before reaching a key

  // The memory governor (strand): bytes promised to spawns waiting for room,
  // and bytes that workers evicted for them will free when they end.
  std::shared_ptr<memory_governor> memory_;
  std::deque<key_state*> memory_waiting_;
  std::uint64_t promised_ = 0;
  std::uint64_t freeing_ = 0;
  std::atomic<pool_registry*> registry_{nullptr};
  std::optional<asio::thread_pool> compute_pool_;
  executor compute_executor_;

  bool stopping_ = false;
  std::size_t live_workers_ = 0;  // worker coroutines running, retired ones included
  std::uint64_t next_worker_id_ = 0;
  timer_type shutdown_timer_;
  clock::time_point shutdown_deadline_ = clock::time_point::max();  // the earliest asked for; max(): none
  bool stopped_ = false;                                            // shutdown has finished

  // Workers out of routing whose coroutines still run (stopping, or declared dead).
  std::vector<std::shared_ptr<worker_record>> retired_;

  // Maintenance.
  timer_type tick_timer_;
  bool tick_armed_ = false;
  static constexpr clock::time_point unset = clock::time_point::min();
  clock::time_point next_health_ = unset;
  clock::time_point next_maintenance_ = unset;
  std::uint64_t ping_sequence_ = 0;

  // The orchestrator's inbox: pongs and users' commands.
  static constexpr std::size_t inbox_capacity = 1024;
  inbox_channel inbox_;
  bool orchestrator_running_ = false;
  std::vector<std::unique_ptr<completion<error_code>>> shutdown_ops_;
};

}  // namespace coropool::detail
