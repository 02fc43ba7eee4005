#pragma once

#include "coropool/detail/asio.hpp"

#include <boost/smart_ptr/intrusive_ptr.hpp>

#include <cstddef>
#include <exception>
#include <iterator>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

namespace coropool::detail {

/// Answers a worker has given to callers on one executor, delivered together
/// by one function submitted there: a worker serving a burst of requests
/// costs the scheduler one operation per burst and executor, not one per
/// request. The function is deferred, so it runs no later than one deferred
/// per answer would: after the worker's current turn on its thread.
/// Answers join it until it starts; after that a worker opens a new one.
template <class Entry, class Response>
class answer_batch {
 public:
  explicit answer_batch(const executor& target) : target_(target) {}

  const executor& target() const noexcept { return target_; }

  /// Adds an answer unless the batch has started running.
  bool try_add(Entry& entry, std::exception_ptr& error, Response& response) {
    std::lock_guard lock(mutex_);
    if (started_) return false;
    answers_.push_back(answer{boost::intrusive_ptr<Entry>(&entry), std::move(error), std::move(response)});
    return true;
  }

  /// Delivers every answer. Should a handler throw (it escapes the
  /// executor's run(), as with any Asio handler), the answers after it are
  /// posted again first: none is dropped.
  void run() {
    std::vector<answer> answers;
    {
      std::lock_guard lock(mutex_);
      started_ = true;
      answers.swap(answers_);
    }
    for (std::size_t i = 0; i < answers.size(); ++i) {
      try {
        auto& a = answers[i];
        Entry& entry = *a.entry;
        entry.invoke(std::move(a.error), std::move(a.response), std::move(a.entry));
      } catch (...) {
        if (i + 1 < answers.size()) {
          auto rest = std::make_shared<answer_batch>(target_);
          rest->answers_.assign(std::make_move_iterator(answers.begin() + static_cast<std::ptrdiff_t>(i) + 1),
                                std::make_move_iterator(answers.end()));
          asio::post(target_, [rest] { rest->run(); });
        }
        throw;
      }
    }
  }

 private:
  struct answer {
    boost::intrusive_ptr<Entry> entry;
    std::exception_ptr error;
    Response response;
  };

  const executor target_;
  std::mutex mutex_;
  bool started_ = false;
  std::vector<answer> answers_;
};

/// A worker's side of answer_batch: the batch it adds to while it serves.
template <class Entry, class Response>
class answer_sender {
 public:
  void send(Entry& entry, std::exception_ptr error, Response response) {
    const executor* target = entry.batch_executor();
    if (!target) return entry.complete(std::move(error), std::move(response));
    if (open_ && open_->target() == *target && open_->try_add(entry, error, response)) return;
    open_ = std::make_shared<answer_batch<Entry, Response>>(*target);
    open_->try_add(entry, error, response);
    asio::defer(*target, [batch = open_] { batch->run(); });
  }

 private:
  std::shared_ptr<answer_batch<Entry, Response>> open_;
};

}  // namespace coropool::detail
