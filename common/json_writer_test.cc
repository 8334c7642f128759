#include "common/json_writer.h"

#include <cmath>

#include "gtest/gtest.h"
#include "ps/v1/ps.pb.h"

namespace ps {
namespace {

TEST(JsonObject, WritesFieldsInOrderWithEscapes) {
  JsonObject json;
  json.Add("mode", "a\"b").Add("k", 4).Add("acc", 0.845).Add("bad", std::nan("")).Add("ok", true);
  EXPECT_EQ(json.ToString(), R"({"mode": "a\"b", "k": 4, "acc": 0.845, "bad": null, "ok": true})");
}

TEST(JsonObject, AddsAMessagesScalarFieldsByNameAndKeepsWhatWasAddedFirst) {
  v1::StatusResponse status;
  status.set_version(7);
  status.set_mode(v1::AGGREGATION_MODE_ASYNC);
  status.set_layout_fingerprint("00ff");
  status.mutable_wire()->set_bytes_sent(5);
  status.add_members()->set_worker_id(3);
  JsonObject json;
  json.Add("version", "by hand").AddFields(status).AddFields(status.wire());
  const std::string text = json.ToString();
  EXPECT_NE(text.find(R"("version": "by hand")"), std::string::npos) << text;
  EXPECT_EQ(text.find(R"("version": 7)"), std::string::npos) << text;
  EXPECT_NE(text.find(R"("mode": "AGGREGATION_MODE_ASYNC")"), std::string::npos) << text;
  EXPECT_NE(text.find(R"("layout_fingerprint": "00ff")"), std::string::npos) << text;
  EXPECT_NE(text.find(R"("updates_applied": 0)"), std::string::npos) << text;
  EXPECT_NE(text.find(R"("bytes_sent": 5)"), std::string::npos) << text;
  EXPECT_EQ(text.find("members"), std::string::npos) << "repeated fields are left out";
  EXPECT_EQ(text.find(R"("wire")"), std::string::npos) << "sub-messages are left out";
}

}  // namespace
}  // namespace ps
