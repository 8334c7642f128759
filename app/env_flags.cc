#include "app/env_flags.h"

#include <algorithm>
#include <cctype>

#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace ps {

EnvironmentArgs ArgsWithEnvironment(const std::vector<std::string>& argv,
                                    const std::vector<std::string>& environment,
                                    const std::vector<std::string>& known_flags,
                                    const std::map<std::string, std::string>& aliases) {
  EnvironmentArgs out;
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
      } else {
        out.unknown_variables.push_back(name);
      }
    } else if (auto alias = aliases.find(name); alias != aliases.end()) {
      from_alias[alias->second] = value;
    }
  }
  for (const auto& [flag, value] : from_alias) from_env.emplace(flag, value);
  std::vector<std::string>& args = out.args;
  if (!argv.empty()) args.push_back(argv[0]);
  for (const auto& [flag, value] : from_env) args.push_back(absl::StrCat("--", flag, "=", value));
  args.insert(args.end(), argv.begin() + std::min<size_t>(1, argv.size()), argv.end());
  std::sort(out.unknown_variables.begin(), out.unknown_variables.end());
  return out;
}

void ParseCommandLineWithEnvironment(int argc, char** argv, char** envp,
                                     const std::map<std::string, std::string>& aliases) {
  std::vector<std::string> flags, environment;
  for (const auto& [name, flag] : absl::GetAllFlags()) flags.emplace_back(name);
  for (char** e = envp; e != nullptr && *e != nullptr; ++e) environment.emplace_back(*e);
  EnvironmentArgs env =
      ArgsWithEnvironment(std::vector<std::string>(argv, argv + argc), environment, flags, aliases);
  std::vector<char*> arg_pointers;
  for (std::string& arg : env.args) arg_pointers.push_back(arg.data());
  absl::ParseCommandLine(static_cast<int>(arg_pointers.size()), arg_pointers.data());
  for (const std::string& name : env.unknown_variables) {
    LogWarning(absl::StrCat("event=unknown_environment_variable name=", name,
                            " note=\"no flag of this binary; ignored\""));
  }
}

}  // namespace ps
