#include "scenario.hpp"

#include <coropool.hpp>

#include "manual_clock.hpp"

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/strand.hpp>

#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <vector>

namespace coropool::testing {
namespace {

using namespace std::chrono_literals;
using duration = manual_clock::duration;
using time_point = manual_clock::time_point;

constexpr duration never = duration::max();

/// The durations a scenario draws from: the edges (1 ns, max()) among the ordinary.
constexpr std::array<duration, 9> durations{1ns, 1us, 1ms, 10ms, 100ms, 1s, 30s, 1h, never};

constexpr int key_count = 3;

/// The fuzzer's bytes, read front to back; zeros past the end.
class byte_reader {
 public:
  byte_reader(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
  bool empty() const noexcept { return next_ >= size_; }
  std::uint8_t byte() noexcept { return next_ < size_ ? data_[next_++] : 0; }
  std::size_t below(std::size_t n) noexcept { return n ? byte() % n : 0; }
  template <class T, std::size_t N>
  const T& pick(const std::array<T, N>& table) noexcept {
    return table[below(N)];
  }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t next_ = 0;
};

/// The scheduling dimensions (a request's own deadline and priority, the
/// levels, coalescing) drawn from a generator seeded with the whole input, not
/// from the byte stream: the corpus and the regression inputs, recorded
/// before these existed, decode the same operations as before, and the same
/// bytes still give the same run. libFuzzer steers them only through the
/// hash, which changes with every mutation.
class side_stream {
 public:
  /// `basis`: FNV-1a's offset basis, or another, for a stream of its own.
  side_stream(const std::uint8_t* data, std::size_t size, std::uint64_t basis = 0xcbf29ce484222325ULL) : state_(basis) {
    for (std::size_t i = 0; i < size; ++i) state_ = (state_ ^ data[i]) * 0x100000001b3ULL;  // FNV-1a
  }
  std::size_t below(std::size_t n) noexcept {
    state_ ^= state_ >> 12;  // xorshift64*
    state_ ^= state_ << 25;
    state_ ^= state_ >> 27;
    return n ? static_cast<std::size_t>((state_ * 0x2545F4914F6CDD1DULL) >> 33) % n : 0;
  }
  template <class T, std::size_t N>
  const T& pick(const std::array<T, N>& table) noexcept {
    return table[below(N)];
  }

 private:
  std::uint64_t state_;
};

enum class load_kind : std::uint8_t { ok, fails, hangs, slow };
enum class handle_kind : std::uint8_t { answer, throws, slow, hangs, stuck, throws_non_std, dies };
enum class caller_kind : std::uint8_t { submit, try_submit, stream, wait, command, shutdown };

const char* name(load_kind k) {
  constexpr const char* names[] = {"ok", "fails", "hangs", "slow"};
  return names[static_cast<int>(k)];
}
const char* name(handle_kind k) {
  constexpr const char* names[] = {"answer", "throws", "slow", "hangs", "stuck", "throws_non_std", "dies"};
  return names[static_cast<int>(k)];
}
const char* name(caller_kind k) {
  constexpr const char* names[] = {"submit", "try_submit", "submit_stream", "wait_for_workers", "command", "shutdown"};
  return names[static_cast<int>(k)];
}

std::string key_name(int key) { return key < 0 ? std::string() : "k" + std::to_string(key); }

std::string describe(duration d) {
  if (d == never) return "max()";
  std::ostringstream out;
  out << std::chrono::duration_cast<std::chrono::nanoseconds>(d).count() << "ns";
  return out.str();
}

struct Request {
  int id = 0;
  handle_kind kind = handle_kind::answer;
};

/// The worker strand whose next default-constructed Response throws: the
/// worker's own code (its loop, not the handler) then throws, and its
/// coroutine dies holding the request it just took. Set by a `dies` handler.
std::optional<asio::strand<asio::any_io_executor>> doomed;

struct Response {
  int value = 0;
  Response() {
    if (doomed && doomed->running_in_this_thread()) {
      doomed.reset();
      throw std::runtime_error("the worker's own code threw");
    }
  }
  explicit Response(int v) : value(v) {}
};

struct Model {
  int key;
};

/// What a handler of the scenario throws; carries the request it failed.
struct handler_failure : std::runtime_error {
  explicit handler_failure(int request) : std::runtime_error("handler failed"), id(request) {}
  int id;
};

/// What a batch handler throws as a whole (batching): carries the requests of its batch.
struct batch_failure : std::runtime_error {
  explicit batch_failure(std::vector<int> requests) : std::runtime_error("batch failed"), ids(std::move(requests)) {}
  std::vector<int> ids;
};

/// What a failing load throws.
struct load_failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

using SimPool = Pool<Request, Response>;

struct caller {
  caller(caller_kind what, int key_index) : kind(what), key(key_index) {}

  caller_kind kind;
  int key;  // -1: the empty key
  handle_kind behaviour = handle_kind::answer;
  int request_id = 0;  // the Request it submitted: its own id, or an earlier caller's it repeats (coalescing)
  time_point at;
  time_point deadline = time_point::max();  // its own (SubmitOptions), as the pool computes it
  bool bad_options = false;                 // a timeout not positive, or a priority beyond the levels
  duration timeout{};                       // a wait's
  bool cancelled = false;
  int completions = 0;
  bool abandoned = false;
  bool stream_started = false;
  int chunks = 0;
  std::string outcome;  // for the trace
  std::unique_ptr<asio::cancellation_signal> signal = std::make_unique<asio::cancellation_signal>();
  std::optional<Stream<Response>> stream;
};

/// The model's per-key knowledge: what the loads and handlers did, and the
/// callers' outcomes tallied by the bucket KeyStats must count them in.
struct key_model {
  load_kind next_load = load_kind::ok;
  int loads_started = 0, loads_ok = 0, loads_failed = 0;
  int risky_runs = 0;  // handler runs that may count against the breaker: anything but a plain answer
  int dies_served = 0;
  std::uint64_t values = 0, timeouts = 0, aborted = 0, others = 0;
};

class scenario {
 public:
  scenario(const std::uint8_t* data, std::size_t size)
      : in_(data, size), side_(data, size), batch_side_(data, size, 0x84222325cbf29ce4ULL) {}

  scenario(const scenario&) = delete;
  scenario& operator=(const scenario&) = delete;

  ~scenario() {
    // Unwinding after a violation: tear down in the order a program would.
    dying_ = true;
    pool_.reset();
    for (auto& c : callers_) c.stream.reset();
    drop_context();
  }

  scenario_report run() {
    manual_clock::reset();
    doomed.reset();
    ioc_.emplace(1);
    PoolConfig config = decode_config();
    try {
      SimPool::Options options(config);
      if (coalescing_) {
        options.coalesce_key = [](const Request& r) -> std::optional<std::string> {
          return std::to_string(r.id) + "/" + name(r.kind);
        };
      }
      if (!batching_) {
        pool_.emplace(*ioc_, std::move(options), loader(), handler(), stream_handler());
      } else if (batch_single_) {
        pool_.emplace(*ioc_, std::move(options), loader(), batched(batch_handler(), handler()), stream_handler());
      } else {
        pool_.emplace(*ioc_, std::move(options), loader(), batched(batch_handler()), stream_handler());
      }
    } catch (const boost::system::system_error& e) {
      require(e.code() == errc::invalid_argument, "a config out of range is refused with invalid_argument");
      require(!config_valid_, "a valid config was refused: " + std::string(e.what()));
      report_.config_rejected = true;
      return report_;
    }
    require(config_valid_, "a config out of range was accepted");
    config_ = pool_->config();
    for (std::size_t step = 0; step < max_steps && !in_.empty() && ioc_; ++step) {
      operate();
      ++report_.operations;
      if (ioc_) settle(manual_clock::now());
    }
    finish();
    return report_;
  }

 private:
  static constexpr std::size_t max_steps = 64;

  // --- decoding ---

  PoolConfig decode_config() {
    static const auto silent = std::make_shared<spdlog::logger>("sim", std::make_shared<spdlog::sinks::null_sink_mt>());
    PoolConfig c;
    c.logger = silent;
    c.compute_executor = ioc_->get_executor();  // no thread of its own: the run stays on this one
    c.cold_start_workers = 1 + in_.below(3);
    c.max_workers_per_key = c.cold_start_workers + in_.below(3);
    c.min_workers_per_key = in_.below(c.max_workers_per_key + 1);
    c.queue_capacity = in_.pick(std::array<std::size_t, 4>{1, 2, 3, 100});
    c.stream_buffer = in_.pick(std::array<std::size_t, 2>{1, 4});
    c.request_timeout = in_.pick(durations);
    c.spawn_timeout = in_.pick(durations);
    const std::size_t health = in_.below(durations.size());
    c.health_interval = durations[health];
    c.health_timeout = durations[health + in_.below(durations.size() - health)];
    c.idle_timeout = in_.pick(durations);
    c.maintenance_interval = in_.pick(durations);
    c.open_duration = in_.pick(durations);
    c.failure_threshold = in_.pick(std::array<std::size_t, 4>{0, 1, 2, 5});
    c.half_open_probes = 1 + in_.below(3);
    footprint_ = in_.pick(std::array<std::uint64_t, 3>{0, 100, 100});
    budget_ = in_.pick(std::array<std::uint64_t, 5>{50, 100, 250, 1000, 0});
    if (footprint_) c.worker_footprint = [fp = footprint_](const std::string&) { return fp; };
    c.memory_budget = budget_;
    c.on_memory_change = [this](std::uint64_t reserved, std::uint64_t budget) {
      if (reserved > budget) violation("memory reserved " + std::to_string(reserved) + " over the budget");
    };
    if (in_.below(4) == 0) c.warm_keys = {"k0"};
    // Now and then a config out of range, which the constructor must refuse.
    if (in_.below(32) == 0) {
      config_valid_ = false;
      switch (in_.below(5)) {
        case 0:
          c.cold_start_workers = 0;
          break;
        case 1:
          c.queue_capacity = 0;
          break;
        case 2:
          c.request_timeout = duration::zero();
          break;
        case 3:
          c.health_timeout = c.health_interval / 2;
          break;
        default:
          c.warm_keys = {""};
          break;
      }
    }
    // Scheduling (from the side stream: see side_stream).
    const std::array<std::vector<unsigned>, 4> weights{std::vector<unsigned>{8, 4, 2, 1, 1}, std::vector<unsigned>{1},
                                                       std::vector<unsigned>{1, 1}, std::vector<unsigned>{3, 1}};
    c.priority_weights = side_.pick(weights);
    if (side_.below(3) == 0) c.max_request_timeout = std::max(c.request_timeout, side_.pick(durations));
    coalescing_ = side_.below(2) == 0;
    // Batching, from a side stream of its own: the draws above, and every
    // request's, are those of the inputs recorded before batching existed.
    batching_ = batch_side_.below(3) == 0;
    if (batching_) {
      c.batching.max_batch_size = batch_side_.pick(std::array<std::size_t, 3>{2, 3, 8});
      c.batching.max_batch_delay = batch_side_.pick(std::array<duration, 5>{0ns, 1us, 1ms, 10ms, 100ms});
      batch_single_ = batch_side_.below(2) == 0;
      if (config_valid_ && batch_side_.below(32) == 0) {
        config_valid_ = false;
        c.batching.max_batch_size = batch_side_.below(2) ? 0 : 65537;
      }
    }
    if (config_valid_ && side_.below(64) == 0) {
      config_valid_ = false;
      switch (side_.below(3)) {
        case 0:
          c.priority_weights = {};
          break;
        case 1:
          c.priority_weights = {2, 0};
          break;
        default:
          c.max_request_timeout = c.request_timeout / 2;  // 0 when request_timeout is 1 ns: out of range too
          break;
      }
    }
    // Time steps are capped so that the fastest periodic timer fires a bounded number of times per step.
    tick_ = std::min(c.health_interval, c.maintenance_interval);
    trace("config: cold " + std::to_string(c.cold_start_workers) + ", max " + std::to_string(c.max_workers_per_key) +
          ", min " + std::to_string(c.min_workers_per_key) + ", capacity " + std::to_string(c.queue_capacity) +
          ", request_timeout " + describe(c.request_timeout) + ", spawn_timeout " + describe(c.spawn_timeout) +
          ", health " + describe(c.health_interval) + "/" + describe(c.health_timeout) + ", idle " +
          describe(c.idle_timeout) + ", maintenance " + describe(c.maintenance_interval) + ", open " +
          describe(c.open_duration) + ", threshold " + std::to_string(c.failure_threshold) + ", probes " +
          std::to_string(c.half_open_probes) + ", footprint " + std::to_string(footprint_) + ", budget " +
          std::to_string(budget_) + (c.warm_keys.empty() ? "" : ", warm k0") +
          (batching_ ? ", batches of " + std::to_string(c.batching.max_batch_size) + " after " +
                           describe(c.batching.max_batch_delay) + (batch_single_ ? " (and a single handler)" : "")
                     : std::string()) +
          (config_valid_ ? "" : " (invalid)"));
    return c;
  }

  int decode_key() {
    const std::size_t k = in_.below(4 * key_count + 1);
    return k == 4 * key_count ? -1 : static_cast<int>(k % key_count);
  }

  // --- operations ---

  void operate() {
    const std::size_t op = in_.below(100);
    if (op < 30) return submit(caller_kind::submit);
    if (op < 40) return submit(caller_kind::try_submit);
    if (op < 47) return submit(caller_kind::stream);
    if (op < 59) return cancel();
    if (op < 66) return wait();
    if (op < 73) return set_load();
    if (op < 87) return run_for();
    if (op < 90) return command(detail::command::kind::scale);
    if (op < 92) return command(detail::command::kind::evict);
    if (op < 95) return command(detail::command::kind::restart);
    if (op < 98) return shutdown();
    if (op < 99) return destroy_pool();
    return destroy_context();
  }

  int add_caller(caller_kind kind, int key) {
    callers_.emplace_back(kind, key);
    callers_.back().at = manual_clock::now();
    ++report_.callers;
    return static_cast<int>(callers_.size() - 1);
  }

  /// The guard of a caller's handler: when the last copy of the handler is
  /// destroyed without having been called, the caller was abandoned, which
  /// only the destruction of the execution context may do.
  struct completion_guard {
    completion_guard(scenario* owner, int caller_id) : s(owner), id(caller_id) {}
    completion_guard(const completion_guard&) = delete;
    completion_guard& operator=(const completion_guard&) = delete;

    scenario* s;
    int id;
    bool called = false;
    ~completion_guard() {
      if (!called) s->abandoned(id);
    }
  };

  void submit(caller_kind kind) {
    const int key = decode_key();
    const auto behaviour = static_cast<handle_kind>(in_.below(7));
    if (!pool_) return;
    const int id = add_caller(kind, key);
    caller& c = callers_[id];
    c.behaviour = behaviour;
    trace("#" + std::to_string(id) + " " + name(kind) + " " + key_name(key) + " handler " + name(behaviour));
    Request request{id, behaviour};
    if (coalescing_ && kind != caller_kind::stream && !requests_.empty() && side_.below(3) != 0) {
      // Repeat one of the latest requests, so that identical requests meet while one still waits.
      const auto& earlier =
          callers_[requests_[requests_.size() - 1 - side_.below(std::min<std::size_t>(requests_.size(), 3))]];
      request = Request{earlier.request_id, earlier.behaviour};
      c.behaviour = earlier.behaviour;
      trace("  repeats #" + std::to_string(earlier.request_id) + "'s request (" + name(earlier.behaviour) + ")");
    }
    c.request_id = request.id;
    if (kind != caller_kind::stream) requests_.push_back(id);
    const SubmitOptions options = decode_options(c);
    if (kind == caller_kind::stream) {
      c.stream.emplace(pool_->submit_stream(key_name(key), request, options));
      read_stream(id, std::make_shared<completion_guard>(this, id));
      return;
    }
    auto done = asio::bind_cancellation_slot(
        c.signal->slot(), [g = std::make_shared<completion_guard>(this, id)](std::exception_ptr e, Response r) {
          g->called = true;
          g->s->request_done(g->id, std::move(e), r);
        });
    if (kind == caller_kind::submit) {
      pool_->async_submit(key_name(key), request, options, std::move(done));
    } else {
      pool_->async_try_submit(key_name(key), request, options, std::move(done));
    }
  }

  /// A request's own options, and the deadline the pool is to give it.
  SubmitOptions decode_options(caller& c) {
    SubmitOptions o;
    c.deadline = deadline_after(c.at, std::min(config_.request_timeout, config_.max_request_timeout));
    const std::size_t levels = config_.priority_weights.size();
    switch (side_.below(8)) {
      case 0:
        o.timeout = side_.pick(durations);
        c.deadline = deadline_after(c.at, std::min(*o.timeout, config_.max_request_timeout));
        break;
      case 1:
        o.deadline = deadline_after(c.at, side_.pick(durations));
        c.deadline = std::min(c.deadline, *o.deadline);
        break;
      case 2:
        o.deadline = c.at - 1ms;  // passed already
        c.deadline = *o.deadline;
        break;
      case 3:
        o.timeout = side_.below(2) ? duration::zero() : -1s;
        c.bad_options = true;
        break;
      default:
        break;
    }
    if (side_.below(2) == 0) {
      o.priority = static_cast<unsigned>(side_.below(levels + 1));  // one beyond the levels now and then
      if (*o.priority >= levels) c.bad_options = true;
    }
    trace("  options: deadline " +
          (c.deadline == time_point::max() ? std::string("never") : describe(c.deadline - c.at)) +
          (o.priority ? ", priority " + std::to_string(*o.priority) : "") + (c.bad_options ? " (invalid)" : ""));
    return o;
  }

  void read_stream(int id, std::shared_ptr<completion_guard> g) {
    // Bound to the context: a Stream's reader otherwise completes on the system executor, another thread.
    callers_[id].stream->async_next(
        asio::bind_executor(*ioc_, [g](std::exception_ptr e, std::optional<Response> chunk) {
          scenario& s = *g->s;
          caller& c = s.callers_[g->id];
          if (!e && chunk) {
            if (chunk->value != g->id * 10 + c.chunks)
              s.violation("stream #" + std::to_string(g->id) + " chunk out of order");
            ++c.chunks;
            return s.read_stream(g->id, g);
          }
          g->called = true;
          s.request_done(g->id, std::move(e), Response(0));
        }));
  }

  void cancel() {
    const std::size_t pick = in_.byte();
    if (callers_.empty()) return;
    const int id = static_cast<int>(pick % callers_.size());
    caller& c = callers_[id];
    if (c.kind == caller_kind::command || c.kind == caller_kind::shutdown) return;
    trace("cancel #" + std::to_string(id) + (c.completions ? " (completed already)" : ""));
    if (!c.completions) c.cancelled = true;
    if (c.kind == caller_kind::stream) {
      if (c.stream) c.stream->close();
    } else {
      c.signal->emit(asio::cancellation_type::terminal);
    }
  }

  void wait() {
    const int key = decode_key();
    const duration timeout = in_.pick(durations);
    if (!pool_) return;
    const int id = add_caller(caller_kind::wait, key);
    callers_[id].timeout = timeout;
    trace("#" + std::to_string(id) + " wait_for_workers " + key_name(key) + " " + describe(timeout));
    pool_->async_wait_for_workers(
        key_name(key), timeout,
        asio::bind_cancellation_slot(callers_[id].signal->slot(),
                                     [g = std::make_shared<completion_guard>(this, id)](error_code ec) {
                                       g->called = true;
                                       g->s->wait_done(g->id, ec);
                                     }));
  }

  void set_load() {
    const int key = static_cast<int>(in_.below(key_count));
    const auto kind = static_cast<load_kind>(in_.below(4));
    keys_[key].next_load = kind;
    trace("loads of " + key_name(key) + ": " + name(kind));
  }

  void run_for() {
    duration d = in_.pick(durations);
    if (d == never) d = 1h;
    // The fastest periodic timer fires at most ~100 times per step: time still
    // moves far (an hour at 1 min intervals), and a run stays fast enough to fuzz.
    if (tick_ != never && d / 100 > tick_) d = tick_ * 100;
    trace("run for " + describe(d));
    settle(manual_clock::after(d));
  }

  void command(detail::command::kind what) {
    const int key = decode_key();
    const std::size_t workers = in_.below(config_.max_workers_per_key + 2);
    if (!pool_) return;
    const int id = add_caller(caller_kind::command, key);
    auto done = [g = std::make_shared<completion_guard>(this, id), what, workers](error_code ec) {
      g->called = true;
      g->s->command_done(g->id, what, workers, ec);
    };
    switch (what) {
      case detail::command::kind::scale:
        trace("#" + std::to_string(id) + " scale " + key_name(key) + " to " + std::to_string(workers));
        return pool_->async_scale(key_name(key), workers, std::move(done));
      case detail::command::kind::evict:
        trace("#" + std::to_string(id) + " evict " + key_name(key));
        return pool_->async_evict(key_name(key), std::move(done));
      case detail::command::kind::restart:
        trace("#" + std::to_string(id) + " restart " + key_name(key));
        return pool_->async_restart(key_name(key), std::move(done));
    }
  }

  void shutdown() {
    const duration deadline = in_.below(4) == 0 ? duration::zero() : in_.pick(durations);
    if (!pool_) return;
    start_shutdown(deadline);
  }

  void start_shutdown(duration deadline) {
    const int id = add_caller(caller_kind::shutdown, -1);
    trace("#" + std::to_string(id) + " async_shutdown " + describe(deadline));
    stopping_ = true;
    pool_->async_shutdown(deadline, [g = std::make_shared<completion_guard>(this, id)](error_code ec) {
      g->called = true;
      g->s->shutdown_done(g->id, ec);
    });
  }

  void destroy_pool() {
    if (!pool_) return;
    trace("destroy the pool");
    stopping_ = true;
    pool_.reset();
  }

  void destroy_context() {
    trace("destroy the context");
    destroy_pool();
    dying_ = true;
    for (auto& c : callers_) {  // I/O objects go before their context: their readers leave
      if (c.stream && !c.completions) c.cancelled = true;
      c.stream.reset();
    }
    drop_context();
    report_.context_destroyed = true;
  }

  // --- the workers' code ---

  std::function<asio::awaitable<Model>(const std::string&)> loader() {
    return [this](const std::string& key) -> asio::awaitable<Model> {
      const int k = key.back() - '0';
      key_model& m = keys_[k];
      ++m.loads_started;
      const load_kind kind = m.next_load;
      try {
        auto ex = co_await asio::this_coro::executor;
        switch (kind) {
          case load_kind::ok:
            break;
          case load_kind::fails:
            throw load_failure("load of " + key);
          case load_kind::hangs: {
            manual_timer t(ex, never);
            co_await t.async_wait(asio::use_awaitable);  // until cancelled
            break;
          }
          case load_kind::slow: {
            manual_timer t(ex, 20ms);
            co_await t.async_wait(asio::use_awaitable);
            break;
          }
        }
      } catch (...) {
        ++m.loads_failed;
        throw;
      }
      ++m.loads_ok;
      co_return Model{k};
    };
  }

  std::function<asio::awaitable<Response>(Model&, Request)> handler() {
    return [this](Model& model, Request request) -> asio::awaitable<Response> {
      if (request.kind != handle_kind::answer) ++keys_[model.key].risky_runs;
      trace("  #" + std::to_string(request.id) + " handled");
      co_await behave(model, request);
      co_return Response(request.id + 1);
    };
  }

  /// Batches: each item as handler() would serve it alone, except that the
  /// item that makes its handler wait longest (hangs, stuck, slow) makes the
  /// whole batch wait so; `dies` answers (the worker's own code throwing is
  /// left to single requests). Now and then the whole batch throws, or
  /// answers one result short, by the first request's id.
  std::function<asio::awaitable<std::vector<outcome<Response>>>(Model&, std::span<Request>)> batch_handler() {
    return [this](Model& model, std::span<Request> requests) -> asio::awaitable<std::vector<outcome<Response>>> {
      std::vector<int> ids;
      for (const Request& r : requests) {
        if (r.kind != handle_kind::answer) ++keys_[model.key].risky_runs;
        ids.push_back(r.id);
      }
      trace("  batch of " + std::to_string(requests.size()) + " handled, from #" + std::to_string(ids.front()));
      const bool whole_batch_fails = requests.size() > 1 && ids.front() % 7 == 3;
      const bool one_short = requests.size() > 1 && ids.front() % 11 == 5;
      if (whole_batch_fails || one_short) ++keys_[model.key].risky_runs;  // counts once against the breaker
      if (whole_batch_fails) throw batch_failure(ids);
      // The longest wait of its items is the batch's: hangs, then stuck, then slow.
      const Request* waits = nullptr;
      for (handle_kind kind : {handle_kind::hangs, handle_kind::stuck, handle_kind::slow}) {
        for (const Request& r : requests) {
          if (!waits && r.kind == kind) waits = &r;
        }
      }
      if (waits) co_await behave(model, *waits);
      std::vector<outcome<Response>> results;
      for (const Request& r : requests) {
        if (r.kind == handle_kind::throws) {
          results.emplace_back(std::make_exception_ptr(handler_failure(r.id)));
        } else if (r.kind == handle_kind::throws_non_std) {
          results.emplace_back(std::make_exception_ptr(r.id));
        } else {
          results.emplace_back(Response(r.id + 1));
        }
      }
      if (one_short) results.pop_back();
      co_return results;
    };
  }

  std::function<asio::awaitable<void>(Model&, Request, StreamWriter<Response>&)> stream_handler() {
    return [this](Model& model, Request request, StreamWriter<Response>& out) -> asio::awaitable<void> {
      callers_[request.id].stream_started = true;
      if (request.kind != handle_kind::answer) ++keys_[model.key].risky_runs;
      const std::string who = "  #" + std::to_string(request.id);
      trace(who + " stream started");
      try {
        co_await out.write(Response(request.id * 10));
        co_await behave(model, request);
        co_await out.write(Response(request.id * 10 + 1));
      } catch (const boost::system::system_error& e) {
        trace(who + " stream handler ends with " + e.code().message());
        throw;
      }
    };
  }

  asio::awaitable<void> behave(Model& model, const Request& request) {
    auto ex = co_await asio::this_coro::executor;
    switch (request.kind) {
      case handle_kind::answer:
        break;
      case handle_kind::throws:
        throw handler_failure(request.id);
      case handle_kind::slow: {
        manual_timer t(ex, 10ms);
        co_await t.async_wait(asio::use_awaitable);
        break;
      }
      case handle_kind::hangs: {
        manual_timer t(ex, never);
        co_await t.async_wait(asio::use_awaitable);  // until the worker is stopped
        break;
      }
      case handle_kind::stuck: {
        manual_timer t(ex, 1h);  // deaf to cancellation
        co_await t.async_wait(asio::bind_cancellation_slot(asio::cancellation_slot(), asio::use_awaitable));
        break;
      }
      case handle_kind::throws_non_std:
        throw request.id;
      case handle_kind::dies:
        ++keys_[model.key].dies_served;
        doomed = *ex.target<asio::strand<asio::any_io_executor>>();
        break;
    }
  }

  // --- the model's checks ---

  void require(bool ok, const std::string& what) {
    if (!ok) violation(what);
  }

  /// Records a broken promise; thrown at the end of the current step
  /// (destructors and Asio's handlers may find one too).
  void violation(const std::string& what) {
    if (violations_.empty()) violations_.push_back(what);
  }

  void throw_violations() {
    if (violations_.empty()) return;
    std::ostringstream out;
    out << violations_.front() << "\nafter:\n";
    for (const auto& line : trace_) out << "  " << line << "\n";
    violations_.clear();
    throw model_violation(out.str());
  }

  void trace(std::string line) { trace_.push_back(std::move(line)); }

  void abandoned(int id) {
    caller& c = callers_[id];
    c.abandoned = true;
    if (!dying_) violation("#" + std::to_string(id) + " (" + name(c.kind) + ") was dropped without being completed");
  }

  caller& completed(int id, const std::string& outcome) {
    caller& c = callers_[id];
    c.outcome = outcome;
    trace("  #" + std::to_string(id) + " -> " + outcome);
    if (++c.completions > 1) violation("#" + std::to_string(id) + " completed twice");
    return c;
  }

  /// The errors a request of `c` may complete with, given what the model
  /// knows now: each names the fact that allows it.
  bool pool_error_allowed(const caller& c, error_code ec) const {
    const key_model* k = c.key >= 0 ? &keys_[c.key] : nullptr;
    const time_point now = manual_clock::now();
    if (ec == asio::error::operation_aborted) return c.cancelled;
    if (ec == errc::shutting_down) return stopping_;
    if (ec == errc::invalid_argument) return c.key < 0 || c.bad_options;
    if (!k) return false;
    if (ec == errc::request_timeout) return now >= c.deadline && !c.stream_started;
    if (ec == errc::queue_full) return c.kind == caller_kind::try_submit;
    if (ec == errc::circuit_open) {
      return config_.failure_threshold > 0 &&
             static_cast<std::size_t>(k->loads_failed + k->risky_runs) >= config_.failure_threshold;
    }
    if (ec == errc::memory_exhausted) return footprint_ > 0;
    if (ec == errc::worker_lost) return k->dies_served > 0;
    if (ec == errc::spawn_failed) return k->loads_failed > 0;
    return false;
  }

  static detail::clock::time_point deadline_after(time_point from, duration d) {
    return detail::deadline_after(from, d);
  }

  void request_done(int id, std::exception_ptr e, const Response& r) {
    caller& c = callers_[id];
    const std::string who =
        "#" + std::to_string(id) + " (" + name(c.kind) + " " + key_name(c.key) + ", " + name(c.behaviour) + ")";
    key_model* k = c.key >= 0 ? &keys_[c.key] : nullptr;
    if (!e) {
      completed(id, "answered");
      const bool answers = c.behaviour == handle_kind::answer || c.behaviour == handle_kind::slow ||
                           c.behaviour == handle_kind::stuck || c.behaviour == handle_kind::dies;
      require(answers, who + " answered, but its handler does not");
      if (c.kind == caller_kind::stream) {
        require(c.stream_started && c.chunks == 2, who + " ended without its two chunks");
      } else {
        require(r.value == c.request_id + 1, who + " got another request's answer");
      }
      if (k && c.kind != caller_kind::stream) ++k->values;
      tally_stream(c, k);
      return;
    }
    try {
      std::rethrow_exception(e);
    } catch (const spawn_error& error) {
      completed(id, "spawn_failed");
      require(pool_error_allowed(c, errc::spawn_failed), who + " got spawn_failed, but no load of its key failed");
      bool cause_is_load = false;
      try {
        std::rethrow_exception(error.cause());
      } catch (const load_failure&) {
        cause_is_load = true;
      } catch (const boost::system::system_error& cause) {
        cause_is_load = cause.code() == asio::error::operation_aborted;  // a hung load that was stopped
      } catch (...) {
      }
      require(cause_is_load, who + "'s spawn_error does not carry the load's exception");
      if (k && c.kind != caller_kind::stream) ++k->others;
    } catch (const batch_failure& failure) {
      completed(id, "its batch's exception");
      require(batching_ && std::find(failure.ids.begin(), failure.ids.end(), c.request_id) != failure.ids.end(),
              who + " got the exception of a batch it was not in");
      if (k && c.kind != caller_kind::stream) ++k->others;
    } catch (const std::logic_error& error) {
      completed(id, error.what());
      require(batching_ && std::string(error.what()).starts_with("coropool: the batch handler returned"),
              who + " completed with a logic_error nobody threw: " + error.what());
      if (k && c.kind != caller_kind::stream) ++k->others;
    } catch (const handler_failure& failure) {
      completed(id, "the handler's exception");
      require(c.behaviour == handle_kind::throws && failure.id == c.request_id,
              who + " got a handler exception not its own");
      if (k && c.kind != caller_kind::stream) ++k->others;
    } catch (const boost::system::system_error& error) {
      completed(id, error.code().message());
      require(pool_error_allowed(c, error.code()),
              who + " completed with " + error.code().message() + ", which the model does not allow here");
      const bool refused_before_key = !k || (c.bad_options && error.code() == errc::invalid_argument);
      if (!refused_before_key && c.kind != caller_kind::stream) {
        if (error.code() == errc::request_timeout) {
          ++k->timeouts;
        } else if (error.code() == asio::error::operation_aborted) {
          ++k->aborted;
        } else {
          ++k->others;
        }
      }
      if (refused_before_key && c.kind != caller_kind::stream) ++pool_refused_;
    } catch (int value) {
      completed(id, "the handler's int");
      require(c.behaviour == handle_kind::throws_non_std && value == c.request_id,
              who + " got a non-std exception not its own");
      if (k && c.kind != caller_kind::stream) ++k->others;
    } catch (const std::exception& other) {
      completed(id, other.what());
      violation(who + " completed with an exception nobody threw: " + other.what());
    }
    if (c.kind == caller_kind::stream) tally_stream(c, k, e);
  }

  /// A stream counts in KeyStats as completed once a worker has started it;
  /// before that, in the bucket of the error that ended it.
  void tally_stream(const caller& c, key_model* k, const std::exception_ptr& e = nullptr) {
    if (c.kind != caller_kind::stream) return;
    if (!k || (c.bad_options && !c.stream_started)) {
      ++pool_refused_;
      return;
    }
    if (c.stream_started) return;  // counted when it started (see reconcile)
    error_code ec;
    try {
      if (e) std::rethrow_exception(e);
    } catch (const boost::system::system_error& error) {
      ec = error.code();
    } catch (...) {
    }
    if (ec == errc::request_timeout) {
      ++k->timeouts;
    } else if (ec == asio::error::operation_aborted) {
      ++k->aborted;
    } else {
      ++k->others;
    }
  }

  void wait_done(int id, error_code ec) {
    caller& c = completed(id, ec ? ec.message() : "ready");
    const std::string who = "#" + std::to_string(id) + " (wait_for_workers " + key_name(c.key) + ")";
    if (!ec) return require(c.key >= 0 && keys_[c.key].loads_ok > 0, who + " was ready, but no load succeeded");
    if (ec == errc::spawn_timeout) {
      return require(manual_clock::now() >= deadline_after(c.at, c.timeout), who + " timed out before its deadline");
    }
    require(ec != errc::request_timeout && ec != errc::queue_full && pool_error_allowed(c, ec),
            who + " completed with " + ec.message() + ", which the model does not allow here");
  }

  void command_done(int id, detail::command::kind what, std::size_t workers, error_code ec) {
    caller& c = completed(id, ec ? ec.message() : "done");
    const std::string who = "#" + std::to_string(id) + " (command on " + key_name(c.key) + ")";
    if (!ec || ec == errc::shutting_down) return require(!ec || stopping_, who + " refused, but no shutdown began");
    if (ec == errc::invalid_argument) {
      return require(c.key < 0 || (what == detail::command::kind::scale && workers > config_.max_workers_per_key),
                     who + " refused as invalid");
    }
    if (ec == errc::spawn_failed) return require(c.key >= 0 && keys_[c.key].loads_failed > 0, who + " spawn_failed");
    if (ec == errc::memory_exhausted) return require(footprint_ > 0, who + " memory_exhausted without a footprint");
    violation(who + " completed with " + ec.message());
  }

  void shutdown_done(int id, error_code ec) {
    completed(id, ec ? ec.message() : "shut down");
    require(!ec, "async_shutdown completed with an error");
    shutdown_done_ = true;
    // Every coroutine of the pool has finished: every request has its outcome.
    for (std::size_t i = 0; i < callers_.size(); ++i) {
      const caller& c = callers_[i];
      if ((c.kind == caller_kind::submit || c.kind == caller_kind::try_submit || c.kind == caller_kind::wait) &&
          !c.completions) {
        violation("the shutdown completed before #" + std::to_string(i) + " (" + name(c.kind) + ")");
      }
    }
  }

  /// The counters, bucket by bucket, against the callers' outcomes.
  void reconcile(const PoolStats& stats) {
    std::uint64_t others = pool_refused_;
    std::uint64_t counted_others = stats.rejected;
    for (int key = 0; key < key_count; ++key) {
      const key_model& k = keys_[key];
      others += k.others;
      std::uint64_t pending = 0;  // accepted and not yet claimed (a started stream is claimed)
      std::uint64_t streams_started = 0;
      for (const auto& c : callers_) {
        if (c.key == key && c.kind == caller_kind::stream && c.stream_started) ++streams_started;
        if (c.key == key && !c.completions &&
            (c.kind == caller_kind::submit || c.kind == caller_kind::try_submit ||
             (c.kind == caller_kind::stream && !c.stream_started))) {
          ++pending;
        }
      }
      auto it = stats.keys.find(key_name(key));
      if (it == stats.keys.end()) {
        // (A refusal at shutdown may come before the key exists: `others` is reconciled pool-wide.)
        require(k.values + k.timeouts + k.aborted + streams_started == 0, key_name(key) + " has outcomes but no stats");
        continue;
      }
      const KeyStats& s = it->second;
      counted_others += s.failed + s.rejected;
      const std::string where = key_name(key) + ": ";
      require(s.completed == k.values + streams_started, where + "completed " + std::to_string(s.completed) +
                                                             ", callers answered " + std::to_string(k.values) +
                                                             " and streams started " + std::to_string(streams_started));
      require(s.timed_out == k.timeouts,
              where + "timed_out " + std::to_string(s.timed_out) + ", callers timed out " + std::to_string(k.timeouts));
      require(s.expired_before_dispatch + s.expired_in_handler == s.timed_out,
              where + "expired before dispatch " + std::to_string(s.expired_before_dispatch) + " and in the handler " +
                  std::to_string(s.expired_in_handler) + " do not add up to timed_out");
      require(s.cancelled == k.aborted,
              where + "cancelled " + std::to_string(s.cancelled) + ", callers cancelled " + std::to_string(k.aborted));
      require(s.submitted - (s.completed + s.failed + s.timed_out + s.cancelled) == pending,
              where + "outstanding requests " +
                  std::to_string(s.submitted - (s.completed + s.failed + s.timed_out + s.cancelled)) +
                  ", callers waiting " + std::to_string(pending));
      require(s.loads >= static_cast<std::uint64_t>(k.loads_started), where + "loads uncounted");
      if (config_.failure_threshold == 0)
        require(s.breaker == breaker_state::closed, where + "a disabled breaker opened");
    }
    const KeyStats all = stats.total();
    report_.coalesced = all.coalesced;
    for (std::size_t n = 2; n < all.batch_sizes.size(); ++n) report_.batches_of_more_than_one += all.batch_sizes[n];
    report_.expired_before_dispatch = all.expired_before_dispatch;
    report_.expired_in_handler = all.expired_in_handler;
    require(counted_others == others,
            "failed + rejected " + std::to_string(counted_others) + ", callers with errors " + std::to_string(others));
  }

  void check_step() {
    if (pool_) {
      reconcile(pool_->stats());
      for (int key = 0; key < key_count; ++key) {
        require(pool_->live_worker_count(key_name(key)) <= config_.max_workers_per_key + 1,
                key_name(key) + " has more workers than max_workers_per_key allows");
      }
    }
    throw_violations();
  }

  void settle(time_point until) {
    try {
      report_.handlers_run += run_until(*ioc_, until);
    } catch (const spin_detected& spin) {
      violation(std::string("the io_context spins: ") + spin.what());
    }
    check_step();
  }

  /// The end: shut down (if nobody did), destroy the pool, run out the
  /// clock; then every caller has its outcome and the context has no work.
  void finish() {
    if (ioc_) {
      if (pool_) {
        start_shutdown(1s);
        settle(manual_clock::after(3h));
        require(shutdown_done_, "async_shutdown(1s) did not complete within 3 hours");
        reconcile(pool_->stats());
        destroy_pool();
      }
      settle(manual_clock::after(3h));
      for (auto& c : callers_) c.stream.reset();  // every stream has ended: closing it changes nothing
      settle(manual_clock::now());
      for (std::size_t i = 0; i < callers_.size(); ++i) {
        require(callers_[i].completions == 1,
                "#" + std::to_string(i) + " (" + name(callers_[i].kind) + ") never completed");
      }
      require(out_of_work(*ioc_), "the context still has work after the pool shut down and was destroyed");
      drop_context();
    } else {
      for (std::size_t i = 0; i < callers_.size(); ++i) {
        require(callers_[i].completions == 1 || callers_[i].abandoned,
                "#" + std::to_string(i) + " neither completed nor dropped with its context");
      }
    }
    throw_violations();
  }

  /// Destroys the context; first the strand `doomed` may hold, whose
  /// destructor needs the context's strand service.
  void drop_context() {
    doomed.reset();
    ioc_.reset();
  }

  byte_reader in_;
  side_stream side_;
  side_stream batch_side_;
  bool coalescing_ = false;
  bool batching_ = false;      // a batch handler (batch_handler()) with PoolConfig::batching
  bool batch_single_ = false;  // and handler() beside it, for batches of one
  std::vector<int> requests_;  // callers of submit and try_submit, in order
  scenario_report report_;
  std::vector<std::string> trace_;
  std::vector<std::string> violations_;
  // The callers outlive the context: a handler's guard reports into them while the context is destroyed.
  std::deque<caller> callers_;
  std::array<key_model, key_count> keys_;
  std::uint64_t pool_refused_ = 0;
  std::uint64_t footprint_ = 0;
  std::uint64_t budget_ = 0;
  duration tick_{};
  bool config_valid_ = true;
  bool stopping_ = false;
  bool shutdown_done_ = false;
  bool dying_ = false;
  PoolConfig config_;
  std::optional<asio::io_context> ioc_;
  std::optional<SimPool> pool_;
};

}  // namespace

scenario_report run_scenario(const std::uint8_t* data, std::size_t size) {
  scenario s(data, size);
  return s.run();
}

}  // namespace coropool::testing
