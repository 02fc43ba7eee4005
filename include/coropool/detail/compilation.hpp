#pragma once

// Header-only (the default) or separately compiled, as Asio does it (its
// ASIO_SEPARATE_COMPILATION and asio/impl/src.hpp): define
// COROPOOL_SEPARATE_COMPILATION in every translation unit of a program and
// include <coropool/src.hpp> in exactly one of them. The pool's core (the
// bodies in detail/impl/*.ipp, which depend on no user type) is then compiled
// there once, instead of in every translation unit that uses a Pool.

#if defined(COROPOOL_SEPARATE_COMPILATION)
#define COROPOOL_DECL
#else
#define COROPOOL_HEADER_ONLY 1
#define COROPOOL_DECL inline
#endif
