#include <coropool/error.hpp>

#include <catch2/catch.hpp>

#include <stdexcept>

TEST_CASE("errc codes belong to coropool's category", "[error]") {
  boost::system::error_code ec = coropool::errc::spawn_timeout;
  CHECK(ec.category() == coropool::error_category());
  CHECK(std::string(ec.category().name()) == "coropool");
  CHECK(ec.message() == "timed out waiting for workers");
  CHECK(ec == coropool::errc::spawn_timeout);
  CHECK(ec != coropool::errc::spawn_failed);

  SECTION("every code has its own message") {
    for (int e = static_cast<int>(coropool::errc::invalid_argument);
         e <= static_cast<int>(coropool::errc::shutting_down); ++e) {
      CHECK(coropool::error_category().message(e) != "unknown coropool error");
    }
    CHECK(coropool::error_category().message(999) == "unknown coropool error");
  }

  SECTION("converts to std::error_code") {
    std::error_code std_ec = ec;
    CHECK(std_ec.message() == ec.message());
  }
}

TEST_CASE("spawn_error carries the loader's exception", "[error]") {
  auto cause = std::make_exception_ptr(std::runtime_error("weights missing"));
  coropool::spawn_error error("bert", cause);
  CHECK(error.code() == coropool::errc::spawn_failed);
  CHECK(std::string(error.what()).find("weights missing") != std::string::npos);
  CHECK(std::string(error.what()).find("bert") != std::string::npos);
  CHECK_THROWS_WITH(std::rethrow_exception(error.cause()), "weights missing");
  CHECK(coropool::spawn_error::describe(std::make_exception_ptr(42)) == "unknown exception");
}
