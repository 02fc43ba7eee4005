// The key queue on its own: no pool, no strand, no worker coroutine. Each
// test plays callers, workers and the deadline timer by calling the queue's
// members directly, and checks the exactly-once rule written at the top of
// include/coropool/detail/key_queue.hpp.

#include <coropool.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <memory>
#include <new>
#include <numeric>
#include <random>
#include <thread>
#include <vector>

using namespace coropool;
using pool_clock = coropool::detail::clock;
using coropool::detail::key_queue;
using coropool::detail::request_base;
using coropool::detail::request_ptr;
using coropool::detail::worker_record;
using namespace std::chrono_literals;

namespace {

/// A request whose caller counts its completions.
class probe_request final : public request_base {
 public:
  void fail(error_code ec, std::exception_ptr) override {
    outcome = ec;
    completions.fetch_add(1);
  }
  void abandon() noexcept override { abandoned = true; }

  ~probe_request() override {
    if (destroyed) *destroyed = true;
  }

  std::atomic<int> completions{0};
  error_code outcome;
  bool abandoned = false;
  bool* destroyed = nullptr;  // set when the last reference goes
};

using probe_ptr = boost::intrusive_ptr<probe_request>;

probe_ptr make_request(std::uint8_t priority = 0) {
  probe_ptr r(new probe_request);
  r->priority = priority;
  return r;
}

/// The default levels' weights, and the bound PoolConfig::priority_weights documents.
const std::vector<unsigned> default_weights = PoolConfig{}.priority_weights;

std::size_t starvation_bound(const std::vector<unsigned>& weights, std::size_t level) {
  std::size_t bound = 0;
  for (std::size_t j = 0; j < weights.size(); ++j) {
    if (j != level) bound += (weights[j] + weights[level] - 1) / weights[level] + 1;
  }
  return bound;
}

/// The completion a parked worker is handed its next request (or null) through.
class parked_slot final : public detail::completion<request_ptr> {
 public:
  explicit parked_slot(std::shared_ptr<request_ptr> into) : into_(std::move(into)) {}
  void complete(request_ptr r) override { *into_ = std::move(r); }

 private:
  std::shared_ptr<request_ptr> into_;
};

struct fixture {
  explicit fixture(std::size_t capacity = 4, pool_clock::duration timeout = 1h, std::size_t failure_threshold = 0,
                   pool_clock::duration open_for = 1h, std::size_t probes = 1)
      : queue("k", ioc.get_executor(), {capacity, timeout},
              detail::circuit_breaker(failure_threshold, open_for, probes), {}, nullptr) {}
  explicit fixture(key_queue::settings settings)
      : queue("k", ioc.get_executor(), std::move(settings), detail::circuit_breaker(0, 1h, 1), {}, nullptr) {}

  std::shared_ptr<worker_record> worker() {
    auto w = std::make_shared<worker_record>(ids.fetch_add(1) + 1, nullptr, ioc.get_executor());
    w->shared.state.transition(worker_state::loading);
    w->shared.state.transition(worker_state::ready);
    return w;
  }

  /// Completes what enqueue() decided, as the pool does after the lock.
  void submit(const probe_ptr& r, bool wait_for_room = true, const SubmitOptions& options = {}) {
    auto admitted = queue.enqueue(r, wait_for_room, options);
    if (admitted.refused) r->fail(admitted.refused, nullptr);
    if (admitted.wake) admitted.wake->complete(r);
  }

  /// Answers `r` as a worker does: true when the answer reaches the caller.
  static bool answer(key_queue& q, request_base& r, worker_record& w) {
    if (!q.claim_answer(r, w, false)) return false;
    static_cast<probe_request&>(r).fail({}, nullptr);  // the answer: success
    return true;
  }

  KeyStats stats() const {
    KeyStats s;
    queue.read_stats(s, pool_clock::now());
    return s;
  }

  asio::io_context ioc;
  key_queue queue;
  std::atomic<std::uint64_t> ids{0};  // workers are made on the race test's threads
};

}  // namespace

TEST_CASE("key queue: a queued request is taken once, answered once", "[key_queue]") {
  fixture f;
  auto r = make_request();
  auto w = f.worker();
  f.submit(r);
  CHECK(f.queue.queued() == 1);
  request_ptr taken = f.queue.take(*w);
  REQUIRE(taken == r);
  CHECK(w->shared.state.load() == worker_state::processing);
  CHECK(f.queue.take(*w) == nullptr);
  CHECK(fixture::answer(f.queue, *r, *w));
  CHECK_FALSE(f.queue.cancel(*r));  // done: a late cancellation does nothing
  CHECK(r->completions == 1);
  CHECK(r->outcome == error_code{});
  CHECK(w->shared.state.load() == worker_state::ready);
  CHECK(f.stats().submitted == 1);
  CHECK(f.stats().completed == 1);
}

TEST_CASE("key queue: a request submitted while a worker is parked is handed to it", "[key_queue]") {
  fixture f;
  auto w = f.worker();
  auto into = std::make_shared<request_ptr>();
  auto [none, parked] = f.queue.take_or_park(*w, [&] { return std::make_unique<parked_slot>(into); });
  CHECK(none == nullptr);
  REQUIRE(parked);
  CHECK(w->shared.state.load() == worker_state::idle);
  auto r = make_request();
  f.submit(r);
  CHECK(*into == r);
  CHECK(f.queue.queued() == 0);  // handed over, never queued
  CHECK(w->queue.current == r);
  CHECK(w->shared.state.load() == worker_state::processing);
  CHECK(fixture::answer(f.queue, *r, *w));
  CHECK(r->completions == 1);
}

TEST_CASE("key queue: a worker finds a queued request instead of parking", "[key_queue]") {
  fixture f;
  auto r = make_request();
  f.submit(r);
  auto w = f.worker();
  bool made = false;
  auto [taken, parked] = f.queue.take_or_park(*w, [&] {
    made = true;
    return std::make_unique<parked_slot>(std::make_shared<request_ptr>());
  });
  CHECK(taken == r);
  CHECK_FALSE(parked);
  CHECK_FALSE(made);  // no completion allocated when there is work
}

TEST_CASE("key queue: a cancelled queued request is never taken", "[key_queue]") {
  fixture f;
  auto r = make_request();
  f.submit(r);
  REQUIRE(f.queue.cancel(*r));
  r->fail(asio::error::operation_aborted, nullptr);  // the canceller completes it
  CHECK_FALSE(f.queue.cancel(*r));
  auto w = f.worker();
  CHECK(f.queue.take(*w) == nullptr);
  CHECK(r->completions == 1);
  CHECK(f.stats().cancelled == 1);
  CHECK(f.stats().queued == 0);
}

TEST_CASE("key queue: a cancellation during handling wins, and the late answer is discarded", "[key_queue]") {
  fixture f;
  auto r = make_request();
  auto w = f.worker();
  f.submit(r);
  REQUIRE(f.queue.take(*w) == r);
  REQUIRE(f.queue.cancel(*r));
  r->fail(asio::error::operation_aborted, nullptr);
  CHECK_FALSE(fixture::answer(f.queue, *r, *w));
  CHECK(r->completions == 1);
  CHECK(r->outcome == asio::error::operation_aborted);
  CHECK(w->shared.state.load() == worker_state::ready);  // the worker is free again either way
  CHECK(f.stats().cancelled == 1);
  CHECK(f.stats().completed == 0);
}

TEST_CASE("key queue: the deadline sweep times out queued and handled requests once", "[key_queue]") {
  fixture f(4, 10ms);
  auto queued = make_request();
  auto handled = make_request();
  auto w = f.worker();
  f.submit(handled);
  f.submit(queued);
  REQUIRE(f.queue.take(*w) == handled);
  f.queue.expire(pool_clock::now());  // not due yet
  CHECK(queued->completions == 0);
  f.queue.expire(pool_clock::now() + 1s);
  CHECK(queued->completions == 1);
  CHECK(queued->outcome == errc::request_timeout);
  CHECK(handled->completions == 1);
  CHECK(handled->outcome == errc::request_timeout);
  CHECK_FALSE(fixture::answer(f.queue, *handled, *w));  // the worker's late answer goes nowhere
  CHECK(f.queue.take(*w) == nullptr);
  f.queue.expire(pool_clock::now() + 1h);
  CHECK(queued->completions == 1);
  CHECK(f.stats().timed_out == 2);
}

TEST_CASE("key queue: a full queue holds callers back in order, or refuses try_submit", "[key_queue]") {
  fixture f(1);
  auto first = make_request();
  auto second = make_request();
  auto third = make_request();
  auto refused = make_request();
  f.submit(first);
  f.submit(second);
  f.submit(third);
  f.submit(refused, false);
  CHECK(refused->completions == 1);
  CHECK(refused->outcome == errc::queue_full);
  CHECK(f.stats().queued == 1);
  CHECK(f.stats().waiting_for_room == 2);
  // A cancelled room waiter leaves without taking anyone's place.
  REQUIRE(f.queue.cancel(*second));
  second->fail(asio::error::operation_aborted, nullptr);
  auto w = f.worker();
  CHECK(f.queue.take(*w) == first);
  CHECK(f.stats().queued == 1);  // `third` moved up into the room `first` left
  CHECK(f.stats().waiting_for_room == 0);
  CHECK(fixture::answer(f.queue, *first, *w));
  CHECK(f.queue.take(*w) == third);
  CHECK(f.stats().rejected == 1);
}

TEST_CASE("key queue: a closed queue refuses, hands its parked workers back, and fails the rest once", "[key_queue]") {
  fixture f;
  auto w = f.worker();
  auto into = std::make_shared<request_ptr>();
  REQUIRE(f.queue.take_or_park(*w, [&] { return std::make_unique<parked_slot>(into); }).second);
  auto released = f.queue.close().parked;
  REQUIRE(released.size() == 1);
  CHECK(released.front() == w);
  auto late = make_request();
  f.submit(late);
  CHECK(late->outcome == errc::shutting_down);
  // A worker does not park on a closed queue: it is told to leave.
  auto [r, parked] = f.queue.take_or_park(*w, [&] { return std::make_unique<parked_slot>(into); });
  CHECK(r == nullptr);
  CHECK_FALSE(parked);
}

TEST_CASE("key queue: fail_all completes every outstanding request once, wherever it is", "[key_queue]") {
  fixture f(1);
  auto handled = make_request();
  auto queued = make_request();
  auto waiting = make_request();
  auto w = f.worker();
  f.submit(handled);
  REQUIRE(f.queue.take(*w) == handled);
  f.submit(queued);
  f.submit(waiting);
  f.queue.fail_all(errc::shutting_down);
  for (auto* r : {handled.get(), queued.get(), waiting.get()}) {
    CHECK(r->completions == 1);
    CHECK(r->outcome == errc::shutting_down);
  }
  CHECK_FALSE(fixture::answer(f.queue, *handled, *w));
  CHECK(f.stats().failed == 3);
}

TEST_CASE("key queue: a lost worker's request fails once and counts against the breaker", "[key_queue]") {
  fixture f(4, 1h, 1);
  auto r = make_request();
  auto w = f.worker();
  f.submit(r);
  REQUIRE(f.queue.take(*w) == r);
  auto lost = f.queue.claim_current(*w, errc::worker_lost);
  REQUIRE(lost.size() == 1);
  REQUIRE(lost.front() == r);
  lost.front()->fail(errc::worker_lost, nullptr);
  CHECK(f.queue.claim_current(*w, errc::worker_lost).empty());  // already done
  CHECK(r->completions == 1);
  CHECK(f.stats().breaker == breaker_state::open);
  auto refused = make_request();
  f.submit(refused);
  CHECK(refused->outcome == errc::circuit_open);
}

TEST_CASE("key queue: idle workers are released oldest first, only once idle long enough", "[key_queue]") {
  fixture f;
  std::vector<std::shared_ptr<worker_record>> workers;
  for (int i = 0; i < 3; ++i) {
    workers.push_back(f.worker());
    REQUIRE(f.queue
                .take_or_park(*workers.back(),
                              [] { return std::make_unique<parked_slot>(std::make_shared<request_ptr>()); })
                .second);
  }
  const auto now = pool_clock::now();
  CHECK(f.queue.release_idle(3, now, 1h).empty());  // none idle for an hour
  auto released = f.queue.release_idle(2, now + 2h, 1h);
  REQUIRE(released.size() == 2);
  CHECK(released[0] == workers[0]);
  CHECK(released[1] == workers[1]);
  CHECK(f.queue.release_idle(*workers[0]) == nullptr);  // no longer parked
  CHECK(f.queue.release_idle(*workers[2]) == workers[2]);
}

TEST_CASE("key queue: callers, cancellers, workers and the deadline sweep race, each request ends once",
          "[key_queue][race]") {
  fixture f(8, 50ms);
  constexpr int callers = 2;
  constexpr int per_caller = 4000;
  std::vector<probe_ptr> requests;
  for (int i = 0; i < callers * per_caller; ++i) requests.push_back(make_request());
  std::atomic<bool> submitting{true};
  std::atomic<int> answered{0};

  std::vector<std::thread> threads;
  for (int c = 0; c < callers; ++c) {
    threads.emplace_back([&, c] {
      for (int i = 0; i < per_caller; ++i) {
        auto& r = requests[static_cast<std::size_t>(c * per_caller + i)];
        f.submit(r, i % 3 != 0);  // every third a try_submit, which may be refused
        if (i % 5 == 0 && f.queue.cancel(*r)) r->fail(asio::error::operation_aborted, nullptr);
      }
    });
  }
  for (int n = 0; n < 2; ++n) {
    threads.emplace_back([&] {
      auto w = f.worker();
      while (submitting || f.queue.queued() > 0) {
        if (auto r = f.queue.take(*w)) {
          if (fixture::answer(f.queue, *r, *w)) answered.fetch_add(1);
        } else {
          std::this_thread::yield();
        }
      }
    });
  }
  threads.emplace_back([&] {
    while (submitting) {
      f.queue.expire(pool_clock::now());
      std::this_thread::yield();
    }
  });
  for (int c = 0; c < callers; ++c) threads[static_cast<std::size_t>(c)].join();
  submitting = false;
  for (std::size_t t = callers; t < threads.size(); ++t) threads[t].join();
  f.queue.fail_all(errc::shutting_down);  // room waiters left over, if any

  for (auto& r : requests) REQUIRE(r->completions == 1);
  const KeyStats s = f.stats();
  CHECK(s.completed == static_cast<std::uint64_t>(answered.load()));
  CHECK(s.completed + s.cancelled + s.timed_out + s.failed + s.rejected == requests.size());
  CHECK(s.submitted + s.rejected == requests.size());
}

TEST_CASE("key queue: higher levels first, first in first out within a level", "[key_queue][priority]") {
  fixture f(key_queue::settings{100, 1h, pool_clock::duration::max(), default_weights});
  // Submitted in this order: a replaced system's max-heap served the newest of the lowest level first.
  std::vector<probe_ptr> requests;
  for (int level : {4, 4, 0, 2, 0, 2, 4}) {
    requests.push_back(make_request(static_cast<std::uint8_t>(level)));
    f.submit(requests.back());
  }
  CHECK(f.stats().queued_by_priority == std::vector<std::size_t>{2, 0, 2, 0, 3});
  auto w = f.worker();
  std::vector<request_base*> order;
  while (auto r = f.queue.take(*w)) {
    order.push_back(r.get());
    fixture::answer(f.queue, *r, *w);
  }
  const std::vector<request_base*> expected = {requests[2].get(), requests[4].get(), requests[3].get(),
                                               requests[5].get(), requests[0].get(), requests[1].get(),
                                               requests[6].get()};
  CHECK(order == expected);
}

TEST_CASE("key queue: one level is a plain FIFO", "[key_queue][priority]") {
  fixture f(key_queue::settings{100, 1h, pool_clock::duration::max(), {1}});
  std::vector<probe_ptr> requests;
  for (int i = 0; i < 20; ++i) {
    requests.push_back(make_request());
    f.submit(requests.back());
  }
  auto w = f.worker();
  for (int i = 0; i < 20; ++i) {
    auto r = f.queue.take(*w);
    REQUIRE(r == requests[static_cast<std::size_t>(i)]);
    fixture::answer(f.queue, *r, *w);
  }
}

TEST_CASE("key queue: saturated levels are served by their weights, none waits past its bound",
          "[key_queue][priority]") {
  const auto weights = GENERATE(std::vector<unsigned>{8, 4, 2, 1, 1}, std::vector<unsigned>{1, 1},
                                std::vector<unsigned>{100, 3, 1}, std::vector<unsigned>{5, 7, 2});
  CAPTURE(weights);
  fixture f(key_queue::settings{1000, 1h, pool_clock::duration::max(), weights});
  const std::size_t levels = weights.size();
  // Every level kept full: each request taken is replaced by one of its level.
  for (std::size_t level = 0; level < levels; ++level) {
    for (int i = 0; i < 50; ++i) f.submit(make_request(static_cast<std::uint8_t>(level)));
  }
  const unsigned total = std::accumulate(weights.begin(), weights.end(), 0u);
  const std::size_t rounds = 20;
  std::vector<std::size_t> served(levels), last(levels, 0), longest_gap(levels, 0);
  auto w = f.worker();
  for (std::size_t i = 1; i <= rounds * total; ++i) {
    auto r = f.queue.take(*w);
    REQUIRE(r);
    const std::size_t level = r->priority;
    ++served[level];
    longest_gap[level] = std::max(longest_gap[level], i - last[level] - 1);  // others taken in between
    last[level] = i;
    fixture::answer(f.queue, *r, *w);
    f.submit(make_request(static_cast<std::uint8_t>(level)));
  }
  for (std::size_t level = 0; level < levels; ++level) {
    CAPTURE(level);
    CHECK(served[level] == rounds * weights[level]);  // exact shares over whole rounds
    CHECK(longest_gap[level] <= starvation_bound(weights, level));
  }
}

TEST_CASE("key queue: a low request under a saturating stream of high ones is taken within its bound",
          "[key_queue][priority]") {
  fixture f(key_queue::settings{1000, 1h, pool_clock::duration::max(), default_weights});
  for (int i = 0; i < 100; ++i) f.submit(make_request(0));
  auto w = f.worker();
  for (int i = 0; i < 37; ++i) {  // the stream has run for a while
    auto r = f.queue.take(*w);
    fixture::answer(f.queue, *r, *w);
    f.submit(make_request(0));
  }
  auto low = make_request(4);
  f.submit(low);
  std::size_t before = 0;
  for (;;) {
    auto r = f.queue.take(*w);
    REQUIRE(r);
    fixture::answer(f.queue, *r, *w);
    if (r == low) break;
    ++before;
    f.submit(make_request(0));
  }
  CHECK(before <= starvation_bound({8, 1}, 1));  // level 0 against level 4 alone: 9
  CHECK(before >= 1);                            // but a higher level still goes first
  CHECK(low->completions == 1);
}

TEST_CASE("key queue: a full queue holds back the newest lowest request for a higher one", "[key_queue][priority]") {
  fixture f(key_queue::settings{2, 1h, pool_clock::duration::max(), default_weights});
  auto low_old = make_request(4);
  auto low_new = make_request(4);
  auto urgent = make_request(0);
  auto also_low = make_request(4);
  auto urgent_2 = make_request(0);
  auto urgent_3 = make_request(0);
  f.submit(low_old);
  f.submit(low_new);
  f.submit(urgent, false);  // try_submit: admitted, low_new waits for room instead
  CHECK(urgent->completions == 0);
  CHECK(f.stats().held_back == 1);
  CHECK(f.stats().waiting_for_room == 1);
  CHECK(f.stats().queued_by_priority == std::vector<std::size_t>{1, 0, 0, 0, 1});
  f.submit(also_low, false);  // nothing lower to hold back
  CHECK(also_low->outcome == errc::queue_full);
  f.submit(urgent_2, false);  // holds back low_old: both lows now wait, low_old first
  CHECK(f.stats().held_back == 2);
  f.submit(urgent_3, false);  // the queue is all level 0: refused
  CHECK(urgent_3->outcome == errc::queue_full);
  auto w = f.worker();
  std::vector<request_base*> order;
  while (auto r = f.queue.take(*w)) {
    order.push_back(r.get());
    fixture::answer(f.queue, *r, *w);
  }
  CHECK(order == std::vector<request_base*>{urgent.get(), urgent_2.get(), low_old.get(), low_new.get()});
  for (auto& r : {low_old, low_new, urgent, urgent_2}) CHECK(r->completions == 1);
  CHECK(f.stats().rejected == 2);
  CHECK(f.stats().completed == 4);
}

TEST_CASE("key queue: a request whose deadline passed is never handed to a worker", "[key_queue][deadline]") {
  fixture f;
  auto late = make_request();
  auto fresh = make_request();
  SubmitOptions soon;
  soon.timeout = 1ms;
  f.submit(late, true, soon);
  f.submit(fresh);
  std::this_thread::sleep_for(5ms);  // the timer is not run: the take must see the deadline itself
  auto w = f.worker();
  CHECK(f.queue.take(*w) == fresh);
  f.ioc.poll();  // expired requests are completed on the key's executor, off the worker's path
  CHECK(late->completions == 1);
  CHECK(late->outcome == errc::request_timeout);
  CHECK(f.stats().expired_before_dispatch == 1);
  CHECK(f.stats().timed_out == 1);
  CHECK(fixture::answer(f.queue, *fresh, *w));
}

TEST_CASE("key queue: deadlines of every length, each at its instant", "[key_queue][deadline]") {
  fixture f(16, 1h);
  std::vector<std::pair<probe_ptr, pool_clock::duration>> requests;
  for (pool_clock::duration timeout : std::vector<pool_clock::duration>{1h, 200ms, 30min, 20ms, 5ms, 1h}) {
    requests.emplace_back(make_request(), timeout);
    SubmitOptions options;
    options.timeout = timeout;
    f.submit(requests.back().first, true, options);
  }
  // The key's one timer re-arms for each shorter deadline: running its
  // context for 100 ms expires exactly the two deadlines due by then.
  f.ioc.run_for(100ms);
  for (auto& [r, timeout] : requests) {
    CAPTURE(timeout);
    CHECK(r->completions == (timeout <= 20ms ? 1 : 0));
  }
  CHECK(f.stats().expired_before_dispatch == 2);
  CHECK(f.stats().queued == 4);
  f.queue.fail_all(errc::shutting_down);
  for (auto& [r, timeout] : requests) CHECK(r->completions == 1);
}

TEST_CASE("key queue: a request's deadline is the earliest of its options, capped by the pool's maximum",
          "[key_queue][deadline]") {
  fixture f(key_queue::settings{16, 1h, 10min, {1}});
  const auto before = pool_clock::now();
  auto capped = make_request();
  SubmitOptions long_one;
  long_one.timeout = 24h;
  f.submit(capped, true, long_one);
  auto absolute = make_request();
  SubmitOptions both;
  both.timeout = 1min;
  both.deadline = before + 2s;
  f.submit(absolute, true, both);
  const auto after = pool_clock::now();
  CHECK(capped->deadline >= before + 10min);
  CHECK(capped->deadline <= after + 10min);
  CHECK(absolute->deadline == before + 2s);
  auto past = make_request();
  SubmitOptions gone;
  gone.deadline = before - 1ms;
  f.submit(past, true, gone);
  CHECK(past->completions == 1);
  CHECK(past->outcome == errc::request_timeout);
  CHECK(f.stats().submitted == 3);  // accepted, and timed out at once: not a refusal
  CHECK(f.stats().rejected == 0);
  CHECK(f.stats().timed_out == 1);
  f.queue.fail_all(errc::shutting_down);
}

TEST_CASE("key queue: a deadline during the handler cancels that handler, on its worker's strand",
          "[key_queue][deadline]") {
  fixture f;
  auto r = make_request();
  SubmitOptions soon;
  soon.timeout = 10ms;
  f.submit(r, true, soon);
  auto w = f.worker();
  REQUIRE(f.queue.take(*w) == r);
  w->own.handling = r.get();  // as the worker loop marks the handler it runs
  asio::cancellation_type seen = asio::cancellation_type::none;
  w->own.stop_signal.slot().assign([&](asio::cancellation_type t) { seen = t; });
  f.ioc.run_for(100ms);
  CHECK(r->completions == 1);
  CHECK(r->outcome == errc::request_timeout);
  CHECK(seen == asio::cancellation_type::terminal);
  CHECK(w->own.interrupted);
  CHECK(f.stats().expired_in_handler == 1);
  CHECK_FALSE(fixture::answer(f.queue, *r, *w));  // the late answer is discarded
  CHECK(r->completions == 1);
}

namespace {

/// A run for the queue's coalescing: any request_base will do without a pool.
/// A run as coalesced_run is one: no caller of its own, its callers' shared state.
class probe_run final : public request_base {
 public:
  probe_run() { is_run = true; }
  void fail(error_code, std::exception_ptr) override {}
  void abandon() noexcept override {}
  run_info& coalesced() noexcept override { return info_; }

 private:
  run_info info_;
};

request_ptr make_probe_run(request_base&) { return request_ptr(new probe_run); }

struct coalescing_fixture : fixture {
  using fixture::fixture;

  /// Submits `r` with identity `id`; true when it joined a run already there.
  bool submit_as(const probe_ptr& r, const std::string& id, const SubmitOptions& options = {}) {
    auto admitted = queue.enqueue_coalesced(r, true, options, id, &make_probe_run);
    if (admitted.refused) r->fail(admitted.refused, nullptr);
    if (admitted.wake) admitted.wake->complete(admitted.handed ? admitted.handed : request_ptr(r));
    return admitted.joined;
  }

  /// Answers the run `run` as the worker loop does: every caller claimed
  /// gets the answer. Returns how many, and the worker's next request.
  std::pair<std::size_t, request_ptr> answer_run(request_base& run, worker_record& w) {
    bool answer = false;
    std::vector<request_ptr> callers;
    auto next = queue.claim_answer_and_take(run, w, answer, callers, false, false, pool_clock::now(), 0);
    CHECK_FALSE(answer);
    for (auto& c : callers) static_cast<probe_request&>(*c).fail({}, nullptr);
    return {callers.size(), std::move(next)};
  }
};

}  // namespace

TEST_CASE("key queue: identical requests share one run and one place in the queue", "[key_queue][coalescing]") {
  coalescing_fixture f;
  auto a = make_request();
  auto b = make_request();
  auto other = make_request();
  CHECK_FALSE(f.submit_as(a, "same"));
  CHECK(f.submit_as(b, "same"));
  CHECK_FALSE(f.submit_as(other, "different"));
  CHECK(f.queue.queued() == 2);
  CHECK(f.stats().submitted == 3);
  CHECK(f.stats().coalesced == 1);
  auto w = f.worker();
  auto run = f.queue.take(*w);
  REQUIRE(run);
  CHECK(run != a);  // the run is a request of its own
  auto [answered, next] = f.answer_run(*run, *w);
  CHECK(answered == 2);
  CHECK(a->completions == 1);
  CHECK(b->completions == 1);
  CHECK(other->completions == 0);
  REQUIRE(next);
  CHECK(f.answer_run(*next, *w).first == 1);
  CHECK(other->completions == 1);
  CHECK(f.stats().completed == 3);
  // Nothing is remembered: the same identity runs again.
  auto c = make_request();
  CHECK_FALSE(f.submit_as(c, "same"));
  CHECK(f.queue.queued() == 1);
  f.queue.fail_all(errc::shutting_down);
  CHECK(c->completions == 1);
}

TEST_CASE("key queue: a caller leaving detaches only itself, the last one withdraws the run",
          "[key_queue][coalescing]") {
  coalescing_fixture f;
  auto a = make_request();
  auto b = make_request();
  f.submit_as(a, "x");
  f.submit_as(b, "x");
  REQUIRE(f.queue.cancel(*a));
  a->fail(asio::error::operation_aborted, nullptr);
  CHECK(f.queue.queued() == 1);  // b still waits for it
  REQUIRE(f.queue.cancel(*b));
  b->fail(asio::error::operation_aborted, nullptr);
  CHECK(f.queue.queued() == 0);  // withdrawn: no worker will run it
  auto w = f.worker();
  CHECK(f.queue.take(*w) == nullptr);
  CHECK(f.stats().cancelled == 2);
  // Being handled when the last caller leaves: the answer goes nowhere.
  auto c = make_request();
  f.submit_as(c, "y");
  auto run = f.queue.take(*w);
  REQUIRE(run);
  REQUIRE(f.queue.cancel(*c));
  c->fail(asio::error::operation_aborted, nullptr);
  CHECK(f.answer_run(*run, *w).first == 0);
  CHECK(c->completions == 1);
  auto d = make_request();
  CHECK_FALSE(f.submit_as(d, "y"));  // the ended run is not joined
  f.queue.fail_all(errc::shutting_down);
}

TEST_CASE(
    "key queue: a run takes the highest level and the latest deadline of its callers, each caller keeps its "
    "own deadline",
    "[key_queue][coalescing]") {
  coalescing_fixture f(key_queue::settings{16, 1h, pool_clock::duration::max(), {8, 4, 2, 1, 1}});
  auto low = make_request(4);
  auto urgent = make_request(0);
  SubmitOptions soon;
  soon.timeout = 10ms;
  f.submit_as(low, "x", soon);
  CHECK(f.stats().queued_by_priority == std::vector<std::size_t>{0, 0, 0, 0, 1});
  f.submit_as(urgent, "x");
  CHECK(f.stats().queued_by_priority == std::vector<std::size_t>{1, 0, 0, 0, 0});
  f.ioc.run_for(50ms);  // low's deadline passes: it alone times out
  CHECK(low->completions == 1);
  CHECK(low->outcome == errc::request_timeout);
  CHECK(urgent->completions == 0);
  auto w = f.worker();
  auto run = f.queue.take(*w);  // urgent's deadline (1 h) keeps the run alive
  REQUIRE(run);
  CHECK(f.answer_run(*run, *w).first == 1);
  CHECK(urgent->completions == 1);
  CHECK(urgent->outcome == error_code{});
}

TEST_CASE("key queue: a run whose every caller is past its deadline is never handed to a worker",
          "[key_queue][coalescing]") {
  coalescing_fixture f;
  auto a = make_request();
  auto b = make_request();
  SubmitOptions soon;
  soon.timeout = 1ms;
  f.submit_as(a, "x", soon);
  f.submit_as(b, "x", soon);
  std::this_thread::sleep_for(5ms);  // the timer does not run: take sees the deadlines itself
  auto w = f.worker();
  CHECK(f.queue.take(*w) == nullptr);
  f.ioc.poll();  // expired requests are completed on the key's executor, off the worker's path
  CHECK(a->outcome == errc::request_timeout);
  CHECK(b->outcome == errc::request_timeout);
  CHECK(f.stats().expired_before_dispatch == 2);
  CHECK(f.queue.queued() == 0);
}

TEST_CASE(
    "key queue: a run whose later caller left is not handed to a worker once the rest are past their "
    "deadlines",
    "[key_queue][coalescing]") {
  coalescing_fixture f;
  auto patient = make_request();
  auto hurried = make_request();
  SubmitOptions soon;
  soon.timeout = 1ms;
  f.submit_as(patient, "x");  // the run's latest deadline: 1 h
  f.submit_as(hurried, "x", soon);
  REQUIRE(f.queue.cancel(*patient));  // the 1 h caller leaves; the run's recorded latest deadline does not move
  patient->fail(asio::error::operation_aborted, nullptr);
  std::this_thread::sleep_for(5ms);
  auto w = f.worker();
  CHECK(f.queue.take(*w) == nullptr);
  f.ioc.poll();
  CHECK(hurried->completions == 1);
  CHECK(hurried->outcome == errc::request_timeout);
  CHECK(f.queue.queued() == 0);
}

TEST_CASE("key queue: a lost worker fails every caller of its run once", "[key_queue][coalescing]") {
  coalescing_fixture f;
  auto a = make_request();
  auto b = make_request();
  f.submit_as(a, "x");
  f.submit_as(b, "x");
  auto w = f.worker();
  REQUIRE(f.queue.take(*w));
  auto lost = f.queue.claim_current(*w, errc::worker_lost);
  CHECK(lost.size() == 2);
  for (auto& r : lost) r->fail(errc::worker_lost, nullptr);
  CHECK(f.queue.claim_current(*w, errc::worker_lost).empty());
  CHECK(a->completions == 1);
  CHECK(b->completions == 1);
  CHECK(f.stats().failed == 2);
  CHECK_FALSE(f.submit_as(make_request(), "x"));  // the run ended with its callers
  f.queue.fail_all(errc::shutting_down);
}

TEST_CASE("deadline index: the earliest deadline always, in order or not, through random inserts and erases",
          "[key_queue][deadline]") {
  detail::deadline_index index;
  std::minstd_rand rng(12);
  std::vector<probe_ptr> in;  // what the index holds, each with a reference of its own
  const auto base = pool_clock::now();
  for (int step = 0; step < 20000; ++step) {
    if (in.empty() || rng() % 3 != 0) {
      auto r = make_request();
      // Mostly in order (the pool's request_timeout), now and then earlier (a request's own).
      r->deadline = base + std::chrono::microseconds(rng() % 4 == 0 ? rng() % 10000 : step * 10);
      index.insert(*r);
      in.push_back(r);
    } else {
      const std::size_t victim = rng() % in.size();
      index.erase(*in[victim]);
      in.erase(in.begin() + static_cast<std::ptrdiff_t>(victim));
    }
    REQUIRE(index.empty() == in.empty());
    if (!in.empty()) {
      const auto earliest = std::min_element(
          in.begin(), in.end(), [](const probe_ptr& a, const probe_ptr& b) { return a->deadline < b->deadline; });
      REQUIRE(index.earliest()->deadline == (*earliest)->deadline);
    }
  }
  std::size_t disposed = 0;
  index.clear_and_dispose([&](request_base*) { ++disposed; });
  CHECK(disposed == in.size());
  CHECK(index.empty());
}

TEST_CASE("key queue: a batch fills in the levels' stride order, and arrivals join it while it has room",
          "[key_queue][batching]") {
  fixture f(key_queue::settings{1000, 1h, pool_clock::duration::max(), default_weights});
  auto w = f.worker();
  f.queue.set_batching(*w, 16, pool_clock::duration::zero());
  std::vector<probe_ptr> requests;
  for (int round = 0; round < 8; ++round) {
    for (std::uint8_t level = 0; level < 5; ++level) {
      requests.push_back(make_request(level));
      f.submit(requests.back());
    }
  }
  REQUIRE(f.queue.fill_batch(*w));
  std::array<int, 5> taken{};
  {
    const request_base* handling = nullptr;
    auto units = f.queue.start_batch(*w, pool_clock::now(), handling);
    REQUIRE(units.size() == 16);
    CHECK(handling == units.front().get());
    for (auto& u : units) ++taken[u->priority];
    // 16 turns of weights 8:4:2:1:1, every level waiting: its shares exactly.
    CHECK(taken == std::array<int, 5>{8, 4, 2, 1, 1});
    std::vector<char> none(units.size(), 0);
    std::vector<std::pair<std::size_t, request_ptr>> deliveries;
    CHECK(f.queue.finish_batch(*w, units, none, none, false, false, pool_clock::now(), deliveries));
    CHECK(deliveries.size() == 16);  // every caller's answer claimed once
  }
  // The next batch takes the rest of the queue (24, up to 16), then collects:
  // nothing is queued, and an arrival joins it instead.
  const request_base* handling = nullptr;
  auto second = f.queue.start_batch(*w, pool_clock::now(), handling);
  CHECK(second.size() == 16);
  std::vector<char> none(second.size(), 0);
  std::vector<std::pair<std::size_t, request_ptr>> deliveries;
  CHECK(f.queue.finish_batch(*w, second, none, none, false, false, pool_clock::now(), deliveries));
  CHECK(f.queue.queued() == 0);  // the last 8 are in the third batch, which has room
  auto late = make_request(4);
  f.submit(late);
  CHECK(f.queue.queued() == 0);
  auto third = f.queue.start_batch(*w, pool_clock::now(), handling);
  CHECK(third.size() == 9);
  CHECK(third.back().get() == late.get());
  for (auto& r : requests) CHECK(r->completions == 0);  // answers are the worker's to deliver, not the queue's
}

TEST_CASE("key queue: a batching worker lost in its handler, or while it waits for more, ends the batch itself",
          "[key_queue][batching]") {
  // The health sweep claims a lost worker's batch while the worker still
  // runs; the worker then ends the batch it no longer holds, and its one
  // change of state (Processing to Ready) stays legal.
  fixture f(key_queue::settings{1000, 1h, pool_clock::duration::max(), default_weights});
  auto w = f.worker();
  const bool waiting = GENERATE(false, true);  // for more (not started), or in its handler
  f.queue.set_batching(*w, waiting ? 8 : 2, waiting ? 10s : pool_clock::duration::zero());
  std::vector<probe_ptr> requests{make_request(), make_request()};
  for (auto& r : requests) f.submit(r);
  REQUIRE(f.queue.fill_batch(*w));
  const request_base* handling = nullptr;
  std::vector<request_ptr> units;
  if (!waiting) {
    units = f.queue.start_batch(*w, pool_clock::now(), handling);
    REQUIRE(units.size() == 2);
  }
  CHECK(w->shared.state.load() == worker_state::processing);
  auto lost = f.queue.claim_current(*w, errc::worker_lost);
  REQUIRE(lost.size() == 2);
  for (auto& r : lost) r->fail(errc::worker_lost, nullptr);
  CHECK(w->shared.state.load() == worker_state::processing);  // the worker's own, until it ends the batch
  if (waiting) {
    CHECK(f.queue.start_batch(*w, pool_clock::now(), handling).empty());  // every unit ended while it waited
  } else {
    std::vector<char> none(units.size(), 0);
    std::vector<std::pair<std::size_t, request_ptr>> deliveries;
    CHECK_FALSE(f.queue.finish_batch(*w, units, none, none, false, false, pool_clock::now(), deliveries));
    CHECK(deliveries.empty());  // the late answers go nowhere
  }
  CHECK(w->shared.state.load() == worker_state::ready);
  for (auto& r : requests) {
    CHECK(r->completions == 1);
    CHECK(r->outcome == errc::worker_lost);
  }
}

TEST_CASE(
    "key queue: draining ends a batch's wait for more in the same step, and later arrivals wait for the next wave",
    "[key_queue][batching]") {
  fixture f(key_queue::settings{1000, 1h, pool_clock::duration::max(), default_weights});
  auto w = f.worker();
  f.queue.set_batching(*w, 8, 10s);
  auto first = make_request();
  f.submit(first);
  REQUIRE(f.queue.fill_batch(*w));  // nothing else is queued: it collects
  std::uint64_t gen = 0;
  const auto now = pool_clock::now();
  REQUIRE(f.queue.batch_start_time(*w, 10s, now, gen) > now);  // it waits for more
  auto closing = f.queue.start_draining();
  CHECK(closing.parked.empty());
  REQUIRE(closing.nudges.size() == 1);
  CHECK(closing.nudges.front().first == w);
  CHECK(closing.nudges.front().second == gen);
  auto late = make_request();
  f.submit(late);
  CHECK(f.queue.queued() == 1);  // not joined to the batch that is to start now
  const auto later = pool_clock::now();
  CHECK(f.queue.batch_start_time(*w, 10s, later, gen) == later);  // collects no more: it starts now
  const request_base* handling = nullptr;
  auto units = f.queue.start_batch(*w, pool_clock::now(), handling);
  REQUIRE(units.size() == 1);
  CHECK(units.front().get() == first.get());
}

TEST_CASE("key queue: a half-open probe that a full queue refuses is given back to the breaker", "[key_queue]") {
  // Open for no time: the first admission after a failure finds it half-open, with 2 probes.
  fixture f(1, 1h, 1, pool_clock::duration::zero(), 2);
  auto w = f.worker();
  auto lost = make_request();
  f.submit(lost);
  REQUIRE(f.queue.take(*w) == lost);
  for (auto& r : f.queue.claim_current(*w, errc::worker_lost)) r->fail(errc::worker_lost, nullptr);
  REQUIRE(f.stats().breaker == breaker_state::half_open);
  auto first = make_request();
  f.submit(first);  // the first probe, queued: the queue (capacity 1) is full
  auto refused = make_request();
  f.submit(refused, false);  // try_submit: a probe, refused by the full queue
  CHECK(refused->outcome == errc::queue_full);
  const auto now = pool_clock::now();
  bool answered = false;
  std::vector<request_ptr> callers;
  auto serving = f.worker();  // the lost one still counts as processing
  REQUIRE(f.queue.take(*serving) == first);
  CHECK(f.queue.claim_answer_and_take(*first, *serving, answered, callers, false, false, now, 1.0) == nullptr);
  CHECK(answered);
  CHECK(f.stats().breaker == breaker_state::half_open);  // one probe of two succeeded
  auto second = make_request();
  f.submit(second);  // the probe the refused request gave back
  CHECK(second->completions == 0);
  REQUIRE(f.queue.take(*serving) == second);
  CHECK(f.queue.claim_answer_and_take(*second, *serving, answered, callers, false, false, now, 1.0) == nullptr);
  CHECK(f.stats().breaker == breaker_state::closed);
}

TEST_CASE("key queue: a run whose making throws refuses its request with the exception, and changes nothing",
          "[key_queue][coalescing]") {
  // make_run (an allocation, the user's Request moved into the run) runs
  // outside the lock; should it throw, the request is refused with that
  // exception, never accepted, and keeps no reference of the queue's.
  fixture f;
  bool destroyed = false;
  {
    auto r = make_request();
    r->destroyed = &destroyed;
    auto admitted = f.queue.enqueue_coalesced(r, true, {}, "question",
                                              [](request_base&) -> request_ptr { throw std::bad_alloc(); });
    CHECK(admitted.refused);
    REQUIRE(admitted.error);
    CHECK_THROWS_AS(std::rethrow_exception(admitted.error), std::bad_alloc);
    CHECK_FALSE(admitted.wake);
    CHECK_FALSE(f.queue.cancel(*r));  // done: a later cancellation does nothing
    CHECK(f.stats().submitted == 0);
    CHECK(f.stats().rejected == 1);
    CHECK(f.stats().queued == 0);
  }
  CHECK(destroyed);
  auto next = make_request();  // the key goes on
  f.submit(next);
  CHECK(f.stats().queued == 1);
}

namespace {

/// A run that checks, when it is destroyed, that its queue's lock is free:
/// the user's Request goes with it, and no user code runs under the lock.
/// Another thread takes the lock (a held spin_mutex would keep it waiting).
class lock_checking_run final : public request_base {
 public:
  struct probe {
    key_queue* queue = nullptr;
    std::atomic<int> under_lock{0};
    std::atomic<int> destroyed{0};
    std::vector<std::thread> checkers;  // joined by the test, once every lock is released
  };

  explicit lock_checking_run(probe& p) : probe_(p) { is_run = true; }
  ~lock_checking_run() override {
    auto taken = std::make_shared<std::atomic<bool>>(false);
    probe_.checkers.emplace_back([q = probe_.queue, taken] {
      (void)q->queued();
      *taken = true;
    });
    const auto until = pool_clock::now() + 5s;
    while (!*taken && pool_clock::now() < until) std::this_thread::sleep_for(1ms);
    if (!*taken) probe_.under_lock.fetch_add(1);
    probe_.destroyed.fetch_add(1);
  }
  void fail(error_code, std::exception_ptr) override {}
  void abandon() noexcept override {}
  run_info& coalesced() noexcept override { return info_; }

 private:
  probe& probe_;
  run_info info_;
};

}  // namespace

TEST_CASE("key queue: a run's last reference goes after the lock, however it ends", "[key_queue][coalescing]") {
  // A queued run has no holder but the runs map: when its last caller
  // leaves (cancelled, past its deadline, failed by shutdown), or when a
  // full queue refuses the run just made, dropping that reference destroys
  // it, and with it the user's Request. That must not happen under the
  // queue's lock.
  coalescing_fixture f(1);
  static lock_checking_run::probe* probe = nullptr;  // make_run is a plain function pointer
  lock_checking_run::probe checked;
  checked.queue = &f.queue;
  probe = &checked;
  auto make = [](request_base&) -> request_ptr { return request_ptr(new lock_checking_run(*probe)); };
  auto& destroyed = checked.destroyed;
  auto submit = [&](const probe_ptr& r, bool wait_for_room, const SubmitOptions& options = {}) {
    auto admitted = f.queue.enqueue_coalesced(r, wait_for_room, options, "x", make);
    if (admitted.refused) r->fail(admitted.refused, admitted.error);
    return admitted;
  };
  SECTION("its last caller cancelled") {
    auto a = make_request();
    submit(a, true);
    REQUIRE(f.queue.cancel(*a));
    CHECK(destroyed == 1);
  }
  SECTION("its last caller past its deadline") {
    auto a = make_request();
    SubmitOptions soon;
    soon.timeout = 1ms;
    submit(a, true, soon);
    f.ioc.run_for(50ms);
    CHECK(a->outcome == errc::request_timeout);
    CHECK(destroyed == 1);
  }
  SECTION("its callers failed at shutdown") {
    auto a = make_request();
    auto b = make_request();
    submit(a, true);
    submit(b, true);
    f.queue.fail_all(errc::shutting_down);
    CHECK(b->outcome == errc::shutting_down);
    CHECK(destroyed == 1);
  }
  SECTION("refused by a full queue as it is made") {
    auto other = make_request();
    f.submit(other);  // the queue (capacity 1) is full
    auto a = make_request();
    CHECK(submit(a, false).refused == errc::queue_full);
    CHECK(destroyed == 1);
    f.queue.fail_all(errc::shutting_down);
  }
  for (auto& t : checked.checkers) t.join();
  CHECK(checked.under_lock == 0);
}
