#include "server/checkpoint.h"

#include <zlib.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"

namespace ps {
namespace {

namespace fs = std::filesystem;

using ::google::protobuf::util::MessageDifferencer;

// The layout of checkpoint.h written out independently of checkpoint.cc, to check the real file
// against it and to build files the writer refuses to produce (NaN, bad header, other format).
std::string U32(uint32_t v) {
  return {static_cast<char>(v), static_cast<char>(v >> 8), static_cast<char>(v >> 16),
          static_cast<char>(v >> 24)};
}

std::string FloatBytes(const std::vector<float>& values) {
  std::string out(values.size() * sizeof(float), '\0');
  // memcpy from an empty vector's null data() is undefined, even for 0 bytes.
  if (!values.empty()) std::memcpy(out.data(), values.data(), out.size());  // little-endian
  return out;
}

std::string Crc(const std::string& bytes) {
  return U32(static_cast<uint32_t>(
      crc32(crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(bytes.data()), bytes.size())));
}

std::string Encode(const std::string& header_bytes, const std::vector<float>& model,
                   const std::vector<float>& broadcast, uint32_t format_version = 1) {
  std::string body = std::string("PSCKPT\r\n", 8) + U32(format_version) +
                     U32(static_cast<uint32_t>(header_bytes.size())) + header_bytes +
                     FloatBytes(model) + FloatBytes(broadcast);
  return body + Crc(body);
}

std::string Encode(const Checkpoint& c) {
  return Encode(c.header.SerializeAsString(), c.model, c.broadcast);
}

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

std::set<std::string> Entries(const std::string& dir) {
  std::set<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) names.insert(entry.path().filename());
  return names;
}

// A shard [begin, begin + n) with a full header, config included, and distinctive values.
Checkpoint Make(uint64_t version, size_t n, bool broadcast) {
  Checkpoint c;
  v1::CheckpointHeader& h = c.header;
  h.set_version(version);
  h.set_shard_index(1);
  h.set_shard_count(3);
  h.set_model_size(3 * n + 2);
  h.set_shard_begin(n);
  h.set_shard_end(2 * n);
  h.set_has_broadcast(broadcast);
  h.set_created_unix_ms(1700000000123);
  h.set_rounds_completed(version * 10);
  h.set_updates_applied(version * 40);
  h.set_epoch(2);
  v1::TrainingConfig& config = *h.mutable_config();
  config.set_mode(v1::AGGREGATION_MODE_ASYNC);
  config.set_model("mlp");
  config.set_input_dim(784);
  config.set_num_classes(10);
  config.set_hidden_units(64);
  config.set_learning_rate(0.05f);
  config.set_l2(1e-4f);
  config.set_data_seed(0xdeadbeefcafeULL);
  config.set_num_workers(4);
  config.add_allowed_encodings(v1::ENCODING_FP32);
  config.add_allowed_encodings(v1::ENCODING_QSGD);
  config.mutable_update_encoding()->set_encoding(v1::ENCODING_QSGD);
  config.mutable_update_encoding()->set_bits(4);
  config.mutable_update_encoding()->set_bucket_size(512);
  config.set_error_feedback(true);
  const float specials[] = {0.0f,
                            -0.0f,
                            std::numeric_limits<float>::denorm_min(),
                            -std::numeric_limits<float>::max(),
                            std::numeric_limits<float>::min(),
                            1.0f / 3.0f};
  for (size_t i = 0; i < n; ++i) {
    c.model.push_back(i < std::size(specials) ? specials[i]
                                              : std::sin(static_cast<float>(i)) * version);
    if (broadcast) c.broadcast.push_back(std::cos(static_cast<float>(i)) - 0.5f);
  }
  return c;
}

bool BitEqual(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

void ExpectSame(const Checkpoint& expected, const Checkpoint& actual) {
  EXPECT_TRUE(MessageDifferencer::Equals(expected.header, actual.header))
      << "expected " << expected.header.ShortDebugString() << "\nactual   "
      << actual.header.ShortDebugString();
  EXPECT_TRUE(BitEqual(expected.model, actual.model));
  EXPECT_TRUE(BitEqual(expected.broadcast, actual.broadcast));
}

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Unique per test: ctest runs the tests of this file as parallel processes.
    const auto* test = ::testing::UnitTest::GetInstance()->current_test_info();
    root_ = ::testing::TempDir() + "/" + test->test_suite_name() + "." + test->name();
    fs::remove_all(root_);
    fs::create_directories(root_);
    dir_ = root_ + "/ckpts";
  }
  void TearDown() override { fs::remove_all(root_); }

  // Writes `c` into dir_ and returns the file's path.
  std::string Write(const Checkpoint& c, int keep = 2) {
    const absl::Status status = WriteCheckpoint(dir_, c, keep);
    EXPECT_TRUE(status.ok()) << status;
    return CheckpointPath(dir_, c.header.version());
  }

  std::string root_;
  std::string dir_;
};

TEST_F(CheckpointTest, PathIsZeroPaddedVersion) {
  EXPECT_EQ(CheckpointPath("/a/b", 42), "/a/b/ckpt-00000000000000000042.ckpt");
  EXPECT_EQ(CheckpointPath("/a/b/", 18446744073709551615ULL),
            "/a/b/ckpt-18446744073709551615.ckpt");
}

TEST_F(CheckpointTest, RoundTripWithoutBroadcast) {
  const Checkpoint c = Make(7, 1000, /*broadcast=*/false);
  const std::string path = Write(c);
  absl::StatusOr<Checkpoint> read = ReadCheckpoint(path);
  ASSERT_TRUE(read.ok()) << read.status();
  ExpectSame(c, *read);
  EXPECT_TRUE(read->broadcast.empty());
  EXPECT_EQ(read->header.config().model(), "mlp");
  EXPECT_EQ(read->header.config().update_encoding().bits(), 4u);
  EXPECT_TRUE(std::signbit(read->model[1]));  // -0.0 kept
}

TEST_F(CheckpointTest, RoundTripWithBroadcast) {
  const Checkpoint c = Make(8, 1000, /*broadcast=*/true);
  absl::StatusOr<Checkpoint> read = ReadCheckpoint(Write(c));
  ASSERT_TRUE(read.ok()) << read.status();
  ExpectSame(c, *read);
  EXPECT_EQ(read->broadcast.size(), 1000u);
}

TEST_F(CheckpointTest, RoundTripWithOuterOptimizerState) {
  Checkpoint c = Make(9, 500, /*broadcast=*/true);
  c.header.set_outer_optimizer("fedadam");
  c.header.set_outer_steps(41);
  c.header.set_outer_buffers(2);
  c.outer = {std::vector<float>(500, 0.25f), std::vector<float>(500, -1e-30f)};
  absl::StatusOr<Checkpoint> read = ReadCheckpoint(Write(c));
  ASSERT_TRUE(read.ok()) << read.status();
  ExpectSame(c, *read);
  EXPECT_EQ(read->header.outer_steps(), 41u);
  EXPECT_EQ(read->outer, c.outer);
  c.outer.pop_back();  // the header says 2
  EXPECT_EQ(WriteCheckpoint(dir_, c).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(CheckpointTest, RoundTripEmptyShard) {
  const Checkpoint c = Make(1, 0, /*broadcast=*/true);
  absl::StatusOr<Checkpoint> read = ReadCheckpoint(Write(c));
  ASSERT_TRUE(read.ok()) << read.status();
  ExpectSame(c, *read);
}

TEST_F(CheckpointTest, FileFollowsTheDocumentedLayout) {
  for (bool broadcast : {false, true}) {
    const Checkpoint c = Make(3, 50, broadcast);
    EXPECT_EQ(ReadBytes(Write(c)), Encode(c)) << "broadcast=" << broadcast;
  }
}

TEST_F(CheckpointTest, SameVersionIsReplaced) {
  Write(Make(4, 10, false));
  const Checkpoint again = Make(4, 20, true);
  absl::StatusOr<Checkpoint> read = ReadCheckpoint(Write(again));
  ASSERT_TRUE(read.ok()) << read.status();
  ExpectSame(again, *read);
}

TEST_F(CheckpointTest, KeepsTheNewestTwo) {
  for (uint64_t v = 1; v <= 5; ++v) Write(Make(v, 100, v % 2 == 0));
  EXPECT_EQ(ListCheckpointVersions(dir_), (std::vector<uint64_t>{5, 4}));
  EXPECT_EQ(Entries(dir_), (std::set<std::string>{"ckpt-00000000000000000004.ckpt",
                                                  "ckpt-00000000000000000005.ckpt"}));
}

TEST_F(CheckpointTest, KeepIsByVersionAndSparesOtherFiles) {
  Write(Make(9, 10, false), 3);
  Write(Make(2, 10, false), 3);
  WriteBytes(dir_ + "/notes.txt", "mine");
  Write(Make(5, 10, false), 3);
  Write(Make(3, 10, false), 3);  // older than the rest: 2 goes, 3 itself stays
  EXPECT_EQ(ListCheckpointVersions(dir_), (std::vector<uint64_t>{9, 5, 3}));
  Write(Make(10, 10, false), 1);
  EXPECT_EQ(ListCheckpointVersions(dir_), (std::vector<uint64_t>{10}));
  EXPECT_TRUE(fs::exists(dir_ + "/notes.txt"));
}

TEST_F(CheckpointTest, KeepBelowOneIsRefused) {
  EXPECT_EQ(WriteCheckpoint(dir_, Make(1, 10, false), 0).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(fs::exists(dir_));
}

TEST_F(CheckpointTest, LeftoverTmpIsIgnoredThenRemoved) {
  Write(Make(1, 10, false));
  WriteBytes(dir_ + "/.ckpt-9.tmp", "half a checkpoint");
  WriteBytes(dir_ + "/.ckpt-3.tmp", Encode(Make(3, 10, false)));  // complete but never renamed

  EXPECT_EQ(ListCheckpointVersions(dir_), (std::vector<uint64_t>{1}));
  absl::StatusOr<std::optional<LoadedCheckpoint>> loaded = LoadNewestCheckpoint(dir_);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ASSERT_TRUE(loaded->has_value());
  EXPECT_EQ((*loaded)->checkpoint.header.version(), 1u);
  EXPECT_TRUE((*loaded)->skipped.empty());

  Write(Make(2, 10, false));
  EXPECT_EQ(Entries(dir_), (std::set<std::string>{"ckpt-00000000000000000001.ckpt",
                                                  "ckpt-00000000000000000002.ckpt"}));
}

TEST_F(CheckpointTest, MissingFileIsNotFound) {
  EXPECT_EQ(ReadCheckpoint(CheckpointPath(dir_, 1)).status().code(), absl::StatusCode::kNotFound);
}

// Expects DATA_LOSS naming the file with `fragment` in the message.
void ExpectDataLoss(const std::string& path, const std::string& fragment) {
  absl::StatusOr<Checkpoint> read = ReadCheckpoint(path);
  ASSERT_EQ(read.status().code(), absl::StatusCode::kDataLoss) << read.status();
  EXPECT_TRUE(absl::StrContains(read.status().message(), path)) << read.status();
  EXPECT_TRUE(absl::StrContains(read.status().message(), fragment)) << read.status();
}

TEST_F(CheckpointTest, FlippedBytesAtKnownPlacesAreDetected) {
  const Checkpoint c = Make(5, 1000, true);
  const std::string path = Write(c);
  const std::string good = ReadBytes(path);
  const size_t header_size = c.header.ByteSizeLong();
  struct Case {
    size_t offset;
    std::string fragment;
  };
  const Case cases[] = {
      {0, "bad magic"},
      {7, "bad magic"},
      {8, "unsupported format version"},
      {16 + header_size / 2, "checksum mismatch"},
      {16 + header_size + 2000, "checksum mismatch"},  // middle of the model
      {good.size() - 4 - 1, "checksum mismatch"},      // last byte of the broadcast model
      {good.size() - 1, "checksum mismatch"},          // last CRC byte
  };
  for (const Case& test : cases) {
    SCOPED_TRACE(absl::StrCat("offset ", test.offset));
    std::string bad = good;
    bad[test.offset] ^= 0x01;
    WriteBytes(path, bad);
    ExpectDataLoss(path, test.fragment);
  }
  std::string bad = good;
  bad[12] ^= 0x40;  // the header length
  WriteBytes(path, bad);
  ExpectDataLoss(path, "");
}

TEST_F(CheckpointTest, EveryFlippedByteOfASmallFileIsDetected) {
  const std::string path = Write(Make(6, 16, true));
  const std::string good = ReadBytes(path);
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int> nonzero(1, 255);
  for (size_t offset = 0; offset < good.size(); ++offset) {
    for (int mask : {0x01, 0x80, nonzero(rng)}) {
      std::string bad = good;
      bad[offset] ^= static_cast<char>(mask);
      WriteBytes(path, bad);
      EXPECT_EQ(ReadCheckpoint(path).status().code(), absl::StatusCode::kDataLoss)
          << "offset " << offset << " of " << good.size() << ", mask " << mask;
    }
  }
}

TEST_F(CheckpointTest, EveryTruncationIsDetected) {
  const std::string path = Write(Make(6, 16, true));
  const std::string good = ReadBytes(path);
  for (size_t size = 0; size < good.size(); ++size) {
    WriteBytes(path, good.substr(0, size));
    EXPECT_EQ(ReadCheckpoint(path).status().code(), absl::StatusCode::kDataLoss)
        << "size " << size << " of " << good.size();
  }
  WriteBytes(path, good.substr(0, 10));
  ExpectDataLoss(path, "truncated");
  WriteBytes(path, good + std::string(1, '\0'));
  ExpectDataLoss(path, "checksum mismatch");
}

TEST_F(CheckpointTest, HostileLengthsAreRejectedWithoutAllocating) {
  fs::create_directories(dir_);
  const std::string path = dir_ + "/hostile";
  // A header length far beyond the file.
  std::string bytes = std::string("PSCKPT\r\n", 8) + U32(1) + U32(0xffffffffu);
  WriteBytes(path, bytes + Crc(bytes));
  ExpectDataLoss(path, "truncated: header length 4294967295 exceeds file size 20");

  // A valid CRC over a header claiming 2^63 values, with and without broadcast.
  for (bool broadcast : {false, true}) {
    v1::CheckpointHeader header;
    header.set_shard_begin(1);
    header.set_shard_end(uint64_t{1} << 63);
    header.set_has_broadcast(broadcast);
    WriteBytes(path, Encode(header.SerializeAsString(), {1.0f}, {}));
    ExpectDataLoss(path, "size mismatch: file has");
  }

  v1::CheckpointHeader backwards;
  backwards.set_shard_begin(10);
  backwards.set_shard_end(9);
  WriteBytes(path, Encode(backwards.SerializeAsString(), {}, {}));
  ExpectDataLoss(path, "before shard_begin");
}

TEST_F(CheckpointTest, ValidCrcButBadContentIsDetected) {
  fs::create_directories(dir_);
  const std::string path = dir_ + "/file";
  const Checkpoint c = Make(2, 4, false);

  WriteBytes(path, Encode(c.header.SerializeAsString(), c.model, {}, /*format_version=*/2));
  ExpectDataLoss(path, "unsupported format version 2");

  WriteBytes(path, Encode(std::string("\xff\xff\xff", 3), c.model, {}));
  ExpectDataLoss(path, "header does not parse");

  WriteBytes(path, Encode(c.header.SerializeAsString(), {1, 2, 3}, {}));
  ExpectDataLoss(path, "size mismatch: file has");

  WriteBytes(path, Encode(c.header.SerializeAsString(), c.model, c.model));  // no has_broadcast
  ExpectDataLoss(path, "size mismatch: file has");

  WriteBytes(path, "not a checkpoint at all, just some text");
  ExpectDataLoss(path, "bad magic");

  fs::create_directories(dir_ + "/a_directory");
  ExpectDataLoss(dir_ + "/a_directory", "not a regular file");
}

TEST_F(CheckpointTest, NonFiniteValuesAreRejected) {
  fs::create_directories(dir_);
  const std::string path = dir_ + "/file";
  Checkpoint c = Make(2, 4, true);
  std::vector<float> model = c.model;
  model[2] = std::numeric_limits<float>::quiet_NaN();
  WriteBytes(path, Encode(c.header.SerializeAsString(), model, c.broadcast));
  ExpectDataLoss(path, "model value 2 is not finite");

  std::vector<float> broadcast = c.broadcast;
  broadcast[3] = -std::numeric_limits<float>::infinity();
  WriteBytes(path, Encode(c.header.SerializeAsString(), c.model, broadcast));
  ExpectDataLoss(path, "broadcast value 3 is not finite");

  // The writer refuses them too: such a file would only hide an older good one.
  c.model[1] = std::numeric_limits<float>::infinity();
  EXPECT_EQ(WriteCheckpoint(dir_, c).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(ListCheckpointVersions(dir_).empty());
}

TEST_F(CheckpointTest, SizeMismatchIsRefusedBeforeTouchingTheDisk) {
  Checkpoint short_model = Make(1, 10, false);
  short_model.model.pop_back();
  Checkpoint unexpected_broadcast = Make(1, 10, false);
  unexpected_broadcast.broadcast.assign(10, 1.0f);
  Checkpoint short_broadcast = Make(1, 10, true);
  short_broadcast.broadcast.resize(9);
  Checkpoint backwards = Make(1, 0, false);
  backwards.header.set_shard_begin(5);
  backwards.header.set_shard_end(4);
  for (const Checkpoint* c : {&short_model, &unexpected_broadcast, &short_broadcast, &backwards}) {
    const absl::Status status = WriteCheckpoint(dir_, *c);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  }
  EXPECT_FALSE(fs::exists(dir_));
}

TEST_F(CheckpointTest, UnwritableDirectoryIsAnError) {
  const std::string file = root_ + "/regular_file";
  WriteBytes(file, "x");
  for (const std::string& dir : {file, file + "/sub"}) {
    const absl::Status status = WriteCheckpoint(dir, Make(1, 10, false));
    EXPECT_EQ(status.code(), absl::StatusCode::kInternal) << status;
    EXPECT_TRUE(absl::StrContains(status.message(), dir)) << status;
  }
  EXPECT_EQ(ReadBytes(file), "x");
}

TEST_F(CheckpointTest, FailedRenameRemovesTmpAndKeepsOlderCheckpoints) {
  Write(Make(1, 10, false));
  Write(Make(2, 10, false));
  // A non-empty directory under the final name makes rename(2) fail.
  fs::create_directories(CheckpointPath(dir_, 3) + "/inside");
  const absl::Status status = WriteCheckpoint(dir_, Make(3, 10, false));
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), "cannot rename")) << status;
  EXPECT_FALSE(fs::exists(dir_ + "/.ckpt-3.tmp"));
  EXPECT_TRUE(ReadCheckpoint(CheckpointPath(dir_, 1)).ok());
  EXPECT_TRUE(ReadCheckpoint(CheckpointPath(dir_, 2)).ok());
}

TEST_F(CheckpointTest, LoadFallsBackToAnOlderFile) {
  Write(Make(1, 100, false), 3);
  const Checkpoint second = Make(2, 100, true);
  Write(second, 3);
  const std::string newest = Write(Make(3, 100, true), 3);
  std::string bytes = ReadBytes(newest);
  bytes[bytes.size() / 2] ^= 0x10;
  WriteBytes(newest, bytes);

  absl::StatusOr<std::optional<LoadedCheckpoint>> loaded = LoadNewestCheckpoint(dir_);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ASSERT_TRUE(loaded->has_value());
  EXPECT_EQ((*loaded)->path, CheckpointPath(dir_, 2));
  ExpectSame(second, (*loaded)->checkpoint);
  ASSERT_EQ((*loaded)->skipped.size(), 1u);
  EXPECT_TRUE(absl::StrContains((*loaded)->skipped[0], newest));
  EXPECT_TRUE(absl::StrContains((*loaded)->skipped[0], "checksum mismatch"));
}

TEST_F(CheckpointTest, LoadTakesTheNewest) {
  Write(Make(1, 10, false));
  const Checkpoint newest = Make(12, 10, true);
  Write(newest);
  absl::StatusOr<std::optional<LoadedCheckpoint>> loaded = LoadNewestCheckpoint(dir_);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ASSERT_TRUE(loaded->has_value());
  EXPECT_EQ((*loaded)->path, CheckpointPath(dir_, 12));
  ExpectSame(newest, (*loaded)->checkpoint);
  EXPECT_TRUE((*loaded)->skipped.empty());
}

TEST_F(CheckpointTest, AllCorruptIsDataLoss) {
  const std::string first = Write(Make(1, 10, false));
  const std::string second = Write(Make(2, 10, false));
  WriteBytes(first, "garbage");
  std::string bytes = ReadBytes(second);
  bytes.pop_back();
  WriteBytes(second, bytes);

  absl::StatusOr<std::optional<LoadedCheckpoint>> loaded = LoadNewestCheckpoint(dir_);
  ASSERT_EQ(loaded.status().code(), absl::StatusCode::kDataLoss) << loaded.status();
  EXPECT_TRUE(absl::StrContains(loaded.status().message(), first)) << loaded.status();
  EXPECT_TRUE(absl::StrContains(loaded.status().message(), second)) << loaded.status();
}

TEST_F(CheckpointTest, NoCheckpointIsNullopt) {
  absl::StatusOr<std::optional<LoadedCheckpoint>> missing = LoadNewestCheckpoint(dir_);
  ASSERT_TRUE(missing.ok()) << missing.status();
  EXPECT_FALSE(missing->has_value());
  EXPECT_TRUE(ListCheckpointVersions(dir_).empty());

  fs::create_directories(dir_);
  WriteBytes(dir_ + "/.ckpt-4.tmp", "partial");
  WriteBytes(dir_ + "/ckpt-4.ckpt", "not a strict name");
  absl::StatusOr<std::optional<LoadedCheckpoint>> empty = LoadNewestCheckpoint(dir_);
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_FALSE(empty->has_value());
}

TEST_F(CheckpointTest, LoadFromARegularFileIsAnError) {
  WriteBytes(root_ + "/file", "x");
  EXPECT_FALSE(LoadNewestCheckpoint(root_ + "/file").ok());
}

TEST_F(CheckpointTest, HeaderVersionMustMatchTheFileName) {
  const std::string renamed = CheckpointPath(dir_, 5);
  fs::rename(Write(Make(3, 10, false)), renamed);
  absl::StatusOr<std::optional<LoadedCheckpoint>> alone = LoadNewestCheckpoint(dir_);
  ASSERT_EQ(alone.status().code(), absl::StatusCode::kDataLoss) << alone.status();
  EXPECT_TRUE(absl::StrContains(alone.status().message(), "does not match the file name"))
      << alone.status();

  const Checkpoint older = Make(1, 10, false);
  Write(older, 5);
  absl::StatusOr<std::optional<LoadedCheckpoint>> loaded = LoadNewestCheckpoint(dir_);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ASSERT_TRUE(loaded->has_value());
  ExpectSame(older, (*loaded)->checkpoint);
  ASSERT_EQ((*loaded)->skipped.size(), 1u);
  EXPECT_TRUE(absl::StrContains((*loaded)->skipped[0], renamed));
  EXPECT_TRUE(absl::StrContains((*loaded)->skipped[0], "header version 3"));
}

TEST_F(CheckpointTest, ListParsesNamesStrictly) {
  fs::create_directories(dir_);
  for (const char* name : {
           "ckpt-00000000000000000007.ckpt",
           "ckpt-18446744073709551615.ckpt",  // the largest version
           "ckpt-00000000000000000012.ckpt",
           "ckpt-18446744073709551616.ckpt",   // above 2^64 - 1
           "ckpt-0000000000000000007.ckpt",    // 19 digits
           "ckpt-000000000000000000007.ckpt",  // 21 digits
           "ckpt-0000000000000000000a.ckpt",
           "ckpt-+0000000000000000007.ckpt",
           "ckpt-00000000000000000008.ckpt.bak",
           "xckpt-00000000000000000009.ckpt",
           "ckpt-00000000000000000010.ckp",
           ".ckpt-11.tmp",
       }) {
    WriteBytes(dir_ + "/" + name, "");
  }
  EXPECT_EQ(ListCheckpointVersions(dir_), (std::vector<uint64_t>{18446744073709551615ULL, 12, 7}));
}

}  // namespace
}  // namespace ps
