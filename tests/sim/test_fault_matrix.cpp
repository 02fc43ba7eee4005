// Every combination of a load's fault, a handler's fault, what the caller
// does and what happens to the pool meanwhile, each checked against the
// outcome one table below states for it. Run in virtual time
// (manual_clock.hpp): a cell's hangs and timeouts take no real time.

#include <coropool.hpp>

#include <catch2/catch.hpp>

#include "sim/manual_clock.hpp"
#include "support.hpp"

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>

#include <array>
#include <optional>
#include <stdexcept>
#include <string>

using namespace coropool;
using namespace coropool::testing;
using namespace std::chrono_literals;

namespace {

enum class load_fault { ok, throws, hangs, slow };
enum class handler_fault { ok, throws, hangs, slow };
enum class caller_act { awaits, cancels_queued, cancels_handled, try_submit_full };
enum class pool_event { none, scale_down, evict, restart, declared_dead, shutdown, destroyed };
enum class ending {
  answer,
  handler_exception,
  spawn_failed,
  aborted,
  request_timeout,
  queue_full,
  worker_lost,
  shutting_down
};

constexpr std::array<const char*, 4> load_names{"load ok", "load throws", "load hangs", "load slow"};
constexpr std::array<const char*, 4> handler_names{"handler ok", "handler throws", "handler hangs", "handler slow"};
constexpr std::array<const char*, 4> caller_names{"awaits", "cancels while queued", "cancels while handled",
                                                  "try_submit on a full queue"};
constexpr std::array<const char*, 7> event_names{"no event",      "scale down",     "evict",         "restart",
                                                 "declared dead", "shutdown 50 ms", "pool destroyed"};
constexpr std::array<const char*, 8> outcome_names{"the answer",      "the handler's exception",
                                                   "spawn_failed",    "operation_aborted",
                                                   "request_timeout", "queue_full",
                                                   "worker_lost",     "shutting_down"};

// The cell's timeline (virtual): the key is cold at 0 and the request R is
// submitted then. A load takes 0 (ok, throws), 50 ms (slow) or forever
// (hangs); call L the moment it ends (0 when it never does). The handler
// takes 0 (ok, throws), 100 ms (slow) or forever (hangs, until cancelled).
// A caller that cancels does so at L + 10 ms; for "cancels while queued", a
// request submitted before R holds the key's one worker for 200 ms, so that
// R waits in the queue; for "try_submit on a full queue", that request fills
// the queue (capacity 1) before R arrives. The pool event comes at L + 20 ms:
// scale to 0, evict, restart, the worker's thread blocked for 400 ms (so
// that the health sweep declares it dead), async_shutdown(50 ms), or the
// Pool destroyed. request_timeout is 1 s; health 50 ms / 200 ms.
constexpr auto slow_load = 50ms;
constexpr auto slow_handler = 100ms;
constexpr auto blocker_holds = 200ms;
constexpr auto cancel_after = 10ms;
constexpr auto event_after = 20ms;
constexpr auto request_timeout = 1s;
constexpr auto thread_blocked_for = 400ms;

/// One rule: a pattern (empty: any) and the outcome R must get. The first
/// rule that matches a cell is its expectation.
struct rule {
  std::optional<load_fault> load;
  std::optional<handler_fault> handler;
  std::optional<caller_act> caller;
  std::optional<pool_event> event;
  ending expected;
};

using L = load_fault;
using H = handler_fault;
using C = caller_act;
using E = pool_event;
using O = ending;
constexpr auto any = std::nullopt;

// clang-format off
const rule expectations[] = {
  // R is refused at once, before anything else happens.
  {any,      any,        C::try_submit_full, any,              O::queue_full},
  // The wave fails at once: every caller queued on the key gets its cause.
  {L::throws, any,       any,               any,               O::spawn_failed},
  // Cancelled while still queued (behind the blocker, or behind a load that never ends).
  {any,      any,        C::cancels_queued,  any,              O::aborted},
  {L::hangs, any,        C::cancels_handled, any,              O::aborted},
  // No worker ever loads: shutdown fails what is queued; otherwise the request times out.
  {L::hangs, any,        any,               E::shutdown,       O::shutting_down},
  {L::hangs, any,        any,               E::destroyed,      O::shutting_down},
  {L::hangs, any,        any,               any,               O::request_timeout},
  // A handler that ends at once has answered before any cancellation or event.
  {any,      H::ok,      any,               any,               O::answer},
  {any,      H::throws,  any,               any,               O::handler_exception},
  // Being handled: the cancellation comes before the event.
  {any,      any,        C::cancels_handled, any,              O::aborted},
  // Events that end the request in flight.
  {any,      any,        any,               E::declared_dead,  O::worker_lost},
  {any,      any,        any,               E::shutdown,       O::shutting_down},
  {any,      any,        any,               E::destroyed,      O::shutting_down},
  // Graceful events (scale down, evict, restart) let the request in flight finish.
  {any,      H::slow,    any,               any,               O::answer},
  {any,      H::hangs,   any,               any,               O::request_timeout},
};
// clang-format on

ending expected_for(L load, H handler, C caller, E event) {
  for (const auto& r : expectations) {
    if ((!r.load || *r.load == load) && (!r.handler || *r.handler == handler) && (!r.caller || *r.caller == caller) &&
        (!r.event || *r.event == event)) {
      return r.expected;
    }
  }
  throw std::logic_error("the fault matrix has no rule for a cell");
}

struct Request {
  bool blocker = false;
};

struct Model {};

struct handler_failure : std::runtime_error {
  handler_failure() : std::runtime_error("the handler failed") {}
};

struct load_failure : std::runtime_error {
  load_failure() : std::runtime_error("the model file is corrupt") {}
};

struct cell_result {
  std::optional<ending> got;
  int completions = 0;
  bool others_done = true;  // the blocker completed exactly once too
  bool out_of_work = false;
};

ending classify(const std::exception_ptr& e) {
  if (!e) return O::answer;
  try {
    std::rethrow_exception(e);
  } catch (const spawn_error&) {
    return O::spawn_failed;
  } catch (const handler_failure&) {
    return O::handler_exception;
  } catch (const boost::system::system_error& error) {
    if (error.code() == asio::error::operation_aborted) return O::aborted;
    if (error.code() == errc::request_timeout) return O::request_timeout;
    if (error.code() == errc::queue_full) return O::queue_full;
    if (error.code() == errc::worker_lost) return O::worker_lost;
    if (error.code() == errc::shutting_down) return O::shutting_down;
    throw;
  }
}

cell_result run_cell(L load, H handler, C caller, E event) {
  manual_clock::reset();
  const auto t0 = manual_clock::now();
  cell_result result;
  std::optional<asio::strand<asio::any_io_executor>> worker_strand;
  {
    asio::io_context ioc(1);
    PoolConfig config = test::quiet_config();
    config.compute_executor = ioc.get_executor();
    config.cold_start_workers = 1;
    config.max_workers_per_key = 1;
    config.queue_capacity = 1;
    config.request_timeout = request_timeout;
    config.health_interval = 50ms;
    config.health_timeout = 200ms;
    config.maintenance_interval = 50ms;
    config.idle_timeout = 1h;
    config.failure_threshold = 0;  // the breaker's own table is elsewhere: here each cell starts afresh

    auto loader = [load](const std::string&) -> asio::awaitable<Model> {
      auto ex = co_await asio::this_coro::executor;
      if (load == L::throws) throw load_failure();
      if (load != L::ok) {
        manual_timer t(ex, load == L::slow ? manual_clock::duration(slow_load) : manual_clock::duration::max());
        co_await t.async_wait(asio::use_awaitable);
      }
      co_return Model{};
    };
    auto handle = [handler, &worker_strand](Model&, Request request) -> asio::awaitable<int> {
      auto ex = co_await asio::this_coro::executor;
      worker_strand = *ex.target<asio::strand<asio::any_io_executor>>();
      if (request.blocker) {
        manual_timer t(ex, blocker_holds);
        co_await t.async_wait(asio::use_awaitable);
        co_return 0;
      }
      if (handler == H::throws) throw handler_failure();
      if (handler != H::ok) {
        manual_timer t(ex, handler == H::slow ? manual_clock::duration(slow_handler) : manual_clock::duration::max());
        co_await t.async_wait(asio::use_awaitable);
      }
      co_return 42;
    };
    std::optional<Pool<Request, int>> pool;
    pool.emplace(ioc, config, loader, handle);

    int blocker_completions = 0;
    const bool with_blocker = caller == C::cancels_queued || caller == C::try_submit_full;
    if (with_blocker) pool->async_submit("m", Request{true}, [&](std::exception_ptr, int) { ++blocker_completions; });
    asio::cancellation_signal cancel;
    auto on_done = asio::bind_cancellation_slot(cancel.slot(), [&](std::exception_ptr e, int value) {
      ++result.completions;
      result.got = classify(e);
      if (result.got == O::answer && value != 42) result.got.reset();
    });
    if (caller == C::try_submit_full) {
      pool->async_try_submit("m", Request{}, std::move(on_done));
    } else {
      pool->async_submit("m", Request{}, std::move(on_done));
    }

    const auto loaded = t0 + (load == L::slow ? manual_clock::duration(slow_load) : manual_clock::duration::zero());
    run_until(ioc, loaded + cancel_after);
    if (caller == C::cancels_queued || caller == C::cancels_handled) cancel.emit(asio::cancellation_type::terminal);
    run_until(ioc, loaded + event_after);
    switch (event) {
      case E::none:
        break;
      case E::scale_down:
        pool->async_scale("m", 0, [](error_code) {});
        break;
      case E::evict:
        pool->async_evict("m", [](error_code) {});
        break;
      case E::restart:
        pool->async_restart("m", [](error_code) {});
        break;
      case E::declared_dead:
        // The worker's thread is held, as a blocking call would hold it: its pongs stop.
        if (worker_strand)
          asio::post(*worker_strand, [] { manual_clock::jump_to(manual_clock::after(thread_blocked_for)); });
        break;
      case E::shutdown:
        pool->async_shutdown(50ms, [](error_code) {});
        break;
      case E::destroyed:
        pool.reset();
        break;
    }
    run_until(ioc, t0 + 2 * request_timeout);
    if (pool) {
      pool->async_shutdown(1s, [](error_code) {});
      run_until(ioc, manual_clock::after(2h));
      pool.reset();
    }
    worker_strand.reset();  // before the context it belongs to
    run_until(ioc, manual_clock::after(2h));
    result.out_of_work = out_of_work(ioc);
    result.others_done = !with_blocker || blocker_completions == 1;
  }
  return result;
}

std::string cell_name(L load, H handler, C caller, E event) {
  return std::string(load_names[static_cast<int>(load)]) + ", " + handler_names[static_cast<int>(handler)] + ", " +
         caller_names[static_cast<int>(caller)] + ", " + event_names[static_cast<int>(event)];
}

}  // namespace

TEST_CASE("the fault matrix: every load, handler, caller and pool fault together", "[sim][faults]") {
  for (int l = 0; l < 4; ++l) {
    for (int h = 0; h < 4; ++h) {
      for (int c = 0; c < 4; ++c) {
        for (int e = 0; e < 7; ++e) {
          const auto load = static_cast<L>(l);
          const auto handler = static_cast<H>(h);
          const auto caller = static_cast<C>(c);
          const auto event = static_cast<E>(e);
          DYNAMIC_SECTION(cell_name(load, handler, caller, event)) {
            const ending expected = expected_for(load, handler, caller, event);
            const cell_result r = run_cell(load, handler, caller, event);
            INFO("expected " << outcome_names[static_cast<int>(expected)] << ", got "
                             << (r.got ? outcome_names[static_cast<int>(*r.got)] : "nothing (or a wrong answer)"));
            CHECK(r.completions == 1);
            CHECK(r.got == expected);
            CHECK(r.others_done);
            CHECK(r.out_of_work);
          }
        }
      }
    }
  }
}
