#pragma once

/// @file
/// The umbrella header: everything coropool offers.

#include "coropool/config.hpp"
#include "coropool/error.hpp"
#include "coropool/offload.hpp"
#include "coropool/pool.hpp"
#include "coropool/prometheus.hpp"
#include "coropool/stats.hpp"
#include "coropool/stream.hpp"
#include "coropool/version.hpp"
#include "coropool/worker_state.hpp"
