#include "app/env_flags.h"

#include "gtest/gtest.h"

namespace ps {
namespace {

TEST(ArgsWithEnvironment, MapsKnownPsVariablesBeforeTheCommandLine) {
  const EnvironmentArgs env = ArgsWithEnvironment(
      {"ps-server", "--mode=async"},
      {"PS_NUM_WORKERS=8", "PS_MODE=sync", "PS_UNKNOWN=1", "HOME=/root", "PS_LISTEN=0.0.0.0:1"},
      {"num_workers", "mode", "listen"});
  // Sorted by flag; the command line comes last, so its --mode wins in absl's parser.
  EXPECT_EQ(env.args, (std::vector<std::string>{"ps-server", "--listen=0.0.0.0:1", "--mode=sync",
                                                "--num_workers=8", "--mode=async"}));
}

TEST(ArgsWithEnvironment, PsVariablesThatNameNoFlagAreReportedNotApplied) {
  const EnvironmentArgs env = ArgsWithEnvironment(
      {"ps-server"},
      {"PS_EPOHCS=3", "PS_MODE=sync", "PS_SERVER_SERVICE_HOST=10.0.0.1", "PATH=/bin"},
      {"epochs", "mode"});
  EXPECT_EQ(env.args, (std::vector<std::string>{"ps-server", "--mode=sync"}));
  EXPECT_EQ(env.unknown_variables,
            (std::vector<std::string>{"PS_EPOHCS", "PS_SERVER_SERVICE_HOST"}));
}

TEST(ArgsWithEnvironment, AnAliasFillsAFlagUnlessItsPsVariableIsSet) {
  const std::map<std::string, std::string> aliases = {{"JOB_COMPLETION_INDEX", "rank"}};
  EXPECT_EQ(ArgsWithEnvironment({"ps-worker"}, {"JOB_COMPLETION_INDEX=3"}, {"rank"}, aliases).args,
            (std::vector<std::string>{"ps-worker", "--rank=3"}));
  EXPECT_EQ(
      ArgsWithEnvironment({"ps-worker"}, {"JOB_COMPLETION_INDEX=3", "PS_RANK=1"}, {"rank"}, aliases)
          .args,
      (std::vector<std::string>{"ps-worker", "--rank=1"}));
}

}  // namespace
}  // namespace ps
