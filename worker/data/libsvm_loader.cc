// Loader for the LIBSVM text format: "label index:value index:value ..." with 1-based indices.
#include <fstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "worker/data/dataset.h"

namespace ps {

absl::StatusOr<Dataset> LoadLibsvm(const std::string& path, int dim, int num_classes,
                                   int64_t limit) {
  std::ifstream in(path);
  if (!in)
    return absl::NotFoundError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  std::vector<std::vector<std::pair<int, float>>> rows;
  std::vector<int32_t> labels;
  std::string line;
  for (int64_t line_no = 1; std::getline(in, line); ++line_no) {
    if (limit > 0 && static_cast<int64_t>(labels.size()) >= limit) break;
    absl::string_view text = absl::StripAsciiWhitespace(line);
    if (text.empty() || text[0] == '#') continue;
    std::vector<absl::string_view> tokens = absl::StrSplit(text, ' ', absl::SkipWhitespace());
    auto where = [&](absl::string_view token) {
      return absl::StrFormat("%s:%d: token '%s'", path, line_no, token);
    };
    double label;
    if (!absl::SimpleAtod(tokens[0], &label)) {
      return absl::InvalidArgumentError(absl::StrCat(where(tokens[0]), " is not a numeric label"));
    }
    int32_t cls;
    if (label == -1.0 || label == 1.0) {
      cls = label > 0 ? 1 : 0;
    } else if (label == static_cast<int32_t>(label) && label >= 0 && label < num_classes) {
      cls = static_cast<int32_t>(label);
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          where(tokens[0]), ": labels must be -1/+1 or integers in [0, ", num_classes, ")"));
    }
    std::vector<std::pair<int, float>> row;
    for (size_t t = 1; t < tokens.size(); ++t) {
      std::pair<absl::string_view, absl::string_view> kv = absl::StrSplit(tokens[t], ':');
      int index;
      float value;
      if (!absl::SimpleAtoi(kv.first, &index) || !absl::SimpleAtof(kv.second, &value) ||
          kv.second.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat(where(tokens[t]), " is not of the form index:value"));
      }
      if (index < 1 || index > dim) {
        return absl::InvalidArgumentError(absl::StrCat(
            where(tokens[t]), ": feature index must be in [1, ", dim, "] (input_dim)"));
      }
      if (!std::isfinite(value)) {
        return absl::InvalidArgumentError(absl::StrCat(where(tokens[t]), ": value is not finite"));
      }
      row.emplace_back(index - 1, value);
    }
    rows.push_back(std::move(row));
    labels.push_back(cls);
  }
  if (in.bad()) return absl::DataLossError(absl::StrCat("error reading ", path));
  if (labels.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": no examples"));

  Dataset data;
  data.num_classes = num_classes;
  data.features = RowMatrix::Zero(static_cast<Eigen::Index>(rows.size()), dim);
  for (size_t i = 0; i < rows.size(); ++i) {
    for (const auto& [j, v] : rows[i]) data.features(static_cast<Eigen::Index>(i), j) = v;
  }
  data.labels = std::move(labels);
  return data;
}

}  // namespace ps
