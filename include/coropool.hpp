#pragma once

/// @file
/// The umbrella header: everything coropool offers.

#include "coropool/config.hpp"
#include "coropool/error.hpp"
#include "coropool/pool.hpp"
#include "coropool/version.hpp"
