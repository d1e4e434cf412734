// File: tests/testutil/test_util.h
//
// Helpers shared by the tests: a self-removing temporary directory, seeded random data
// (the seed is printed so a failure can be replayed), file helpers, and Status matchers.
#ifndef STASIS_TESTS_TESTUTIL_TEST_UTIL_H_
#define STASIS_TESTS_TESTUTIL_TEST_UTIL_H_

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "stasis/status.h"

namespace stasis::testing {

class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }
  // Names of the entries in the directory, sorted.
  std::vector<std::string> List() const;

 private:
  std::string path_;
};

// The seed for this test: STASIS_TEST_SEED if set, else a fixed default. Printed once.
uint64_t TestSeed();

std::vector<uint8_t> RandomBytes(size_t n, uint64_t seed);
// Normally distributed weights (mean 0, stddev 0.02) as f32 or bf16 bytes.
std::vector<uint8_t> NormalF32Bytes(size_t count, uint64_t seed);
std::vector<uint8_t> NormalBF16Bytes(size_t count, uint64_t seed);

std::string ReadFile(const std::string& path);
void WriteFile(const std::string& path, const std::string& bytes);

// Runs `shell_cmd` with /bin/sh, capturing stdout and (through a file in `dir`) stderr.
struct CommandResult {
  int exit_code = -1;  // -1 when it did not exit normally
  std::string out, err;
};
CommandResult RunCommand(const std::string& shell_cmd, const TempDir& dir);

// Runs this test binary again, in a fresh process, with `env_assignment` ("NAME=value",
// the value shell-quoted by the caller when needed) and --gtest_filter=`gtest_filter`, for
// checks that need a process of their own. `out` has stdout and stderr together.
CommandResult RunThisTestBinary(const std::string& env_assignment, const std::string& gtest_filter);

}  // namespace stasis::testing

// EXPECT_THAT(status, StatusIs(StatusCode::kDataLoss, HasSubstr("chunk 3")))
MATCHER_P2(StatusIs, code, message_matcher, "") {
  const ::stasis::Status s = ::stasis::internal::AsStatus(arg);
  *result_listener << "status is " << s.ToString();
  return s.code() == code &&
         ::testing::ExplainMatchResult(message_matcher, std::string(s.message()), result_listener);
}
MATCHER(IsOk, "") {
  const ::stasis::Status s = ::stasis::internal::AsStatus(arg);
  *result_listener << "status is " << s.ToString();
  return s.ok();
}

#define ASSERT_OK(expr) ASSERT_THAT((expr), IsOk())
#define EXPECT_OK(expr) EXPECT_THAT((expr), IsOk())

#endif  // STASIS_TESTS_TESTUTIL_TEST_UTIL_H_
