#pragma once

// The Asio pieces coropool uses, and the aliases its headers share.

#include "coropool/detail/time.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/append.hpp>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/defer.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/recycling_allocator.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/system/error_code.hpp>

namespace coropool {

/// coropool is built on Boost.Asio; this alias is what its headers and examples write.
namespace asio = boost::asio;

/// The error code type of every completion signature (Boost.System's, as Boost.Asio uses).
using error_code = boost::system::error_code;

namespace detail {

using executor = asio::any_io_executor;
using strand_type = asio::strand<executor>;
using timer_type = asio::basic_waitable_timer<clock, asio::wait_traits<clock>, executor>;

}  // namespace detail
}  // namespace coropool
