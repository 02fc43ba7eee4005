#pragma once

// waiter_list: the callers of wait_for_workers parked on one key.
//
// Pool strand only, except size(). A caller joins when it finds the key
// without a ready worker; it leaves exactly once: by finish() (its timer, its
// cancellation, a refusal) or by finish_all() (the end of the key's spawn
// wave, or shutdown), whichever comes first; the later ones find it done.
// Callers are grouped by the executor their handlers run on as they arrive,
// so that the end of a wave wakes each executor's callers with one
// submission per batch (wake_batch) and searches nothing.

#include "coropool/detail/asio.hpp"
#include "coropool/detail/waiter.hpp"

#include <atomic>
#include <cstddef>
#include <exception>
#include <list>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

namespace coropool::detail {

/// The waiters of one key whose handlers share an executor, in arrival order.
struct waiter_group {
  std::optional<executor> target;  // empty: handlers whose executor cannot be batched
  std::list<std::shared_ptr<waiter>> members;
};

class waiter_list {
 public:
  /// Adds a waiter to the group of its executor. Only the most recent groups
  /// are searched: callers on many executors make more, smaller groups.
  void add(std::shared_ptr<waiter> w) {
    constexpr int searched = 8;
    int looked = 0;
    auto group = groups_.end();
    for (auto it = groups_.end(); it != groups_.begin() && looked < searched; ++looked) {
      if ((--it)->target == w->batch_executor) {
        group = it;
        break;
      }
    }
    if (group == groups_.end()) group = groups_.insert(groups_.end(), waiter_group{w->batch_executor, {}});
    w->list = this;
    w->group = group;
    w->position = group->members.insert(group->members.end(), w);
    count_.fetch_add(1, std::memory_order_relaxed);
  }

  /// Completes one waiter exactly once, and takes it off its list if it is
  /// on one. The handler is completed before the timer is disarmed:
  /// cancelling the timer is not what wakes the caller.
  static void finish(waiter& w, error_code ec) {
    if (w.done) return;
    w.done = true;
    w.complete(ec, nullptr);
    if (waiter_list* list = std::exchange(w.list, nullptr)) {
      auto keep = *w.position;  // the list may hold the last reference
      list->remove(w);
      w.timer.cancel();
    }
  }

  /// Completes every waiter, in batches of one executor each (see wake_batch).
  void finish_all(error_code ec, const std::exception_ptr& error = nullptr) {
    std::vector<wake_batch> batches;
    count_.store(0, std::memory_order_relaxed);
    for (auto& group : std::exchange(groups_, {})) {
      for (auto& w : group.members) {
        w->done = true;
        w->list = nullptr;
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

  /// How many wait; any thread (a snapshot).
  std::size_t size() const noexcept { return count_.load(std::memory_order_relaxed); }

 private:
  void remove(waiter& w) {
    w.group->members.erase(w.position);
    if (w.group->members.empty()) groups_.erase(w.group);
    count_.fetch_sub(1, std::memory_order_relaxed);
  }

  std::list<waiter_group> groups_;
  std::atomic<std::size_t> count_{0};
};

}  // namespace coropool::detail
