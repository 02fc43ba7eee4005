// The one translation unit of a separately compiled program that holds
// coropool's core (see the README, "Separate compilation"). Every translation
// unit of the program defines COROPOOL_SEPARATE_COMPILATION.

#include <coropool/src.hpp>
