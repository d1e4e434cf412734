#include "stasis/status.h"

#include <cerrno>

#include "tests/testutil/test_util.h"

namespace stasis {
namespace {

using ::testing::HasSubstr;

StatusOr<int> Half(int v) {
  if (v % 2) return InvalidArgumentError("odd");
  return v / 2;
}

StatusOr<int> Quarter(int v) {
  STASIS_ASSIGN_OR_RETURN(int h, Half(v));
  STASIS_ASSIGN_OR_RETURN(int q, Half(h));
  return q;
}

Status CheckEven(int v) {
  STASIS_RETURN_IF_ERROR(Half(v));
  return OkStatus();
}

TEST(StatusTest, OkIsCheapAndPrintable) {
  Status s;
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kOk);
  EXPECT_EQ(s.ToString(), "OK");
}

TEST(StatusTest, CarriesCodeAndMessage) {
  Status s = DataLossError("chunk 3: checksum mismatch");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.ToString(), "DATA_LOSS: chunk 3: checksum mismatch");
  Status copy = s;
  EXPECT_EQ(copy, s);
  EXPECT_EQ(s.WithContext("image.stasis").message(), "image.stasis: chunk 3: checksum mismatch");
}

TEST(StatusTest, MacrosPropagate) {
  EXPECT_EQ(*Quarter(8), 2);
  EXPECT_THAT(Quarter(6), StatusIs(StatusCode::kInvalidArgument, HasSubstr("odd")));
  EXPECT_OK(CheckEven(4));
  EXPECT_THAT(CheckEven(3), StatusIs(StatusCode::kInvalidArgument, "odd"));
}

TEST(StatusTest, StatusOrFromOkStatusIsInternal) {
  StatusOr<int> v = OkStatus();
  EXPECT_THAT(v, StatusIs(StatusCode::kInternal, HasSubstr("OK status")));
}

TEST(StatusTest, ErrnoMapping) {
  EXPECT_EQ(ErrnoToStatus(ENOENT, "open x").code(), StatusCode::kNotFound);
  EXPECT_EQ(ErrnoToStatus(ENOSPC, "write").code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(ErrnoToStatus(EIO, "read").code(), StatusCode::kUnavailable);
  EXPECT_EQ(ErrnoToStatus(EACCES, "open").code(), StatusCode::kPermissionDenied);
  EXPECT_THAT(ErrnoToStatus(ENOENT, "open 'a'"),
              StatusIs(StatusCode::kNotFound, HasSubstr("open 'a': ")));
}

}  // namespace
}  // namespace stasis
