#include "common/env_flags.h"

#include <algorithm>
#include <cctype>

#include "absl/flags/reflection.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace ps {

std::vector<std::string> ArgsWithEnvironment(const std::vector<std::string>& argv,
                                             const std::vector<std::string>& environment,
                                             const std::vector<std::string>& known_flags,
                                             const std::map<std::string, std::string>& aliases) {
  std::map<std::string, std::string> from_env;  // flag -> value
  std::map<std::string, std::string> from_alias;
  for (const std::string& entry : environment) {
    const size_t eq = entry.find('=');
    if (eq == std::string::npos) continue;
    const std::string name = entry.substr(0, eq), value = entry.substr(eq + 1);
    if (absl::StartsWith(name, "PS_")) {
      std::string flag = name.substr(3);
      std::transform(flag.begin(), flag.end(), flag.begin(),
                     [](unsigned char c) { return std::tolower(c); });
      if (std::find(known_flags.begin(), known_flags.end(), flag) != known_flags.end()) {
        from_env[flag] = value;
      }
    } else if (auto alias = aliases.find(name); alias != aliases.end()) {
      from_alias[alias->second] = value;
    }
  }
  for (const auto& [flag, value] : from_alias) from_env.emplace(flag, value);
  std::vector<std::string> args;
  if (!argv.empty()) args.push_back(argv[0]);
  for (const auto& [flag, value] : from_env) args.push_back(absl::StrCat("--", flag, "=", value));
  args.insert(args.end(), argv.begin() + std::min<size_t>(1, argv.size()), argv.end());
  return args;
}

std::vector<std::string> DefinedFlagNames() {
  std::vector<std::string> names;
  for (const auto& [name, flag] : absl::GetAllFlags()) names.emplace_back(name);
  return names;
}

std::vector<std::string> Strings(char** null_terminated) {
  std::vector<std::string> out;
  for (char** e = null_terminated; e != nullptr && *e != nullptr; ++e) out.emplace_back(*e);
  return out;
}

}  // namespace ps
