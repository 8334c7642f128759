#include "worker/data/dataset.h"

#include <zlib.h>

#include <cstdio>
#include <fstream>
#include <set>
#include <string>

#include "gtest/gtest.h"

namespace ps {
namespace {

// Unique per test: ctest runs the tests of this file as parallel processes.
std::string TempPath(const std::string& name) {
  const auto* test = ::testing::UnitTest::GetInstance()->current_test_info();
  return ::testing::TempDir() + "/" + test->test_suite_name() + "." + test->name() + "." + name;
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

void WriteGzip(const std::string& path, const std::string& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size()));
  gzclose(f);
}

std::string BigEndian(uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
          static_cast<char>(v)};
}

// Two 2x2 images and their labels.
std::string Images() {
  return BigEndian(0x803) + BigEndian(2) + BigEndian(2) + BigEndian(2) +
         std::string("\x00\xff\x33\x66\xff\x00\x00\x00", 8);
}
std::string Labels() { return BigEndian(0x801) + BigEndian(2) + std::string("\x07\x02", 2); }

TEST(LoadIdx, ReadsGzippedFilesAndScalesPixels) {
  WriteGzip(TempPath("img.gz"), Images());
  WriteGzip(TempPath("lbl.gz"), Labels());
  auto data = LoadIdx(TempPath("img.gz"), TempPath("lbl.gz"));
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(data->size(), 2);
  EXPECT_EQ(data->dim(), 4);
  EXPECT_FLOAT_EQ(data->features(0, 1), 1.0f);
  EXPECT_FLOAT_EQ(data->features(0, 2), 0x33 / 255.0f);
  EXPECT_EQ(data->labels, (std::vector<int32_t>{7, 2}));
}

TEST(LoadIdx, ReadsUncompressedFilesAndHonoursTheLimit) {
  WriteFile(TempPath("img.raw"), Images());
  WriteFile(TempPath("lbl.raw"), Labels());
  auto data = LoadIdx(TempPath("img.raw"), TempPath("lbl.raw"), /*limit=*/1);
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(data->size(), 1);
}

TEST(LoadIdx, AMissingFileIsNotFoundAndNamesThePath) {
  auto data = LoadIdx(TempPath("nope"), TempPath("lbl.raw"));
  EXPECT_EQ(data.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(data.status().message().find(TempPath("nope")), std::string::npos);
}

TEST(LoadIdx, ABadMagicNumberNamesTheFileAndTheByte) {
  WriteFile(TempPath("bad.raw"), BigEndian(0x1234) + Images().substr(4));
  WriteFile(TempPath("lbl.raw"), Labels());
  auto data = LoadIdx(TempPath("bad.raw"), TempPath("lbl.raw"));
  ASSERT_EQ(data.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(data.status().message().find("bad.raw: bad magic number 0x00001234 at byte 0"),
            std::string::npos)
      << data.status();
}

TEST(LoadIdx, ATruncatedFileSaysWhereItEnds) {
  WriteFile(TempPath("short.raw"), Images().substr(0, 20));
  WriteFile(TempPath("lbl.raw"), Labels());
  auto data = LoadIdx(TempPath("short.raw"), TempPath("lbl.raw"));
  ASSERT_EQ(data.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(data.status().message().find("truncated"), std::string::npos) << data.status();
  EXPECT_NE(data.status().message().find("ends at 20"), std::string::npos) << data.status();
}

TEST(LoadIdx, MismatchedCountsAreRefused) {
  WriteFile(TempPath("img.raw"), Images());
  WriteFile(TempPath("lbl3.raw"), BigEndian(0x801) + BigEndian(3) + std::string("\x01\x02\x03"));
  EXPECT_EQ(LoadIdx(TempPath("img.raw"), TempPath("lbl3.raw")).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(LoadLibsvm, ReadsSparseRowsAndMapsMinusOneToZero) {
  WriteFile(TempPath("a.svm"), "+1 1:0.5 3:2\n# comment\n-1 2:1\n");
  auto data = LoadLibsvm(TempPath("a.svm"), 3, 2);
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(data->labels, (std::vector<int32_t>{1, 0}));
  EXPECT_FLOAT_EQ(data->features(0, 0), 0.5f);
  EXPECT_FLOAT_EQ(data->features(0, 1), 0.0f);
  EXPECT_FLOAT_EQ(data->features(0, 2), 2.0f);
  EXPECT_FLOAT_EQ(data->features(1, 1), 1.0f);
}

TEST(LoadLibsvm, ABadTokenNamesFileLineAndToken) {
  WriteFile(TempPath("b.svm"), "1 1:0.5\n1 2:x\n");
  auto data = LoadLibsvm(TempPath("b.svm"), 3, 2);
  ASSERT_EQ(data.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(data.status().message().find("b.svm:2: token '2:x'"), std::string::npos)
      << data.status();
}

TEST(LoadLibsvm, AnIndexOutOfRangeIsRefused) {
  WriteFile(TempPath("c.svm"), "1 4:1\n");
  EXPECT_EQ(LoadLibsvm(TempPath("c.svm"), 3, 2).status().code(),
            absl::StatusCode::kInvalidArgument);
}

Dataset Numbered(int n, int classes) {
  Dataset d;
  d.num_classes = classes;
  d.features.resize(n, 1);
  for (int i = 0; i < n; ++i) {
    d.features(i, 0) = static_cast<float>(i);
    d.labels.push_back(i % classes);
  }
  return d;
}

TEST(PartitionIndices, GivesDisjointBlocksThatCoverTheData) {
  const Dataset d = Numbered(103, 10);
  std::set<int64_t> seen;
  for (int rank = 0; rank < 4; ++rank) {
    const auto part = PartitionIndices(d, 4, rank, PartitionScheme::kIid, 9);
    EXPECT_GE(part.size(), 25u);
    EXPECT_LE(part.size(), 26u);
    for (int64_t i : part) EXPECT_TRUE(seen.insert(i).second) << "index " << i << " twice";
  }
  EXPECT_EQ(seen.size(), 103u);
}

TEST(PartitionIndices, LabelSortedGivesEachWorkerFewClasses) {
  const Dataset d = Numbered(100, 10);
  const auto part = PartitionIndices(d, 5, 0, PartitionScheme::kLabelSorted, 9);
  std::set<int32_t> classes;
  for (int64_t i : part) classes.insert(d.labels[i]);
  EXPECT_EQ(classes, (std::set<int32_t>{0, 1}));
}

TEST(BatchSampler, VisitsEveryExampleOncePerEpoch) {
  const Dataset d = Numbered(12, 3);
  BatchSampler sampler(&d, 4, 1);
  std::multiset<float> seen;
  RowMatrix x;
  std::vector<int32_t> y;
  for (int b = 0; b < 3; ++b) {
    sampler.Next(&x, &y);
    for (int i = 0; i < 4; ++i) seen.insert(x(i, 0));
  }
  EXPECT_EQ(seen.size(), 12u);
  EXPECT_EQ(std::set<float>(seen.begin(), seen.end()).size(), 12u);
}

}  // namespace
}  // namespace ps
