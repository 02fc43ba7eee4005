#pragma once

// deadline_index: a key's outstanding requests by deadline, under its
// queue's lock (see key_queue).
//
// Requests with the pool's request_timeout are accepted in deadline order
// (their acceptance times never go back: key_queue::accept_time_locked), so almost every request has the
// latest deadline so far: it goes to the back of a list, in constant time,
// as before requests could have deadlines of their own. A request whose
// deadline is earlier than the list's last (SubmitOptions) goes to a binary
// min-heap instead, O(log n), with its slot in the request so that it leaves
// in O(log n) too. The earliest deadline is the earlier of the list's front
// and the heap's top. A balanced tree of every request measured 20-30 %
// slower on `coropool_bench roundtrip`: its rebalancing, under the key's
// lock, touches the nodes of other requests, which other threads wrote.

#include "coropool/detail/request.hpp"

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace coropool::detail {

class deadline_index {
 public:
  deadline_index() = default;
  deadline_index(const deadline_index&) = delete;
  deadline_index& operator=(const deadline_index&) = delete;

  bool empty() const noexcept { return in_order_.empty() && earlier_.empty(); }

  /// The request with the earliest deadline; null when empty.
  request_base* earliest() const noexcept {
    request_base* front = in_order_.empty() ? nullptr : const_cast<request_base*>(&in_order_.front());
    if (earlier_.empty()) return front;
    request_base* top = earlier_.front();
    return front && front->deadline <= top->deadline ? front : top;
  }

  /// Makes room for a request due at `deadline`, so that its insert() does
  /// not allocate (key_queue allocates before it changes anything).
  void reserve_for(clock::time_point deadline) {
    if (in_order_.empty() || deadline >= in_order_.back().deadline) return;  // the list: no allocation
    if (earlier_.size() == earlier_.capacity()) earlier_.reserve(earlier_.empty() ? 8 : 2 * earlier_.size());
  }

  /// Adds `r`, its deadline set; it must not be in the index. Allocates only
  /// without reserve_for() first.
  void insert(request_base& r) {
    if (in_order_.empty() || r.deadline >= in_order_.back().deadline) {
      r.deadline_slot = 0;
      in_order_.push_back(r);
      return;
    }
    earlier_.push_back(&r);
    place(earlier_.size() - 1);
    sift_up(earlier_.size() - 1);
  }

  /// Removes `r`, which must be in the index.
  void erase(request_base& r) {
    if (r.deadline_slot == 0) {
      in_order_.erase(in_order_.iterator_to(r));
      return;
    }
    const std::size_t slot = r.deadline_slot - 1;
    r.deadline_slot = 0;
    request_base* last = earlier_.back();
    earlier_.pop_back();
    if (slot == earlier_.size()) return;  // it was the last
    earlier_[slot] = last;
    place(slot);
    sift_down(slot);
    sift_up(slot);
  }

  /// Removes every request, calling `dispose(request_base*)` on each.
  template <class Dispose>
  void clear_and_dispose(Dispose dispose) {
    in_order_.clear_and_dispose(dispose);
    for (request_base* r : std::exchange(earlier_, {})) {
      r->deadline_slot = 0;
      dispose(r);
    }
  }

 private:
  void place(std::size_t slot) noexcept { earlier_[slot]->deadline_slot = static_cast<std::uint32_t>(slot + 1); }

  void sift_up(std::size_t slot) noexcept {
    while (slot > 0) {
      const std::size_t parent = (slot - 1) / 2;
      if (!(earlier_[slot]->deadline < earlier_[parent]->deadline)) return;
      std::swap(earlier_[slot], earlier_[parent]);
      place(slot);
      place(parent);
      slot = parent;
    }
  }

  void sift_down(std::size_t slot) noexcept {
    for (;;) {
      std::size_t least = slot;
      for (std::size_t child = 2 * slot + 1; child <= 2 * slot + 2 && child < earlier_.size(); ++child) {
        if (earlier_[child]->deadline < earlier_[least]->deadline) least = child;
      }
      if (least == slot) return;
      std::swap(earlier_[slot], earlier_[least]);
      place(slot);
      place(least);
      slot = least;
    }
  }

  deadline_list in_order_;              // ascending deadlines: each insert at the back
  std::vector<request_base*> earlier_;  // a min-heap of the rest; each knows its slot (deadline_slot - 1)
};

}  // namespace coropool::detail
