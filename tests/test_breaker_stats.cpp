#include <coropool/pool.hpp>

#include <catch2/catch.hpp>

#include "support.hpp"

#include <map>
#include <regex>
#include <sstream>

using namespace coropool;
using namespace coropool::test;

namespace {

/// A handler that throws for negative requests.
auto failing_handler() {
  return [](Model&, int request) -> asio::awaitable<int> {
    if (request < 0) throw model_error("bad input");
    co_return request + 1;
  };
}

asio::awaitable<error_code> outcome_of(IntPool& pool, int request) {
  auto [e, v] = co_await pool.async_submit("bert", request, asio::as_tuple(asio::use_awaitable));
  if (!e && v != request + 1) co_return make_error_code(errc::invalid_argument);
  co_return e ? error_of(e) : error_code{};
}

}  // namespace

TEST_CASE("the breaker opens on consecutive failures only, and a success resets the count", "[breaker]") {
  asio::io_context ioc(1);
  IntPool pool(ioc, TestConfig().workers(1, 2).breaker(3), scripted_loader(std::make_shared<LoadScript>()),
               failing_handler());
  std::vector<error_code> seen;
  error_code wait_error;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        for (int r : {-1, -1, 1, -1, -1, 2, -1, -1, -1, 3}) seen.push_back(co_await outcome_of(pool, r));
        auto [ec] = co_await pool.async_wait_for_workers("bert", 1s, asio::as_tuple(asio::use_awaitable));
        wait_error = ec;
        co_await pool.async_shutdown(1s, asio::use_awaitable);
      },
      asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  const auto bad = make_error_code(errc::invalid_argument);  // error_of's mark for model_error
  const std::vector<error_code> expected{bad, bad, {}, bad, bad, {}, bad, bad, bad, errc::circuit_open};
  CHECK(seen == expected);
  CHECK(wait_error == errc::circuit_open);
  const auto stats = pool.stats().keys.at("bert");
  CHECK(stats.breaker == breaker_state::open);
  CHECK(stats.breaker_opened == 1);
  CHECK(stats.rejected == 1);
}

TEST_CASE("a half-open breaker lets its probes through, closes on their success, re-opens on a failure", "[breaker]") {
  asio::io_context ioc(1);
  Gate gate(ioc.get_executor());
  IntPool pool(ioc, TestConfig().workers(1, 2).breaker(1, 2), scripted_loader(std::make_shared<LoadScript>()),
               [&](Model&, int request) -> asio::awaitable<int> {
                 if (request < 0) throw model_error("bad input");
                 if (request >= 100) co_await gate.pass();
                 co_return request + 1;
               });
  std::vector<error_code> probes(3);
  int probes_done = 0;
  error_code after_close, reopening_probe, after_reopen;
  breaker_state half_open_seen = breaker_state::closed;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        // (no co_await inside CHECK: GCC 12 evaluates it more than once)
        const error_code opening = co_await outcome_of(pool, -1);  // threshold 1: open
        CHECK(opening == make_error_code(errc::invalid_argument));
        const error_code while_open = co_await outcome_of(pool, 1);
        CHECK(while_open == errc::circuit_open);
        co_await pause(80ms);  // past open_duration
        half_open_seen = pool.stats().keys.at("bert").breaker;
        for (int i = 0; i < 3; ++i) {  // two probes pass and wait at the gate; the third is refused
          pool.async_submit("bert", 100 + i, [&, i](std::exception_ptr e, int) {
            probes[static_cast<std::size_t>(i)] = error_of(e);
            ++probes_done;
          });
        }
        co_await pause(10ms);
        CHECK(probes_done == 1);
        gate.open();
        while (probes_done < 3) co_await pause(1ms);
        after_close = co_await outcome_of(pool, 2);                  // closed again
        const error_code reopening = co_await outcome_of(pool, -1);  // open again
        CHECK(reopening == make_error_code(errc::invalid_argument));
        co_await pause(80ms);
        reopening_probe = co_await outcome_of(pool, -2);  // a failing probe
        after_reopen = co_await outcome_of(pool, 3);
        co_await pool.async_shutdown(1s, asio::use_awaitable);
      },
      asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(half_open_seen == breaker_state::half_open);
  CHECK_FALSE(probes[0]);
  CHECK_FALSE(probes[1]);
  CHECK(probes[2] == errc::circuit_open);
  CHECK_FALSE(after_close);
  CHECK(reopening_probe == make_error_code(errc::invalid_argument));
  CHECK(after_reopen == errc::circuit_open);
  CHECK(pool.stats().keys.at("bert").breaker_opened == 3);
}

TEST_CASE("load failures open the breaker, the predicate decides what counts", "[breaker]") {
  asio::io_context ioc(1);
  auto script = std::make_shared<LoadScript>();
  script->fail = true;
  PoolConfig config = TestConfig().workers(1, 2).breaker(2);
  SECTION("by default every load failure counts") {
    IntPool pool(ioc, config, scripted_loader(script), failing_handler());
    std::vector<error_code> seen;
    asio::co_spawn(
        ioc,
        [&]() -> asio::awaitable<void> {
          for (int i = 0; i < 3; ++i) {
            auto [ec] = co_await pool.async_wait_for_workers("bert", 1s, asio::as_tuple(asio::use_awaitable));
            seen.push_back(ec);
          }
          co_await pool.async_shutdown(1s, asio::use_awaitable);
        },
        asio::detached);
    REQUIRE(run_until_idle(ioc, 1));
    CHECK(seen == std::vector<error_code>{errc::spawn_failed, errc::spawn_failed, errc::circuit_open});
    CHECK(script->started == 2);  // an open breaker loads nothing
  }
  SECTION("a predicate that counts nothing never opens it") {
    config.breaker_counts = [](const std::exception_ptr&) { return false; };
    IntPool pool(ioc, config, scripted_loader(script), failing_handler());
    int failed = 0;
    asio::co_spawn(
        ioc,
        [&]() -> asio::awaitable<void> {
          for (int i = 0; i < 4; ++i) {
            auto [ec] = co_await pool.async_wait_for_workers("bert", 1s, asio::as_tuple(asio::use_awaitable));
            if (ec == errc::spawn_failed) ++failed;
          }
          co_await pool.async_shutdown(1s, asio::use_awaitable);
        },
        asio::detached);
    REQUIRE(run_until_idle(ioc, 1));
    CHECK(failed == 4);
    CHECK(pool.stats().keys.at("bert").breaker == breaker_state::closed);
  }
}

namespace {

/// One sample line of the text format: name, labels, value.
struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value;
};

/// Parses the Prometheus text format line by line, failing the test on any
/// line its grammar does not allow; returns the samples.
std::vector<Sample> parse_prometheus(const std::string& text) {
  static const std::regex help(R"(# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) .+)");
  static const std::regex type(R"(# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped))");
  static const std::regex sample(
      R"(([a-zA-Z_:][a-zA-Z0-9_:]*)(\{((?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*",?)*)\})? (-?[0-9.e+-]+|\+Inf|NaN))");
  static const std::regex label(R"(([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)\")");
  std::vector<Sample> samples;
  std::istringstream lines(text);
  std::string line, typed, type_name;
  std::smatch m;
  while (std::getline(lines, line)) {
    INFO(line);
    if (std::regex_match(line, m, help)) continue;
    if (std::regex_match(line, m, type)) {
      typed = m[1];
      type_name = m[2];
      if (type_name == "counter") CHECK(typed.ends_with("_total"));
      continue;
    }
    REQUIRE(std::regex_match(line, m, sample));
    Sample s{m[1], {}, std::stod(m[4])};
    CHECK(s.name.starts_with(typed));  // every sample follows its metric's TYPE line
    const std::string labels = m[3];
    for (std::sregex_iterator it(labels.begin(), labels.end(), label), end; it != end; ++it) {
      std::string value;
      const std::string raw = (*it)[2];
      for (std::size_t i = 0; i < raw.size(); ++i) {
        if (raw[i] == '\\') {
          ++i;
          value += raw[i] == 'n' ? '\n' : raw[i];
        } else {
          value += raw[i];
        }
      }
      s.labels[(*it)[1]] = value;
    }
    samples.push_back(std::move(s));
  }
  return samples;
}

double value_of(const std::vector<Sample>& samples, const std::string& name, const std::string& key,
                const std::string& state = {}) {
  for (const auto& s : samples) {
    if (s.name == name && s.labels.count("key") && s.labels.at("key") == key &&
        (state.empty() || (s.labels.count("state") && s.labels.at("state") == state))) {
      return s.value;
    }
  }
  FAIL("no sample " << name << " for key " << key);
  return -1;
}

}  // namespace

TEST_CASE("stats count every outcome, and to_prometheus renders them in the text format", "[stats]") {
  asio::io_context ioc(1);
  PoolConfig config = TestConfig().breaker(0);  // breaker off
  config.queue_capacity = 1;
  config.max_workers_per_key = 1;  // no scale-up: the queued request stays queued
  config.request_timeout = 200ms;
  Gate gate(ioc.get_executor());
  IntPool pool(ioc, config, scripted_loader(std::make_shared<LoadScript>()),
               [&](Model&, int request) -> asio::awaitable<int> {
                 if (request < 0) throw model_error("bad input");
                 if (request >= 100) co_await gate.pass();
                 co_return request + 1;
               });
  const std::string odd_key = "we\"ird\\key\nname";
  PoolStats during;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        co_await outcome_of(pool, 1);
        co_await outcome_of(pool, 2);
        co_await outcome_of(pool, -1);                            // failed
        const int odd_answer = co_await pool.submit(odd_key, 5);  // a second key, with a name to escape
        CHECK(odd_answer == 6);
        pool.async_submit("bert", 100, [](std::exception_ptr, int) {});  // in flight at the gate
        pool.async_submit("bert", 101, [](std::exception_ptr, int) {});  // queued
        auto [e, v] = co_await pool.async_try_submit("bert", 7, asio::as_tuple(asio::use_awaitable));
        CHECK(error_of(e) == errc::queue_full);  // rejected
        co_await pause(5ms);
        during = pool.stats();
        co_await pause(250ms);  // both time out
        gate.open();
        co_await pool.async_shutdown(1s, asio::use_awaitable);
      },
      asio::detached);
  REQUIRE(run_until_idle(ioc, 1));

  const KeyStats& bert = during.keys.at("bert");
  CHECK(bert.submitted == 5);
  CHECK(bert.completed == 2);
  CHECK(bert.failed == 1);
  CHECK(bert.rejected == 1);
  CHECK(bert.queued == 1);
  CHECK(bert.in_flight == 1);
  CHECK(bert.workers_in(worker_state::processing) == 1);
  CHECK(bert.loads == 1);
  CHECK(bert.latency.count == 3);
  CHECK(bert.latency.quantile_us(0.5) > 0);
  CHECK(bert.latency.quantile_us(0.99) >= bert.latency.quantile_us(0.5));
  CHECK(during.keys.at(odd_key).completed == 1);

  const auto after = pool.stats();
  CHECK(after.keys.at("bert").timed_out == 2);
  CHECK(after.total().submitted == 6);

  const auto samples = parse_prometheus(to_prometheus(during));
  CHECK(value_of(samples, "coropool_requests_submitted_total", "bert") == 5);
  CHECK(value_of(samples, "coropool_requests_completed_total", "bert") == 2);
  CHECK(value_of(samples, "coropool_requests_failed_total", "bert") == 1);
  CHECK(value_of(samples, "coropool_requests_rejected_total", "bert") == 1);
  CHECK(value_of(samples, "coropool_queued_requests", "bert") == 1);
  CHECK(value_of(samples, "coropool_workers", "bert", "processing") == 1);
  CHECK(value_of(samples, "coropool_breaker_state", "bert", "closed") == 1);
  CHECK(value_of(samples, "coropool_requests_completed_total", odd_key) == 1);  // the label round-trips
  CHECK(value_of(samples, "coropool_request_latency_seconds_count", "bert") == 3);
  double inf_bucket = -1;
  for (const auto& s : samples) {
    if (s.name == "coropool_request_latency_seconds_bucket" && s.labels.at("key") == "bert" &&
        s.labels.at("le") == "+Inf") {
      inf_bucket = s.value;
    }
  }
  CHECK(inf_bucket == 3);
}

TEST_CASE("stats: the latencies and queue times workers record count once, while they serve and after they leave",
          "[stats]") {
  // A worker serving one request at a time records its own (outside the key's
  // lock); stats() adds them up, and a worker that leaves hands them to its key.
  asio::io_context ioc(1);
  Gate gate(ioc.get_executor());
  IntPool pool(ioc, TestConfig().workers(2, 2), scripted_loader(std::make_shared<LoadScript>()),
               [&](Model&, int request) -> asio::awaitable<int> {
                 if (request >= 100) co_await gate.pass();
                 co_return request + 1;
               });
  std::vector<std::string> seen;  // "latency count / queue_time count", at each step
  auto record = [&] {
    const KeyStats k = pool.stats().keys.at("bert");
    seen.push_back(std::to_string(k.latency.count) + " / " + std::to_string(k.queue_time.count));
    std::uint64_t buckets = 0;
    for (auto n : k.queue_time.buckets) buckets += n;
    CHECK(buckets == k.queue_time.count);
  };
  std::size_t live_after_evict = 99;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        // co_await outside CHECK: GCC 12 evaluates a co_await inside Catch's macro more than once.
        co_await pool.wait_for_workers("bert", 5s);
        const int first = co_await pool.submit("bert", 1);  // each handed to a parked worker
        const int second = co_await pool.submit("bert", 2);
        CHECK(first + second == 5);
        record();
        int answered = 0;
        for (int r : {100, 101, 3}) {  // two at the gate, one queued behind them
          pool.async_submit("bert", r, [&](std::exception_ptr e, int) { answered += e ? 0 : 1; });
        }
        co_await pause(5ms);
        record();
        gate.open();
        const bool answered_all = co_await eventually([&] { return answered == 3; });
        CHECK(answered_all);
        record();
        co_await pool.async_evict("bert", asio::use_awaitable);
        const bool left = co_await eventually([&] { return pool.live_worker_count("bert") == 0; });
        CHECK(left);
        live_after_evict = pool.live_worker_count("bert");
        record();
        const int fourth = co_await pool.submit("bert", 4);  // a new wave's worker
        CHECK(fourth == 5);
        record();
        co_await pool.async_shutdown(1s, asio::use_awaitable);
        record();
      },
      asio::detached);
  REQUIRE(run_until_idle(ioc, 1));
  CHECK(live_after_evict == 0);
  CHECK(seen == std::vector<std::string>{"2 / 2", "2 / 4", "5 / 5", "5 / 5", "6 / 6", "6 / 6"});
}
