// coropool's model server: fastText models over the Open Inference Protocol.
//
//   model_server --model-dir models                 serve every {name}.bin in models/
//   model_server --model-dir models --train-demo    train the demo models missing there, then exit
//
// See the README's "The model server" section, and --help.
#include "fasttext_model.hpp"
#include "server.hpp"

#include <boost/program_options.hpp>

#include <chrono>
#include <exception>
#include <iostream>
#include <string>
#include <vector>

namespace po = boost::program_options;
using std::chrono::microseconds;

namespace {

microseconds seconds(double s) { return microseconds(static_cast<long long>(s * 1e6)); }

}  // namespace

int main(int argc, char** argv) try {
  model_server::ServerOptions o;
  double request_timeout = 10, max_request_timeout = 60, batch_delay_ms = 0, idle_timeout = 300, drain_grace = 0,
         drain_timeout = 10, client_timeout = 30, open_duration = 30;
  std::size_t memory_budget_mb = 0;
  std::string model_dir = "models";
  std::vector<std::string> delays;

  po::options_description desc("model_server: fastText models over HTTP (Open Inference Protocol), served by coropool");
  // clang-format off
  desc.add_options()
      ("help,h", "print this help")
      ("model-dir", po::value(&model_dir)->default_value(model_dir), "where the models are: {model-dir}/{name}.bin")
      ("train-demo", "train the demo models (sentiment, topic, embed) missing from --model-dir, then exit")
      ("address", po::value(&o.address)->default_value(o.address), "the address to listen on")
      ("port", po::value(&o.port)->default_value(o.port), "the port to listen on; 0 picks a free one")
      ("port-file", po::value(&o.port_file), "write the port listened on to this file")
      ("threads", po::value(&o.threads)->default_value(o.threads), "io threads")
      ("io-per-core", po::bool_switch(&o.io_per_core), "one io_context, pool and acceptor per io thread")
      ("compute-threads", po::value(&o.compute_threads)->default_value(o.compute_threads),
       "threads running fastText; 0 is one per hardware thread")
      ("workers", po::value(&o.workers)->default_value(o.workers), "workers a model starts with (per core)")
      ("max-workers", po::value(&o.max_workers)->default_value(o.max_workers), "workers a model may grow to (per core)")
      ("queue-capacity", po::value(&o.queue_capacity)->default_value(o.queue_capacity),
       "requests a model's queue holds (per core); beyond it: 429")
      ("request-timeout", po::value(&request_timeout)->default_value(request_timeout),
       "seconds a request may take, queueing included; beyond it: 504")
      ("max-request-timeout", po::value(&max_request_timeout)->default_value(max_request_timeout),
       "seconds a request's own parameters.timeout may ask for at most")
      ("max-batch-size", po::value(&o.max_batch_size)->default_value(o.max_batch_size),
       "requests a worker serves in one batch; 1 turns batching off")
      ("max-batch-delay-ms", po::value(&batch_delay_ms)->default_value(batch_delay_ms),
       "milliseconds a batch may wait for more requests")
      ("memory-budget-mb", po::value(&memory_budget_mb)->default_value(memory_budget_mb),
       "MiB the loaded models may take (a model takes its file's size); 0 is 80 % of RAM")
      ("warm", po::value(&o.warm)->multitoken(), "models to load at start (ready waits for them)")
      ("idle-timeout", po::value(&idle_timeout)->default_value(idle_timeout), "seconds before an idle worker is unloaded")
      ("drain-grace", po::value(&drain_grace)->default_value(drain_grace),
       "seconds after SIGTERM that the server is not ready but still accepts (for load balancers to notice)")
      ("drain-timeout", po::value(&drain_timeout)->default_value(drain_timeout),
       "seconds SIGTERM then lets requests in flight finish")
      ("client-timeout", po::value(&client_timeout)->default_value(client_timeout),
       "seconds a client may take to send a request or read an answer")
      ("max-body-bytes", po::value(&o.max_body_bytes)->default_value(o.max_body_bytes), "larger request bodies: 413")
      ("retry-after", po::value(&o.retry_after_seconds)->default_value(o.retry_after_seconds),
       "the Retry-After of a 429, in seconds")
      ("failure-threshold", po::value(&o.failure_threshold)->default_value(o.failure_threshold),
       "consecutive failures that open a model's circuit breaker")
      ("open-duration", po::value(&open_duration)->default_value(open_duration), "seconds a breaker stays open")
      ("inject-delay", po::value(&delays)->multitoken(),
       "NAME=SECONDS: fault injection for tests; every batch of NAME first waits SECONDS");
  // clang-format on
  po::variables_map vm;
  po::store(po::parse_command_line(argc, argv, desc), vm);
  po::notify(vm);
  if (vm.count("help")) {
    std::cout << desc << "\n";
    return 0;
  }
  o.model_dir = model_dir;
  if (vm.count("train-demo")) {
    const auto trained = model_server::train_demo_models(o.model_dir);
    std::cout << "model_server: "
              << (trained.empty() ? "the demo models were already in " : "trained the demo models in ")
              << o.model_dir.string() << "\n";
    return 0;
  }
  for (double s : {request_timeout, max_request_timeout, idle_timeout, drain_timeout, client_timeout, open_duration}) {
    if (!(s > 0)) throw po::error("every duration must be positive");
  }
  if (drain_grace < 0) throw po::error("--drain-grace must not be negative");
  o.drain_grace = seconds(drain_grace);
  if (batch_delay_ms < 0) throw po::error("--max-batch-delay-ms must not be negative");
  o.request_timeout = seconds(request_timeout);
  o.max_request_timeout = seconds(max_request_timeout);
  o.max_batch_delay = seconds(batch_delay_ms / 1000);
  o.idle_timeout = seconds(idle_timeout);
  o.drain_timeout = seconds(drain_timeout);
  o.client_timeout = seconds(client_timeout);
  o.open_duration = seconds(open_duration);
  o.memory_budget = std::uint64_t{memory_budget_mb} << 20;
  if (o.threads == 0) throw po::error("--threads must be at least 1");
  for (const auto& d : delays) {
    const auto eq = d.find('=');
    if (eq == std::string::npos || eq == 0) throw po::error("--inject-delay takes NAME=SECONDS");
    o.delays[d.substr(0, eq)] = seconds(std::stod(d.substr(eq + 1)));
  }
  return model_server::run_server(o);
} catch (const po::error& e) {
  std::cerr << "model_server: " << e.what() << " (see --help)\n";
  return 2;
} catch (const std::exception& e) {
  std::cerr << "model_server: " << e.what() << "\n";
  return 1;
}
