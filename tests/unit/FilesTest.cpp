// Atomic file writes (files.h): whole or nothing, the reason on failure, modes kept.
#include "kvarn/files.h"

#include "../common/TemporaryDirectory.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

using namespace kvarn;
namespace fs = std::filesystem;

namespace {

class FilesTest : public ::testing::Test {
protected:
  std::string read(const std::string &path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  /// Names in the directory (temporary files included).
  std::vector<std::string> names() {
    std::vector<std::string> list;
    for (const auto &entry : fs::directory_iterator(directory))
      list.push_back(entry.path().filename().string());
    std::sort(list.begin(), list.end());
    return list;
  }
  static mode_t modeOf(const std::string &path) {
    struct stat info;
    return stat(path.c_str(), &info) == 0 ? info.st_mode & 07777 : 0;
  }
  kvarn::testing::TemporaryDirectory temporary{"kvarn-files-test"};
  const std::string directory = temporary.path;
};

TEST_F(FilesTest, WritesANewFileWholeWithTheModeOfAPlainCreate) {
  const std::string path = directory + "/configs.json";
  const std::string bytes(100000, 'x');
  ASSERT_TRUE(writeFileAtomically(path, bytes));
  EXPECT_EQ(read(path), bytes);
  EXPECT_EQ(names(), std::vector<std::string>{"configs.json"}) << "no temporary file left";
  const mode_t mask = umask(022);
  umask(mask);
  EXPECT_EQ(modeOf(path), mode_t(0666 & ~mask));
}

TEST_F(FilesTest, ReplacesAFileAndKeepsItsMode) {
  const std::string path = directory + "/bundle.kvb";
  ASSERT_TRUE(writeFileAtomically(path, "old"));
  ASSERT_EQ(chmod(path.c_str(), 0640), 0);
  ASSERT_TRUE(writeFileAtomically(path, "new contents"));
  EXPECT_EQ(read(path), "new contents");
  EXPECT_EQ(modeOf(path), mode_t(0640));
}

TEST_F(FilesTest, AFullDiskLeavesTheOldFileAndNoTemporaryFileAndSaysWhy) {
  const std::string path = directory + "/report.json";
  ASSERT_TRUE(writeFileAtomically(path, "the previous report"));
  int calls = 0;
  const WriteFunction full = [&](int fd, const void *data, size_t size) -> long {
    if (++calls == 1) // a short write, then the disk is full
      return long(::write(fd, data, size / 2));
    errno = ENOSPC;
    return -1;
  };
  const Status written = writeFileAtomically(path, std::string(10000, 'y'), full);
  ASSERT_FALSE(written);
  EXPECT_EQ(written.error().code, ErrorCode::Io);
  EXPECT_THAT(written.error().message, ::testing::HasSubstr(path));
  EXPECT_THAT(written.error().message, ::testing::HasSubstr("No space left on device"));
  EXPECT_THAT(written.error().message, ::testing::HasSubstr("nothing was replaced"));
  EXPECT_EQ(read(path), "the previous report");
  EXPECT_EQ(names(), std::vector<std::string>{"report.json"});
  // A write that makes no progress at all is an error too, not a loop.
  const Status stuck = writeFileAtomically(path, "z", [](int, const void *, size_t) { return 0L; });
  ASSERT_FALSE(stuck);
  EXPECT_THAT(stuck.error().message, ::testing::HasSubstr("Input/output error"));
  EXPECT_EQ(read(path), "the previous report");
}

TEST_F(FilesTest, AMissingDirectoryOrADirectoryInThePlaceSaysWhy) {
  const Status noDirectory = writeFileAtomically(directory + "/absent/out.cubin", "x");
  ASSERT_FALSE(noDirectory);
  EXPECT_THAT(noDirectory.error().message, ::testing::HasSubstr("No such file or directory"));
  fs::create_directory(directory + "/taken");
  const Status directoryThere = writeFileAtomically(directory + "/taken", "x");
  ASSERT_FALSE(directoryThere);
  EXPECT_THAT(directoryThere.error().message, ::testing::HasSubstr("cannot publish"));
  EXPECT_TRUE(fs::is_directory(directory + "/taken"));
  EXPECT_EQ(names(), std::vector<std::string>{"taken"}) << "the temporary file is removed";
}

TEST_F(FilesTest, APathWithoutADirectoryIsWrittenInTheWorkingDirectory) {
  const fs::path before = fs::current_path();
  fs::current_path(directory);
  const Status written = writeFileAtomically("plain.txt", "here");
  fs::current_path(before);
  ASSERT_TRUE(written);
  EXPECT_EQ(read(directory + "/plain.txt"), "here");
  EXPECT_EQ(names(), std::vector<std::string>{"plain.txt"});
}

} // namespace
