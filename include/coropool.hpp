#pragma once

/// @file
/// The umbrella header: everything coropool offers.

/// @namespace coropool
/// Keyed pools of coroutine workers on Boost.Asio: Pool and its
/// configuration, statistics, streams and errors. `coropool::detail` is not API.

#include "coropool/batch.hpp"
#include "coropool/config.hpp"
#include "coropool/error.hpp"
#include "coropool/offload.hpp"
#include "coropool/pool.hpp"
#include "coropool/prometheus.hpp"
#include "coropool/stats.hpp"
#include "coropool/stream.hpp"
#include "coropool/version.hpp"
#include "coropool/worker_state.hpp"
