// The C API and its C++ wrapper without a GPU: clear statuses and thread-local error messages.
#include "kvarn/kvarn.h"
#include "kvarn/kvarn.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <thread>

namespace {

TEST(CApi, RuntimeCreationWithoutAGpuFailsWithAClearStatus) {
  kvarn_runtime runtime = reinterpret_cast<kvarn_runtime>(0x1);
  kvarn_runtime_options options{0, nullptr, 1, 0, nullptr};
  const kvarn_status status = kvarn_runtime_create(&options, &runtime);
  if (status == KVARN_OK) {
    kvarn_runtime_destroy(runtime);
    GTEST_SKIP() << "a GPU is present; the no-GPU path is not reachable here";
  }
  EXPECT_EQ(status, KVARN_ERROR_NO_DEVICE);
  EXPECT_EQ(runtime, nullptr);
  EXPECT_THAT(kvarn_last_error(), ::testing::HasSubstr("driver"));
  EXPECT_STREQ(kvarn_status_name(status), "KVARN_ERROR_NO_DEVICE");
}

TEST(CApi, NullArgumentsAreRejectedAndErrorsAreThreadLocal) {
  EXPECT_EQ(kvarn_runtime_create(nullptr, nullptr), KVARN_ERROR_INVALID_ARGUMENT);
  EXPECT_THAT(kvarn_last_error(), ::testing::HasSubstr("runtime is NULL"));
  std::string other;
  std::thread([&] {
    EXPECT_STREQ(kvarn_last_error(), "");
    EXPECT_EQ(kvarn_prepare(nullptr, "decode", nullptr, nullptr), KVARN_ERROR_INVALID_ARGUMENT);
    other = kvarn_last_error();
  }).join();
  EXPECT_THAT(other, ::testing::HasSubstr("kvarn_prepare: NULL argument"));
  EXPECT_THAT(kvarn_last_error(), ::testing::HasSubstr("runtime is NULL")) << "unchanged by the other thread";
  EXPECT_EQ(kvarn_launch_decode(nullptr, nullptr, 1, nullptr), KVARN_ERROR_INVALID_ARGUMENT);
  EXPECT_STRNE(kvarn_version(), "");
}

} // namespace

namespace {

TEST(CppWrapper, FailuresThrowTheStatusAndTheMessage) {
  try {
    kvarn::api::Runtime runtime;
    GTEST_SKIP() << "a GPU is present; the no-GPU path is not reachable here";
  } catch (const kvarn::api::Error &error) {
    EXPECT_EQ(error.status(), KVARN_ERROR_NO_DEVICE);
    EXPECT_THAT(error.what(), ::testing::HasSubstr("KVARN_ERROR_NO_DEVICE: "));
    EXPECT_THAT(error.what(), ::testing::HasSubstr("driver"));
  }
  EXPECT_NO_THROW(kvarn::api::check(KVARN_OK));
  EXPECT_THROW(kvarn::api::check(kvarn_runtime_create(nullptr, nullptr)), kvarn::api::Error);
  EXPECT_EQ(kvarn::api::version(), std::string(kvarn_version()));
}

} // namespace
