#include "common/json_writer.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace ps {
namespace {

std::string Quote(absl::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += absl::StrFormat("\\u%04x", c);
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

}  // namespace

JsonObject& JsonObject::Add(absl::string_view key, absl::string_view value) {
  fields_.emplace_back(std::string(key), Quote(value));
  return *this;
}

JsonObject& JsonObject::Add(absl::string_view key, double value) {
  // JSON has no NaN or Inf.
  fields_.emplace_back(std::string(key),
                       std::isfinite(value) ? absl::StrFormat("%.6g", value) : "null");
  return *this;
}

JsonObject& JsonObject::Add(absl::string_view key, int64_t value) {
  fields_.emplace_back(std::string(key), absl::StrCat(value));
  return *this;
}

JsonObject& JsonObject::Add(absl::string_view key, uint64_t value) {
  fields_.emplace_back(std::string(key), absl::StrCat(value));
  return *this;
}

JsonObject& JsonObject::Add(absl::string_view key, bool value) {
  fields_.emplace_back(std::string(key), value ? "true" : "false");
  return *this;
}

std::string JsonObject::ToString() const {
  std::string out = "{";
  for (size_t i = 0; i < fields_.size(); ++i) {
    absl::StrAppend(&out, i ? ", " : "", Quote(fields_[i].first), ": ", fields_[i].second);
  }
  return out + "}";
}

absl::Status JsonObject::WriteToFile(const std::string& path) const {
  std::ofstream file(path, std::ios::trunc);
  file << ToString() << "\n";
  file.close();
  if (!file) {
    return absl::UnavailableError(
        absl::StrCat("cannot write summary to ", path, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

}  // namespace ps
