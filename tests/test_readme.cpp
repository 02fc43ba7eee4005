#include <coropool.hpp>

#include <catch2/catch.hpp>

#include "readme_snippets.hpp"

TEST_CASE("the README's quick start runs", "[readme]") { CHECK(readme_snippet_1::main() == 0); }
