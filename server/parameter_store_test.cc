#include "server/parameter_store.h"

#include <vector>

#include "gtest/gtest.h"

namespace ps {
namespace {

TEST(ParameterStore, ApplyPublishesANewVersionAndOldSnapshotsStayIntact) {
  std::vector<uint64_t> published;
  ParameterStore store({1.0f, 2.0f}, [&](uint64_t v) { published.push_back(v); });
  const ModelSnapshot before = store.Snapshot();
  EXPECT_EQ(before.version, 1u);
  const uint64_t v = store.Apply([](absl::Span<float> m) { m[0] += 10.0f; });
  EXPECT_EQ(v, 2u);
  EXPECT_EQ(published, (std::vector<uint64_t>{2}));
  EXPECT_EQ(*before.values, (std::vector<float>{1.0f, 2.0f}));
  EXPECT_EQ(*store.Snapshot().values, (std::vector<float>{11.0f, 2.0f}));
}

}  // namespace
}  // namespace ps
