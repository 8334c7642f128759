#include "common/json_writer.h"

#include <cmath>

#include "gtest/gtest.h"

namespace ps {
namespace {

TEST(JsonObject, WritesFieldsInOrderWithEscapes) {
  JsonObject json;
  json.Add("mode", "a\"b").Add("k", 4).Add("acc", 0.845).Add("bad", std::nan("")).Add("ok", true);
  EXPECT_EQ(json.ToString(), R"({"mode": "a\"b", "k": 4, "acc": 0.845, "bad": null, "ok": true})");
}

}  // namespace
}  // namespace ps
