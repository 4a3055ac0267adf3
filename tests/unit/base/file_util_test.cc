#include "core/base/file_util.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <string>
#include <vector>

#include "tests/testing/scratch_dir.h"

namespace sae {
namespace {

namespace fs = std::filesystem;

constexpr char kAbcSha256[] = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
constexpr char kEmptySha256[] = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

class FileUtilTest : public ::testing::Test {
 protected:
  testing::ScratchDir scratch_{"sae_file_util_test"};

  std::vector<std::string> Entries() const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir_)) names.push_back(e.path().filename());
    return names;
  }

  std::string dir_ = scratch_.path();
};

TEST_F(FileUtilTest, Sha256HexKnownVectors) {
  EXPECT_EQ(Sha256Hex("abc", 3), kAbcSha256);
  EXPECT_EQ(Sha256Hex("", 0), kEmptySha256);
  // FIPS 180-2 two-block message.
  const std::string two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  EXPECT_EQ(Sha256Hex(two.data(), two.size()), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

TEST_F(FileUtilTest, Sha256FileMatchesBuffer) {
  const std::string path = dir_ + "/abc.bin";
  ASSERT_TRUE(AtomicWriteFile(path, "abc").ok());
  absl::StatusOr<std::string> digest = Sha256File(path);
  ASSERT_TRUE(digest.ok()) << digest.status();
  EXPECT_EQ(*digest, kAbcSha256);

  const std::string empty = dir_ + "/empty.bin";
  ASSERT_TRUE(AtomicWriteFile(empty, "").ok());
  digest = Sha256File(empty);
  ASSERT_TRUE(digest.ok()) << digest.status();
  EXPECT_EQ(*digest, kEmptySha256);

  // Larger than the streaming buffer, so several reads are hashed.
  std::string big(3 * (1 << 20) + 12345, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>((i * 131 + i / 7) & 0xff);
  const std::string big_path = dir_ + "/big.bin";
  ASSERT_TRUE(AtomicWriteFile(big_path, big).ok());
  digest = Sha256File(big_path);
  ASSERT_TRUE(digest.ok()) << digest.status();
  EXPECT_EQ(*digest, Sha256Hex(big.data(), big.size()));
  EXPECT_NE(*digest, Sha256Hex(big.data(), big.size() - 1));
}

TEST_F(FileUtilTest, Sha256FileMissingIsNotFound) {
  const std::string path = dir_ + "/missing.bin";
  absl::StatusOr<std::string> digest = Sha256File(path);
  ASSERT_FALSE(digest.ok());
  EXPECT_TRUE(absl::IsNotFound(digest.status())) << digest.status();
  EXPECT_NE(digest.status().message().find(path), absl::string_view::npos);
}

TEST_F(FileUtilTest, AtomicWriteFileReplacesContentAndLeavesNoTemporaries) {
  const std::string path = dir_ + "/state.json";
  ASSERT_TRUE(AtomicWriteFile(path, "a much longer first version of the file").ok());
  absl::StatusOr<std::string> text = ReadFileToString(path);
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(*text, "a much longer first version of the file");

  ASSERT_TRUE(AtomicWriteFile(path, "short").ok());
  text = ReadFileToString(path);
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(*text, "short");  // replaced, not overwritten in place

  std::string binary("a\0b\xff", 4);
  ASSERT_TRUE(AtomicWriteFile(path, binary).ok());
  text = ReadFileToString(path);
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(*text, binary);

  EXPECT_EQ(Entries(), std::vector<std::string>{"state.json"});
}

TEST_F(FileUtilTest, AtomicWriteFileIntoMissingDirectoryFails) {
  const std::string path = dir_ + "/no/such/dir/file";
  EXPECT_FALSE(AtomicWriteFile(path, "x").ok());
  EXPECT_FALSE(PathExists(path));
  EXPECT_TRUE(Entries().empty());
}

TEST_F(FileUtilTest, ReadFileToStringMissingIsNotFound) {
  const std::string path = dir_ + "/nothing.txt";
  absl::StatusOr<std::string> text = ReadFileToString(path);
  ASSERT_FALSE(text.ok());
  EXPECT_TRUE(absl::IsNotFound(text.status())) << text.status();
  EXPECT_NE(text.status().message().find(path), absl::string_view::npos);
}

TEST_F(FileUtilTest, ReadFileToStringOfADirectoryIsAnError) {
  absl::StatusOr<std::string> text = ReadFileToString(dir_);
  ASSERT_FALSE(text.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(text.status())) << text.status();
  EXPECT_NE(text.status().message().find("is a directory"), absl::string_view::npos) << text.status();
  EXPECT_FALSE(CheckRegularFile(dir_).ok());
  ASSERT_TRUE(AtomicWriteFile(dir_ + "/f", "abc").ok());
  EXPECT_TRUE(CheckRegularFile(dir_ + "/f").ok());
  EXPECT_EQ(*ReadFileToString(dir_ + "/f"), "abc");
}

TEST_F(FileUtilTest, DurableRenameMovesTheFile) {
  const std::string from = dir_ + "/a.tmp";
  const std::string to = dir_ + "/a";
  ASSERT_TRUE(AtomicWriteFile(from, "payload").ok());
  ASSERT_TRUE(DurableRename(from, to).ok());
  EXPECT_FALSE(PathExists(from));
  absl::StatusOr<std::string> text = ReadFileToString(to);
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(*text, "payload");
  EXPECT_FALSE(DurableRename(dir_ + "/missing", to).ok());
}

TEST_F(FileUtilTest, MakeDirsAndRemoveAll) {
  const std::string nested = dir_ + "/x/y/z";
  ASSERT_TRUE(MakeDirs(nested).ok());
  EXPECT_TRUE(fs::is_directory(nested));
  EXPECT_TRUE(MakeDirs(nested).ok());  // already there
  ASSERT_TRUE(AtomicWriteFile(nested + "/f", "1").ok());
  EXPECT_TRUE(PathExists(nested + "/f"));

  ASSERT_TRUE(RemoveAll(dir_ + "/x").ok());
  EXPECT_FALSE(PathExists(dir_ + "/x"));
  EXPECT_TRUE(RemoveAll(dir_ + "/x").ok());  // missing is fine
}

TEST(JoinPath, OneSlashBetweenAndEmptyDirIsTheFileAlone) {
  EXPECT_EQ(JoinPath("a/b", "c.json"), "a/b/c.json");
  EXPECT_EQ(JoinPath("a/b/", "c.json"), "a/b/c.json");
  EXPECT_EQ(JoinPath("/", "c.json"), "/c.json");
  EXPECT_EQ(JoinPath("", "c.json"), "c.json");
  EXPECT_EQ(JoinPath("a", "sub/c.json"), "a/sub/c.json");
}

}  // namespace
}  // namespace sae
