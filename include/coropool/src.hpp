#pragma once

/// @file
/// The separately compiled part of coropool. A program whose every
/// translation unit defines `COROPOOL_SEPARATE_COMPILATION` includes this
/// header in exactly one of them, which then holds the pool's core; the
/// others compile only what depends on their own types. Without the macro
/// (the default) coropool is header-only and this header is not used.

#if !defined(COROPOOL_SEPARATE_COMPILATION)
#error "coropool/src.hpp is for separate compilation: define COROPOOL_SEPARATE_COMPILATION in every translation unit"
#endif

#include "coropool.hpp"
#include "coropool/detail/impl/commands.ipp"
#include "coropool/detail/impl/health.ipp"
#include "coropool/detail/impl/key_queue.ipp"
#include "coropool/detail/impl/key_queue_batching.ipp"
#include "coropool/detail/impl/key_queue_control.ipp"
#include "coropool/detail/impl/key_queue_deadlines.ipp"
#include "coropool/detail/impl/lifecycle.ipp"
#include "coropool/detail/impl/pool_core.ipp"
#include "coropool/detail/impl/requests.ipp"
#include "coropool/detail/impl/shutdown.ipp"
#include "coropool/detail/impl/spawn.ipp"
#include "coropool/detail/impl/stats.ipp"
