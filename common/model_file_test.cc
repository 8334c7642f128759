#include "common/model_file.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>

#include "absl/strings/str_cat.h"

namespace ps {
namespace {

std::string TempPath(const std::string& name) {
  return absl::StrCat(::testing::TempDir(), "/", name);
}

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

TEST(ModelFileTest, NpyRoundTripsWithNumpysHeader) {
  const std::vector<float> values = {1.5f, -2.0f, 0.0f, 3.25f, 4.0f, 5.0f};
  const std::string bytes = EncodeNpy({2, 3}, values);
  EXPECT_EQ(bytes.substr(0, 6), std::string("\x93NUMPY", 6));
  EXPECT_EQ((bytes.size() - values.size() * 4) % 64, 0u);  // data aligned as numpy aligns it
  EXPECT_NE(bytes.find("'shape': (2, 3)"), std::string::npos);
  absl::StatusOr<NamedArray> back = DecodeNpy(bytes, "test");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->shape, (std::vector<uint64_t>{2, 3}));
  EXPECT_EQ(back->values, values);
  EXPECT_NE(EncodeNpy({6}, values).find("'shape': (6,)"), std::string::npos);
}

TEST(ModelFileTest, NpyOfAnotherDtypeOrOrderOrSizeIsRefused) {
  std::string f8 = EncodeNpy({2}, {1.0f, 2.0f});
  f8.replace(f8.find("<f4"), 3, "<f8");
  EXPECT_NE(DecodeNpy(f8, "x").status().message().find("float32"), std::string::npos);
  std::string fortran = EncodeNpy({2}, {1.0f, 2.0f});
  fortran.replace(fortran.find("False"), 5, "True ");
  EXPECT_NE(DecodeNpy(fortran, "x").status().message().find("Fortran"), std::string::npos);
  const std::string good = EncodeNpy({2}, {1.0f, 2.0f});
  EXPECT_NE(DecodeNpy(good.substr(0, good.size() - 1), "x").status().message().find("ends early"),
            std::string::npos);
  EXPECT_NE(DecodeNpy(good + "x", "x").status().message().find("more bytes"), std::string::npos);
  EXPECT_FALSE(DecodeNpy("not numpy at all", "x").ok());
}

TEST(ModelFileTest, NpzRoundTripsInLayoutOrder) {
  const Layout layout = *Layout::Create({{"w", {2, 2}}, {"b", {2}}});
  const std::vector<float> values = {1, 2, 3, 4, 5, 6};
  const std::string path = TempPath("model.npz");
  ASSERT_TRUE(WriteModelNpz(path, layout, values).ok());
  absl::StatusOr<std::vector<NamedArray>> arrays = ReadNpz(path);
  ASSERT_TRUE(arrays.ok()) << arrays.status();
  ASSERT_EQ(arrays->size(), 2u);
  EXPECT_EQ((*arrays)[0].name, "w");
  EXPECT_EQ((*arrays)[1].values, (std::vector<float>{5, 6}));
  // Without a layout the archive's order is the layout; with one, names pick the arrays.
  absl::StatusOr<ModelValues> read = ReadModelFile(path, nullptr);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->layout, layout);
  EXPECT_EQ(read->values, values);
  const Layout swapped = *Layout::Create({{"b", {2}}, {"w", {2, 2}}});
  absl::StatusOr<ModelValues> reordered = ReadModelFile(path, &swapped);
  ASSERT_TRUE(reordered.ok()) << reordered.status();
  EXPECT_EQ(reordered->values, (std::vector<float>{5, 6, 1, 2, 3, 4}));
}

TEST(ModelFileTest, NpzThatDoesNotMatchTheLayoutIsRefusedNamingTheTensor) {
  const Layout layout = *Layout::Create({{"w", {2, 2}}, {"b", {2}}});
  const std::string path = TempPath("other.npz");
  ASSERT_TRUE(
      WriteModelNpz(path, *Layout::Create({{"w", {4}}, {"b", {2}}}), std::vector<float>(6, 1.0f))
          .ok());
  absl::Status shape = ReadModelFile(path, &layout).status();
  EXPECT_NE(shape.message().find("'w' has shape [4]"), std::string::npos) << shape;
  const Layout more = *Layout::Create({{"w", {4}}, {"b", {2}}, {"c", {1}}});
  EXPECT_NE(ReadModelFile(path, &more).status().message().find("no array 'c'"), std::string::npos);
  WriteBytes(TempPath("junk.npz"), "PK but not really");
  EXPECT_FALSE(ReadModelFile(TempPath("junk.npz"), nullptr).ok());
  EXPECT_EQ(ReadModelFile(TempPath("missing.npz"), nullptr).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(ModelFileTest, NpyAndRawFilesAndNonFiniteValues) {
  const Layout layout = *Layout::Create({{"w", {2, 2}}});
  WriteBytes(TempPath("m.npy"), EncodeNpy({4}, {1, 2, 3, 4}));
  absl::StatusOr<ModelValues> npy = ReadModelFile(TempPath("m.npy"), &layout);
  ASSERT_TRUE(npy.ok()) << npy.status();
  EXPECT_EQ(npy->values, (std::vector<float>{1, 2, 3, 4}));
  absl::StatusOr<ModelValues> alone = ReadModelFile(TempPath("m.npy"), nullptr);
  ASSERT_TRUE(alone.ok());
  EXPECT_EQ(alone->layout.tensors()[0].ToString(), "params [4]");

  const std::vector<float> raw = {1, 2, 3, 4};
  WriteBytes(TempPath("m.bin"), std::string(reinterpret_cast<const char*>(raw.data()), 16));
  EXPECT_TRUE(ReadModelFile(TempPath("m.bin"), &layout).ok());
  EXPECT_NE(ReadModelFile(TempPath("m.bin"), nullptr).status().message().find("--model_size"),
            std::string::npos);

  WriteBytes(TempPath("nan.npy"),
             EncodeNpy({4}, {1, std::numeric_limits<float>::quiet_NaN(), 3, 4}));
  absl::Status nan = ReadModelFile(TempPath("nan.npy"), &layout).status();
  EXPECT_NE(nan.message().find("value 1 is not finite"), std::string::npos) << nan;
}

}  // namespace
}  // namespace ps
