// Helpers for the integration tests: a real ParameterServer on 127.0.0.1:0 and real clients.
#ifndef PS_TESTS_TEST_SUPPORT_H_
#define PS_TESTS_TEST_SUPPORT_H_

#include <memory>
#include <string>

#include "server/server.h"
#include "worker/ps_client.h"
#include "worker/trainer.h"

namespace ps::testing {

inline constexpr char kFashionMnistDir[] = "/usr/share/datasets/fashion-mnist";

// Softmax regression on Fashion-MNIST's shape, FP32 allowed, everything else at its default.
ServerOptions SmallServerOptions(v1::AggregationMode mode, int num_workers, int local_steps);

// Starts a server or fails the calling test (ASSERT in the caller on nullptr).
std::unique_ptr<ParameterServer> StartServer(const ServerOptions& options);

std::unique_ptr<PsClient> Connect(const ParameterServer& server, const std::string& name = "test");

bool FashionMnistInstalled();

}  // namespace ps::testing

#endif  // PS_TESTS_TEST_SUPPORT_H_
