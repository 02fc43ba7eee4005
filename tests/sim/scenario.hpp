#pragma once

// A pool driven by generated operations in virtual time, checked against a
// model of what each operation may produce: the fuzzer's target, and the
// replay of its corpus as regular tests.

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace coropool::testing {

/// The pool broke a promise the model states; what() names it and lists the
/// operations that led there.
struct model_violation : std::logic_error {
  using std::logic_error::logic_error;
};

/// What one scenario did, for reports.
struct scenario_report {
  std::size_t operations = 0;
  std::size_t callers = 0;
  std::size_t handlers_run = 0;  // Asio handlers, in every step together
  bool config_rejected = false;  // the decoded config was out of range, and refused as such
  bool context_destroyed = false;
  // What the scheduling dimensions did, as the pool's last stats counted them.
  std::uint64_t coalesced = 0;
  std::uint64_t expired_before_dispatch = 0;
  std::uint64_t expired_in_handler = 0;
  std::uint64_t batches_of_more_than_one = 0;  // batches run with two requests or more
};

/// Decodes `data` into a PoolConfig and a sequence of operations (submits of
/// every kind with chosen handler behaviours, cancellations, waits, load
/// behaviours, scale/evict/restart, time running on, shutdown, destruction of
/// the pool and of its context), runs them on one thread in virtual time, and
/// checks the model after every step and at the end. The same bytes give the
/// same run.
///
/// @throws model_violation when the pool breaks a promise; spin_detected when
/// the io_context runs too many handlers without time moving on.
scenario_report run_scenario(const std::uint8_t* data, std::size_t size);

}  // namespace coropool::testing
