// The HTTP side of the model server and the pools behind it.
//
// Shape: one Core per io_context. With --io-per-core each io thread has its
// own Core (io_context, Pool, acceptor on a SO_REUSEPORT port), and a
// connection is served entirely by the core that accepted it; otherwise one
// Core's io_context is run by every io thread. Each connection is a coroutine
// on its own strand. The fastText code, which blocks, runs on one compute
// thread_pool shared by every core.
//
// Shutdown (SIGTERM, SIGINT): /v2/health/ready turns 503, the acceptors close
// (new connections are refused), idle keep-alive connections are closed, each
// answer after that says `Connection: close`, and every pool drains with
// async_shutdown(drain deadline). When the pools are done and the last
// connection has ended, the io_contexts run out of work and run() returns 0.
// A second signal cuts the drain short.
#include "server.hpp"

#include "fasttext_model.hpp"
#include "http_metrics.hpp"
#include "protocol.hpp"

#include <coropool.hpp>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <iostream>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <unistd.h>

namespace model_server {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace json = boost::json;
using tcp = asio::ip::tcp;
using clock = std::chrono::steady_clock;
using Reply = http::response<http::string_body>;
using HttpRequest = http::request<http::string_body>;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

/// A worker's model: the fastText model, and the delay injected before each of its batches (tests only).
struct LoadedModel {
  std::shared_ptr<const FastTextModel> model;
  std::chrono::microseconds delay{0};
};

using ModelPool = coropool::Pool<InferRequest, InferResponse>;

/// One io_context and what runs on it.
struct Core {
  explicit Core(int concurrency_hint) : ioc(concurrency_hint) {}
  asio::io_context ioc;
  asio::strand<asio::io_context::executor_type> control{asio::make_strand(ioc)};  // the acceptor, the signals
  tcp::acceptor acceptor{control};
  std::optional<ModelPool> pool;
};

/// What the drain needs to reach a connection: touched only on the connection's strand.
struct Connection {
  asio::any_io_executor executor;
  beast::tcp_stream* stream = nullptr;  // null once the connection's coroutine is ending
  beast::flat_buffer* buffer = nullptr;
  http::request_parser<http::string_body>* parser = nullptr;
  bool reading = false;  // waiting for a request's header
  bool closing = false;  // answer what is in hand, then close
};

Reply make_reply(http::status status, std::string body, std::string_view content_type = "application/json") {
  Reply res{status, 11};
  res.set(http::field::server, "coropool-model-server");
  res.set(http::field::content_type, content_type);
  res.body() = std::move(body);
  return res;
}

Reply error_reply(http::status status, std::string_view message) { return make_reply(status, error_json(message)); }

std::vector<std::string_view> split_path(std::string_view target) {
  target = target.substr(0, target.find('?'));
  std::vector<std::string_view> parts;
  while (!target.empty()) {
    if (target.front() == '/') {
      target.remove_prefix(1);
      continue;
    }
    const auto end = target.find('/');
    parts.push_back(target.substr(0, end));
    target = end == std::string_view::npos ? std::string_view{} : target.substr(end);
  }
  return parts;
}

std::string version() {
  return std::to_string(COROPOOL_VERSION_MAJOR) + "." + std::to_string(COROPOOL_VERSION_MINOR) + "." +
         std::to_string(COROPOOL_VERSION_PATCH);
}

std::string end_event_json(const std::string& model, std::size_t events) {
  return json::serialize(json::object{{"model_name", model}, {"events", events}});
}

int breaker_rank(coropool::breaker_state s) {
  switch (s) {
    case coropool::breaker_state::open:
      return 2;
    case coropool::breaker_state::half_open:
      return 1;
    default:
      return 0;
  }
}

class Server {
 public:
  explicit Server(const ServerOptions& options);

  int run() {
    for (const auto& name : options_.warm) {
      if (!model_exists(name)) {
        std::cerr << "model_server: --warm " << name << ": no " << (options_.model_dir / (name + ".bin")).string()
                  << "\n";
        return 2;
      }
    }
    // The signals are caught before the port is announced: a script that
    // sends SIGTERM as soon as it knows the port gets the drain.
    asio::signal_set signals(cores_[0]->control, SIGINT, SIGTERM);
    signals_ = &signals;
    if (!listen()) return 1;
    std::cout << "model_server: serving http://" << options_.address << ":" << port_ << " with the models of "
              << options_.model_dir.string() << " (" << cores_.size() << " core(s) of " << options_.threads
              << " io thread(s) in all)" << std::endl;
    if (!options_.port_file.empty()) {
      std::ofstream(options_.port_file + ".partial") << port_ << "\n";
      std::filesystem::rename(options_.port_file + ".partial", options_.port_file);
    }
    // Every io_context runs until finish(): a core whose own work is done may
    // still be called by another core's load or unload.
    for (auto& core : cores_) keep_running_.emplace_back(asio::make_work_guard(core->ioc));
    wait_for_signal();
    for (auto& core : cores_) asio::co_spawn(core->control, accept_loop(*core), asio::detached);

    std::vector<std::thread> threads;
    if (options_.io_per_core) {
      for (std::size_t i = 1; i < cores_.size(); ++i) threads.emplace_back([this, i] { cores_[i]->ioc.run(); });
    } else {
      for (unsigned i = 1; i < options_.threads; ++i) threads.emplace_back([this] { cores_[0]->ioc.run(); });
    }
    cores_[0]->ioc.run();
    for (auto& t : threads) t.join();
    compute_.join();
    std::cout << "model_server: stopped" << std::endl;
    return 0;
  }

 private:
  // ---- the pools ------------------------------------------------------------

  coropool::PoolConfig pool_config(unsigned cores) {
    coropool::PoolConfig c;
    c.cold_start_workers = options_.workers;
    c.max_workers_per_key = options_.max_workers;
    c.queue_capacity = options_.queue_capacity;
    c.request_timeout = options_.request_timeout;
    c.max_request_timeout = options_.max_request_timeout;
    c.batching.max_batch_size = options_.max_batch_size;
    c.batching.max_batch_delay = options_.max_batch_delay;
    c.compute_executor = compute_.get_executor();
    // Each core its share of the budget; with none given, of the pool's own
    // default (80 % of physical memory), which each pool would otherwise take whole.
    std::uint64_t budget = options_.memory_budget;
    if (budget == 0 && cores > 1) {
      budget = static_cast<std::uint64_t>(::sysconf(_SC_PHYS_PAGES)) *
               static_cast<std::uint64_t>(::sysconf(_SC_PAGE_SIZE)) / 5 * 4;
    }
    c.memory_budget = budget / cores;
    const auto dir = options_.model_dir;
    c.worker_footprint = [dir](const std::string& key) -> std::uint64_t {
      std::error_code ec;  // a loaded fastText model takes about its file's size
      const auto size = std::filesystem::file_size(dir / (key + ".bin"), ec);
      return ec ? 0 : size;
    };
    c.warm_keys = options_.warm;
    c.idle_timeout = options_.idle_timeout;
    c.failure_threshold = options_.failure_threshold;
    c.open_duration = options_.open_duration;
    // A request the model cannot answer (labels of a vector model) is the
    // caller's fault, not the model's: it does not count against the breaker.
    c.breaker_counts = [](const std::exception_ptr& e) {
      try {
        std::rethrow_exception(e);
      } catch (const std::invalid_argument&) {
        return false;
      } catch (...) {
        return true;
      }
    };
    return c;
  }

  auto load_function() {
    return [this](const std::string& key) -> asio::awaitable<LoadedModel> {
      LoadedModel loaded;
      if (auto d = options_.delays.find(key); d != options_.delays.end()) loaded.delay = d->second;
      const auto file = options_.model_dir / (key + ".bin");
      try {
        loaded.model = co_await coropool::offload(compute_.get_executor(), [&] { return FastTextModel::load(file); });
      } catch (const std::exception& e) {
        std::lock_guard lock(load_errors_mutex_);
        load_errors_[key] = e.what();
        throw;  // the pool fails this load with it
      }
      {
        std::lock_guard lock(load_errors_mutex_);
        load_errors_.erase(key);
      }
      co_return loaded;
    };
  }

  // The delay a test injects into a model; cancelled, like any handler's wait,
  // when the pool emits the handler's cancellation (a deadline, shutdown).
  static asio::awaitable<void> injected_delay(const LoadedModel& m) {
    if (m.delay.count() <= 0) co_return;
    asio::steady_timer timer(co_await asio::this_coro::executor, m.delay);
    co_await timer.async_wait(asio::use_awaitable);
  }

  auto batch_function() {
    return [this](LoadedModel& m,
                  std::span<InferRequest> requests) -> asio::awaitable<std::vector<coropool::outcome<InferResponse>>> {
      co_await injected_delay(m);
      // One hop to the compute threads for the whole batch: what batching saves here.
      auto answer_all = [&] {
        std::vector<coropool::outcome<InferResponse>> out;
        out.reserve(requests.size());
        for (const InferRequest& r : requests) {
          try {
            out.emplace_back(predict(*m.model, r));
          } catch (...) {
            out.emplace_back(std::current_exception());
          }
        }
        return out;
      };
      co_return co_await coropool::offload(compute_.get_executor(), answer_all);
    };
  }

  auto stream_function() {
    return [this](LoadedModel& m, InferRequest request,
                  coropool::StreamWriter<InferResponse>& out) -> asio::awaitable<void> {
      co_await injected_delay(m);
      for (std::string& text : request.texts) {
        InferRequest one{{std::move(text)}, request.top_k, request.outputs};
        auto answer_one = [&] { return predict(*m.model, one); };
        co_await out.write(co_await coropool::offload(compute_.get_executor(), answer_one));
      }
    };
  }

  bool model_exists(std::string_view name) const {
    if (!valid_model_name(name)) return false;
    std::error_code ec;
    return std::filesystem::is_regular_file(options_.model_dir / (std::string(name) + ".bin"), ec);
  }

  std::string load_error(const std::string& name) const {
    std::lock_guard lock(load_errors_mutex_);
    auto it = load_errors_.find(name);
    return it == load_errors_.end() ? std::string{} : it->second;
  }

  bool ready_everywhere(const std::string& name) const {
    return std::all_of(cores_.begin(), cores_.end(), [&](const auto& c) { return c->pool->has_workers(name); });
  }

  coropool::PoolStats stats() const {
    if (cores_.size() == 1) return cores_[0]->pool->stats();
    // Every core's pool summed per key, as one pool's would be.
    std::vector<coropool::PoolStats> each;
    for (const auto& c : cores_) each.push_back(c->pool->stats());
    coropool::PoolStats all;
    std::set<std::string> names;
    for (const auto& s : each) {
      all.rejected += s.rejected;
      all.memory_budget += s.memory_budget;
      all.memory_reserved += s.memory_reserved;
      for (const auto& [name, k] : s.keys) names.insert(name);
    }
    for (const auto& name : names) {
      coropool::PoolStats cores_of_key;
      auto worst = coropool::breaker_state::closed;
      for (std::size_t i = 0; i < each.size(); ++i) {
        if (auto it = each[i].keys.find(name); it != each[i].keys.end()) {
          cores_of_key.keys[std::to_string(i)] = it->second;
          if (breaker_rank(it->second.breaker) > breaker_rank(worst)) worst = it->second.breaker;
        }
      }
      all.keys[name] = cores_of_key.total();
      all.keys[name].breaker = worst;
    }
    return all;
  }

  // ---- errors -------------------------------------------------------------

  Reply pool_error_reply(std::exception_ptr error, const std::string& model) const {
    try {
      std::rethrow_exception(error);
    } catch (const boost::system::system_error& e) {
      const auto code = e.code();
      if (code == coropool::errc::queue_full) {
        Reply res = error_reply(http::status::too_many_requests, "model '" + model + "' is busy: its queue is full");
        res.set(http::field::retry_after, std::to_string(options_.retry_after_seconds));
        return res;
      }
      if (code == coropool::errc::request_timeout) {
        return error_reply(http::status::gateway_timeout, "model '" + model + "' did not answer before the deadline");
      }
      if (code == coropool::errc::spawn_failed) {
        std::string cause = load_error(model);
        if (cause.empty()) cause = e.what();
        return error_reply(http::status::service_unavailable, "model '" + model + "' failed to load: " + cause);
      }
      if (code == coropool::errc::circuit_open) {
        std::string cause = load_error(model);
        return error_reply(http::status::service_unavailable,
                           "model '" + model + "' keeps failing: its circuit breaker is open" +
                               (cause.empty() ? std::string{} : " (last load: " + cause + ")"));
      }
      if (code == coropool::errc::memory_exhausted) {
        return error_reply(http::status::service_unavailable, "no memory left to load model '" + model + "'");
      }
      if (code == coropool::errc::shutting_down) {
        return error_reply(http::status::service_unavailable, "the server is shutting down");
      }
      if (code == coropool::errc::worker_lost) {
        return error_reply(http::status::service_unavailable, "the worker serving the request was lost; retry");
      }
      if (code == coropool::errc::invalid_argument) return error_reply(http::status::bad_request, e.what());
      return error_reply(http::status::internal_server_error, e.what());
    } catch (const std::invalid_argument& e) {
      return error_reply(http::status::bad_request, e.what());
    } catch (const std::exception& e) {
      return error_reply(http::status::internal_server_error, std::string("inference failed: ") + e.what());
    }
  }

  static coropool::SubmitOptions submit_options(const RequestParameters& p) {
    coropool::SubmitOptions o;
    if (p.timeout) o.timeout = *p.timeout;
    o.priority = p.priority;
    return o;
  }

  // ---- routes -------------------------------------------------------------

  struct Routed {
    std::string endpoint;  // the metrics label
    std::string model;     // when the route names one
    http::verb method = http::verb::get;
    bool stream = false;
  };

  // Names the route of `target`; the endpoint is empty for no route.
  static Routed resolve(std::string_view target) {
    const auto p = split_path(target);
    auto is = [&](std::initializer_list<std::string_view> want) {
      if (p.size() != want.size()) return false;
      std::size_t i = 0;
      for (auto w : want) {
        if (w != "*" && p[i] != w) return false;
        ++i;
      }
      return true;
    };
    using v = http::verb;
    if (is({"metrics"})) return {"metrics", {}, v::get};
    if (is({"v2"})) return {"server_metadata", {}, v::get};
    if (is({"v2", "health", "live"})) return {"live", {}, v::get};
    if (is({"v2", "health", "ready"})) return {"ready", {}, v::get};
    if (is({"v2", "repository", "index"})) return {"repository_index", {}, v::post};
    if (is({"v2", "models", "*"})) return {"model_metadata", std::string(p[2]), v::get};
    if (is({"v2", "models", "*", "ready"})) return {"model_ready", std::string(p[2]), v::get};
    if (is({"v2", "models", "*", "infer"})) return {"infer", std::string(p[2]), v::post};
    if (is({"v2", "models", "*", "generate_stream"})) return {"generate_stream", std::string(p[2]), v::post, true};
    if (is({"v2", "repository", "models", "*", "load"})) return {"load", std::string(p[3]), v::post};
    if (is({"v2", "repository", "models", "*", "unload"})) return {"unload", std::string(p[3]), v::post};
    return {};
  }

  // Answers everything but generate_stream; whatever throws is a 500, answered.
  asio::awaitable<Reply> answer(Core& core, const Routed& route, const HttpRequest& req) {
    std::string failure;
    try {
      co_return co_await answer_route(core, route, req);
    } catch (const std::exception& e) {
      failure = e.what();
    }
    co_return error_reply(http::status::internal_server_error, "the server failed: " + failure);
  }

  asio::awaitable<Reply> answer_route(Core& core, const Routed& route, const HttpRequest& req) {
    const std::string& name = route.model;
    if (route.endpoint == "metrics") {
      co_return make_reply(http::status::ok, coropool::to_prometheus(stats()) + metrics_.render(),
                           "text/plain; version=0.0.4; charset=utf-8");
    }
    if (route.endpoint == "live") co_return make_reply(http::status::ok, R"({"live":true})");
    if (route.endpoint == "ready") {
      if (!ready_)
        co_return make_reply(http::status::service_unavailable, R"({"ready":false,"error":"shutting down"})");
      for (const auto& w : options_.warm) {
        if (!ready_everywhere(w)) {
          co_return make_reply(http::status::service_unavailable,
                               json::serialize(json::object{{"ready", false}, {"error", "loading model '" + w + "'"}}));
        }
      }
      co_return make_reply(http::status::ok, R"({"ready":true})");
    }
    if (route.endpoint == "server_metadata") {
      co_return make_reply(http::status::ok, json::serialize(json::object{
                                                 {"name", "coropool-model-server"},
                                                 {"version", version()},
                                                 {"extensions", json::array{"model_repository", "generate_stream"}}}));
    }
    if (route.endpoint == "repository_index") co_return make_reply(http::status::ok, repository_index());
    if (!model_exists(name)) co_return error_reply(http::status::not_found, "no model named '" + name + "'");

    if (route.endpoint == "model_metadata") {
      const auto info = read_model_info(options_.model_dir / (name + ".bin"));
      if (!info) co_return error_reply(http::status::service_unavailable, "'" + name + ".bin' is not a fastText model");
      json::array outputs;
      if (info->supervised) {
        outputs.push_back(json::object{{"name", "labels"}, {"datatype", "BYTES"}, {"shape", json::array{-1, -1}}});
        outputs.push_back(
            json::object{{"name", "probabilities"}, {"datatype", "FP32"}, {"shape", json::array{-1, -1}}});
      }
      outputs.push_back(json::object{{"name", "vector"}, {"datatype", "FP32"}, {"shape", json::array{-1, info->dim}}});
      co_return make_reply(http::status::ok,
                           json::serialize(json::object{
                               {"name", name},
                               {"versions", json::array{"1"}},
                               {"platform", "fasttext"},
                               {"inputs", json::array{json::object{
                                              {"name", "text"}, {"datatype", "BYTES"}, {"shape", json::array{-1}}}}},
                               {"outputs", std::move(outputs)}}));
    }
    if (route.endpoint == "model_ready") {
      if (ready_everywhere(name)) {
        co_return make_reply(http::status::ok, json::serialize(json::object{{"name", name}, {"ready", true}}));
      }
      const std::string cause = load_error(name);
      co_return make_reply(
          http::status::service_unavailable,
          json::serialize(json::object{
              {"name", name}, {"ready", false}, {"error", cause.empty() ? "not loaded" : "failed to load: " + cause}}));
    }
    if (route.endpoint == "infer") {
      auto parsed = parse_infer(req.body());
      if (!parsed.value) co_return error_reply(http::status::bad_request, parsed.error);
      std::exception_ptr error;
      try {
        InferResponse r = co_await core.pool->try_submit(name, std::move(parsed.value->request),
                                                         submit_options(parsed.value->parameters));
        co_return make_reply(http::status::ok, infer_response_json(name, parsed.value->id, r));
      } catch (...) {
        error = std::current_exception();
      }
      co_return pool_error_reply(error, name);
    }
    if ((route.endpoint == "load" || route.endpoint == "unload") && draining_) {
      co_return error_reply(http::status::service_unavailable, "the server is shutting down");
    }
    if (route.endpoint == "load") {
      std::exception_ptr error;
      try {
        for (auto& c : cores_)
          co_await c->pool->scale(name, std::max(options_.workers, c->pool->live_worker_count(name)));
      } catch (...) {
        error = std::current_exception();
      }
      if (error) co_return pool_error_reply(error, name);
      co_return make_reply(http::status::ok, json::serialize(json::object{{"name", name}, {"state", "READY"}}));
    }
    if (route.endpoint == "unload") {
      std::exception_ptr error;
      try {
        for (auto& c : cores_) co_await c->pool->evict(name);
      } catch (...) {
        error = std::current_exception();
      }
      if (error) co_return pool_error_reply(error, name);
      co_return make_reply(http::status::ok, json::serialize(json::object{{"name", name}, {"state", "UNAVAILABLE"}}));
    }
    co_return error_reply(http::status::not_found, "no route");
  }

  std::string repository_index() const {
    std::vector<std::string> names;
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(options_.model_dir, ec)) {
      const auto file = entry.path().filename().string();
      if (file.size() > 4 && file.ends_with(".bin") && valid_model_name(file.substr(0, file.size() - 4))) {
        names.push_back(file.substr(0, file.size() - 4));
      }
    }
    std::sort(names.begin(), names.end());
    json::array index;
    for (const auto& name : names) {
      json::object m{{"name", name}, {"version", "1"}};
      const bool loading = std::any_of(cores_.begin(), cores_.end(),
                                       [&](const auto& c) { return c->pool->live_worker_count(name) > 0; });
      if (ready_everywhere(name)) {
        m["state"] = "READY";
      } else if (loading) {
        m["state"] = "LOADING";
      } else {
        m["state"] = "UNAVAILABLE";
        const std::string cause = load_error(name);
        m["reason"] = cause.empty() ? "not loaded" : "failed to load: " + cause;
      }
      index.push_back(std::move(m));
    }
    return json::serialize(index);
  }

  // ---- generate_stream: Server-Sent Events --------------------------------

  // Answers a generate_stream request itself (its answer is written as it
  // comes). Returns the answer to write instead when there is no stream to
  // start (bad input, a refusal, an error before the first event).
  asio::awaitable<std::optional<Reply>> stream_answer(Core& core, const Routed& route, const HttpRequest& req,
                                                      beast::tcp_stream& stream, bool keep_alive,
                                                      clock::time_point start) {
    const std::string& name = route.model;
    if (!model_exists(name)) co_return error_reply(http::status::not_found, "no model named '" + name + "'");
    auto parsed = parse_generate(req.body());
    if (!parsed.value) co_return error_reply(http::status::bad_request, parsed.error);
    const std::vector<std::string> texts = parsed.value->request.texts;
    // The request's timeout covers the wait for its first event (the pool's
    // own deadline ends with the queue: a stream a worker has started runs to
    // its end). The timer closes the stream, which completes the read.
    struct Pending {
      coropool::Stream<InferResponse> chunks;
      bool started = false;
      bool timed_out = false;
    };
    auto pending = std::make_shared<Pending>(Pending{core.pool->try_submit_stream(
        name, std::move(parsed.value->request), submit_options(parsed.value->parameters))});
    asio::steady_timer first_event_limit(co_await asio::this_coro::executor,
                                         parsed.value->parameters.timeout.value_or(options_.request_timeout));
    first_event_limit.async_wait([pending](const boost::system::error_code& ec) {
      if (ec || pending->started) return;
      pending->timed_out = true;
      pending->chunks.close();
    });
    auto& chunks = pending->chunks;

    std::optional<InferResponse> first;
    std::exception_ptr error;
    try {
      first = co_await chunks.next();
    } catch (...) {
      error = std::current_exception();
    }
    pending->started = true;
    first_event_limit.cancel();
    if (pending->timed_out) {
      co_return error_reply(http::status::gateway_timeout,
                            "model '" + name + "' did not start the stream before the deadline");
    }
    if (error) co_return pool_error_reply(error, name);

    // HTTP/1.0 has no chunks: its events are the body, ended by closing.
    const bool chunked = req.version() >= 11;
    http::response<http::empty_body> head{http::status::ok, req.version()};
    head.set(http::field::server, "coropool-model-server");
    head.set(http::field::content_type, "text/event-stream");
    head.set(http::field::cache_control, "no-cache");
    head.keep_alive(keep_alive && chunked);
    head.chunked(chunked);
    metrics_.record(route.endpoint, 200, std::chrono::duration<double>(clock::now() - start).count());
    http::response_serializer<http::empty_body> serializer{head};
    stream.expires_after(options_.client_timeout);
    co_await http::async_write_header(stream, serializer, asio::use_awaitable);

    auto send = [&](const std::string& event) -> asio::awaitable<void> {
      stream.expires_after(options_.client_timeout);
      if (!chunked) {
        co_await asio::async_write(stream, asio::buffer(event), asio::use_awaitable);
        co_return;
      }
      const auto chunk = http::make_chunk(asio::buffer(event));
      co_await asio::async_write(stream, chunk, asio::use_awaitable);
    };
    // A failed write is the client gone: it propagates and ends the
    // connection. The stream's own error is told in-band, as its last event.
    std::size_t index = 0;
    // Events are named before their co_await: GCC 12 mishandles braced
    // initializers and temporaries inside a co_await expression.
    for (std::optional<InferResponse> chunk = std::move(first); chunk;) {
      const std::string event =
          "data: " + stream_event_json(name, index, index < texts.size() ? texts[index] : "", *chunk) + "\n\n";
      co_await send(event);
      ++index;
      try {
        chunk = co_await chunks.next();
      } catch (...) {
        error = std::current_exception();
        chunk.reset();
      }
    }
    const std::string last_event = error ? "event: error\ndata: " + pool_error_reply(error, name).body() + "\n\n"
                                         : "event: end\ndata: " + end_event_json(name, index) + "\n\n";
    co_await send(last_event);
    if (chunked) {
      stream.expires_after(options_.client_timeout);
      const auto last = http::make_chunk_last();  // named: GCC 12 mishandles temporaries in co_await
      co_await asio::async_write(stream, last, asio::use_awaitable);
    }
    co_return std::nullopt;
  }

  // ---- connections --------------------------------------------------------

  bool listen() {
    boost::system::error_code ec;
    const auto address = asio::ip::make_address(options_.address, ec);
    if (ec) {
      std::cerr << "model_server: bad address '" << options_.address << "': " << ec.message() << "\n";
      return false;
    }
    tcp::endpoint endpoint(address, options_.port);
    for (auto& core : cores_) {
      auto& a = core->acceptor;
      a.open(endpoint.protocol(), ec);
      if (!ec) a.set_option(asio::socket_base::reuse_address(true), ec);
      if (!ec && cores_.size() > 1) {
        // Every core listens on the same port; the kernel spreads the connections.
        a.set_option(asio::detail::socket_option::boolean<SOL_SOCKET, SO_REUSEPORT>(true), ec);
      }
      if (!ec) a.bind(endpoint, ec);
      if (!ec) a.listen(asio::socket_base::max_listen_connections, ec);
      if (ec) {
        std::cerr << "model_server: cannot listen on " << options_.address << ":" << endpoint.port() << ": "
                  << ec.message() << "\n";
        return false;
      }
      endpoint = a.local_endpoint();  // the port the system picked, for the next core
    }
    port_ = endpoint.port();
    return true;
  }

  asio::awaitable<void> accept_loop(Core& core) {
    for (;;) {
      auto [ec, socket] = co_await core.acceptor.async_accept(asio::make_strand(core.ioc), use_tuple);
      // A connection accepted as the drain closed the acceptor is served
      // still (with `Connection: close`), not reset.
      if (ec == asio::error::operation_aborted || (ec && !core.acceptor.is_open())) co_return;
      if (ec) {
        // Out of descriptors, or the like: wait a little rather than spin.
        asio::steady_timer pause(core.control, std::chrono::milliseconds(50));
        co_await pause.async_wait(use_tuple);
        continue;
      }
      asio::co_spawn(socket.get_executor(), session(core, std::move(socket)), asio::detached);
    }
  }

  // Writes `res` and, unless keep-alive, ends the connection gracefully.
  asio::awaitable<bool> write_reply(beast::tcp_stream& stream, Reply res, const HttpRequest* req, bool keep_alive,
                                    const std::string& endpoint, clock::time_point start) {
    if (req) res.version(req->version());
    res.keep_alive(keep_alive);
    res.prepare_payload();
    metrics_.record(endpoint, res.result_int(), std::chrono::duration<double>(clock::now() - start).count());
    stream.expires_after(options_.client_timeout);
    co_await http::async_write(stream, res, asio::use_awaitable);
    co_return keep_alive;
  }

  // Closes after an answer sent early (413, a malformed request): the client
  // may still be sending, and closing with its bytes unread would reset the
  // connection and could lose the answer; read and drop them for a moment.
  static asio::awaitable<void> linger(beast::tcp_stream& stream) {
    beast::error_code ec;
    stream.socket().shutdown(tcp::socket::shutdown_send, ec);
    std::array<char, 16384> sink;
    std::size_t dropped = 0;
    stream.expires_after(std::chrono::seconds(2));
    while (dropped < (std::size_t{64} << 20)) {
      auto [read_ec, n] = co_await stream.async_read_some(asio::buffer(sink), use_tuple);
      if (read_ec) break;
      dropped += n;
    }
  }

  asio::awaitable<void> session(Core& core, tcp::socket socket) {
    beast::tcp_stream stream(std::move(socket));
    auto self = std::make_shared<Connection>();
    self->executor = stream.get_executor();
    self->stream = &stream;
    auto registered = enter(self);
    ++metrics_.connections;
    beast::flat_buffer buffer;
    bool linger_after = false;
    try {
      for (;;) {
        // Draining, a connection keeps only a request it has begun to send.
        if ((self->closing || draining_) && buffer.size() == 0) {
          linger_after = true;
          break;
        }
        http::request_parser<http::string_body> parser;
        parser.body_limit(options_.max_body_bytes);
        parser.header_limit(16 * 1024);
        stream.expires_after(options_.client_timeout);
        self->buffer = &buffer;
        self->parser = &parser;
        self->reading = true;
        auto [ec, n] = co_await http::async_read_header(stream, buffer, parser, use_tuple);
        self->reading = false;
        if (!ec && parser.get()[http::field::expect] == "100-continue") {
          // The client waits for this before it sends the body.
          http::response<http::empty_body> go_on{http::status::continue_, 11};
          stream.expires_after(options_.client_timeout);
          std::tie(ec, n) = co_await http::async_write(stream, go_on, use_tuple);
        }
        if (!ec && !parser.is_done()) std::tie(ec, n) = co_await http::async_read(stream, buffer, parser, use_tuple);
        const auto start = clock::now();
        if (ec == http::error::body_limit) {
          co_await write_reply(
              stream,
              error_reply(http::status::payload_too_large,
                          "the request body is over " + std::to_string(options_.max_body_bytes) + " bytes"),
              nullptr, false, "other", start);
          linger_after = true;
          break;
        }
        if (ec == http::error::end_of_stream || ec == beast::error::timeout || ec == asio::error::operation_aborted ||
            ec == asio::error::eof || ec == asio::error::connection_reset) {
          break;
        }
        if (ec) {
          co_await write_reply(stream,
                               error_reply(http::status::bad_request, "malformed HTTP request: " + ec.message()),
                               nullptr, false, "other", start);
          linger_after = true;
          break;
        }
        HttpRequest req = parser.release();
        const Routed route = resolve(req.target());
        auto keep = [&] { return req.keep_alive() && !draining_ && !self->closing; };
        if (route.endpoint.empty()) {
          if (!co_await write_reply(
                  stream,
                  error_reply(http::status::not_found,
                              "no route for " + std::string(req.method_string()) + " " + std::string(req.target())),
                  &req, keep(), "other", start)) {
            break;
          }
          continue;
        }
        if (req.method() != route.method) {
          Reply res = error_reply(http::status::method_not_allowed,
                                  std::string(req.target()) + " takes " + std::string(http::to_string(route.method)));
          res.set(http::field::allow, http::to_string(route.method));
          if (!co_await write_reply(stream, std::move(res), &req, keep(), route.endpoint, start)) break;
          continue;
        }
        if (route.stream) {
          auto refused = co_await stream_answer(core, route, req, stream, keep(), start);
          if (refused) {
            if (!co_await write_reply(stream, std::move(*refused), &req, keep(), route.endpoint, start)) break;
            continue;
          }
          if (!keep() || req.version() < 11) break;
          continue;
        }
        Reply res = co_await answer(core, route, req);
        if (!co_await write_reply(stream, std::move(res), &req, keep(), route.endpoint, start)) break;
      }
    } catch (const std::exception&) {
      // The client went away mid-answer, or stalled past client_timeout: nobody to tell.
    }
    self->stream = nullptr;  // the drain no longer reaches it: it ends here
    if (linger_after) {
      co_await linger(stream);
    } else {
      beast::error_code ec;
      stream.socket().shutdown(tcp::socket::shutdown_send, ec);
    }
    --metrics_.connections;
  }

  // Registers a connection for the drain; the returned guard unregisters it.
  std::shared_ptr<void> enter(const std::shared_ptr<Connection>& c) {
    std::lock_guard lock(connections_mutex_);
    auto it = connections_.insert(connections_.end(), c);
    return std::shared_ptr<void>(nullptr, [this, it](void*) {
      {
        std::lock_guard relock(connections_mutex_);
        connections_.erase(it);
      }
      if (draining_) asio::post(cores_[0]->control, [this] { maybe_finish(); });
    });
  }

  // Tells every connection to close after its answer. A connection waiting
  // for a request that has not begun is closed at once; `now` closes busy ones too.
  void close_connections(bool now) {
    std::lock_guard lock(connections_mutex_);
    for (const auto& weak : connections_) {
      auto c = weak.lock();
      if (!c) continue;
      asio::post(c->executor, [c, now] {
        c->closing = true;
        if (!c->stream) return;
        const bool nothing_yet = c->reading && c->buffer->size() == 0 && !c->parser->got_some();
        if (nothing_yet || now) c->stream->cancel();
      });
    }
  }

  // ---- signals ------------------------------------------------------------

  void wait_for_signal() {
    signals_->async_wait([this](const boost::system::error_code& ec, int signal) {
      if (ec || finished_) return;  // finish() has run
      ++signals_seen_;
      if (signals_seen_ == 1) {
        std::cout << "model_server: signal " << signal << ": not ready";
        if (options_.drain_grace.count() > 0) {
          std::cout << "; accepting for " << std::chrono::duration<double>(options_.drain_grace).count() << " s more";
        }
        std::cout << "; draining for up to " << std::chrono::duration<double>(options_.drain_timeout).count() << " s"
                  << std::endl;
        begin_drain(options_.drain_timeout);
      } else {
        std::cout << "model_server: signal " << signal << " again, stopping now" << std::endl;
        begin_drain(std::chrono::microseconds(0));
        close_connections(true);
      }
      wait_for_signal();
    });
  }

  // The first signal: not ready at once; after drain_grace (while load
  // balancers notice), stop accepting and drain. A second signal: stop now.
  void begin_drain(std::chrono::microseconds deadline) {
    if (ready_.exchange(false) && deadline.count() > 0 && options_.drain_grace.count() > 0) {
      grace_timer_.emplace(cores_[0]->control, options_.drain_grace);
      grace_timer_->async_wait([this, deadline](const boost::system::error_code& ec) {
        if (!ec) stop_accepting_and_drain(deadline);
      });
      return;
    }
    if (grace_timer_) grace_timer_->cancel();
    stop_accepting_and_drain(deadline);
  }

  void stop_accepting_and_drain(std::chrono::microseconds deadline) {
    const bool first = !draining_;
    if (first) {
      pools_running_ = cores_.size();
      draining_ = true;
      for (auto& core : cores_) {
        asio::post(core->control, [&core = *core] {
          boost::system::error_code ignored;
          core.acceptor.close(ignored);  // new connections are refused from here on
        });
      }
      close_connections(false);
    }
    for (auto& core : cores_) {
      asio::co_spawn(
          core->control,
          [this, &core = *core, deadline, first]() -> asio::awaitable<void> {
            co_await core.pool->async_shutdown(deadline, use_tuple);
            if (first && --pools_running_ == 0) asio::post(cores_[0]->control, [this] { maybe_finish(); });
          },
          asio::detached);
    }
  }

  // On cores_[0]->control: once the pools are done and the last connection
  // has ended, nothing is left to wait for; the io_contexts may run out.
  void maybe_finish() {
    if (finished_ || !draining_ || pools_running_ != 0) return;
    {
      std::lock_guard lock(connections_mutex_);
      if (!connections_.empty()) return;
    }
    finished_ = true;
    signals_->cancel();
    for (auto& guard : keep_running_) guard.reset();
  }

  ServerOptions options_;
  asio::thread_pool compute_;
  std::vector<std::unique_ptr<Core>> cores_;
  HttpMetrics metrics_;
  std::atomic<bool> ready_{true};                  // false from the first signal on
  std::atomic<bool> draining_{false};              // from the end of drain_grace on
  std::optional<asio::steady_timer> grace_timer_;  // on cores_[0]->control
  std::atomic<std::size_t> pools_running_{0};
  asio::signal_set* signals_ = nullptr;  // on cores_[0]->control, as are the two below
  int signals_seen_ = 0;
  bool finished_ = false;
  std::vector<asio::executor_work_guard<asio::io_context::executor_type>> keep_running_;
  unsigned short port_ = 0;

  mutable std::mutex load_errors_mutex_;
  std::map<std::string, std::string> load_errors_;  // a model's last load failure, until it loads

  std::mutex connections_mutex_;  // held to add, remove or list; never across I/O
  std::list<std::weak_ptr<Connection>> connections_;
};

// After the class: the pools take its handlers, whose types are deduced.
Server::Server(const ServerOptions& options)
    : options_(options),
      compute_(options.compute_threads ? options.compute_threads : std::max(1u, std::thread::hardware_concurrency())) {
  const unsigned cores = options_.io_per_core ? std::max(1u, options_.threads) : 1u;
  for (unsigned i = 0; i < cores; ++i) {
    auto core =
        std::make_unique<Core>(options_.io_per_core || options_.threads == 1 ? 1 : static_cast<int>(options_.threads));
    core->pool.emplace(core->ioc, pool_config(cores), load_function(), coropool::batched(batch_function()),
                       stream_function());
    cores_.push_back(std::move(core));
  }
}

}  // namespace

int run_server(const ServerOptions& options) {
  Server server(options);
  return server.run();
}

}  // namespace model_server
