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

bool JsonObject::Has(absl::string_view key) const {
  for (const auto& field : fields_) {
    if (field.first == key) return true;
  }
  return false;
}

JsonObject& JsonObject::AddFields(const google::protobuf::Message& message) {
  using google::protobuf::FieldDescriptor;
  const google::protobuf::Descriptor* descriptor = message.GetDescriptor();
  const google::protobuf::Reflection* reflection = message.GetReflection();
  for (int i = 0; i < descriptor->field_count(); ++i) {
    const FieldDescriptor* field = descriptor->field(i);
    if (field->is_repeated() || Has(field->name())) continue;
    switch (field->cpp_type()) {
      case FieldDescriptor::CPPTYPE_INT32:
        Add(field->name(), int64_t{reflection->GetInt32(message, field)});
        break;
      case FieldDescriptor::CPPTYPE_INT64:
        Add(field->name(), int64_t{reflection->GetInt64(message, field)});
        break;
      case FieldDescriptor::CPPTYPE_UINT32:
        Add(field->name(), uint64_t{reflection->GetUInt32(message, field)});
        break;
      case FieldDescriptor::CPPTYPE_UINT64:
        Add(field->name(), uint64_t{reflection->GetUInt64(message, field)});
        break;
      case FieldDescriptor::CPPTYPE_DOUBLE:
        Add(field->name(), reflection->GetDouble(message, field));
        break;
      case FieldDescriptor::CPPTYPE_FLOAT:
        Add(field->name(), double{reflection->GetFloat(message, field)});
        break;
      case FieldDescriptor::CPPTYPE_BOOL:
        Add(field->name(), reflection->GetBool(message, field));
        break;
      case FieldDescriptor::CPPTYPE_STRING:
        Add(field->name(), reflection->GetString(message, field));
        break;
      case FieldDescriptor::CPPTYPE_ENUM:
        Add(field->name(), reflection->GetEnum(message, field)->name());
        break;
      case FieldDescriptor::CPPTYPE_MESSAGE:
        break;
    }
  }
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
