#pragma once

/// @file
/// The library version: the one source CMake reads (`project(... VERSION ...)`).

/// The major version: `find_package(coropool X.Y)` accepts an installed coropool of major version X only.
#define COROPOOL_VERSION_MAJOR 0
/// The minor version.
#define COROPOOL_VERSION_MINOR 1
/// The patch version.
#define COROPOOL_VERSION_PATCH 0

/// The version as one number: major * 10000 + minor * 100 + patch.
#define COROPOOL_VERSION (COROPOOL_VERSION_MAJOR * 10000 + COROPOOL_VERSION_MINOR * 100 + COROPOOL_VERSION_PATCH)
