// Helpers for the integration tests: a real ParameterServer on 127.0.0.1:0 and real clients.
#ifndef PS_TESTS_TEST_SUPPORT_H_
#define PS_TESTS_TEST_SUPPORT_H_

#include <memory>
#include <string>
#include <vector>

#include "client/ps_client.h"
#include "client/session.h"
#include "client/sharded_client.h"
#include "server/server.h"
#include "worker/trainer.h"

namespace ps::testing {

inline constexpr char kFashionMnistDir[] = "/usr/share/datasets/fashion-mnist";

// Softmax regression on Fashion-MNIST's shape, FP32 allowed, everything else at its default.
ServerOptions SmallServerOptions(v1::AggregationMode mode, int num_workers, int local_steps);

// Starts a server or fails the calling test (ASSERT in the caller on nullptr). Unless the options
// give a model (layout, values or a file), the server starts with the built-in model that
// options.training names, as the first ps-worker would upload it.
std::unique_ptr<ParameterServer> StartServer(const ServerOptions& options);
// The same, taking the options as they are: without a model given (and no checkpoint), the
// server waits for a worker's initial upload.
std::unique_ptr<ParameterServer> StartServerWithoutModel(const ServerOptions& options);

std::unique_ptr<PsClient> Connect(const ParameterServer& server, const std::string& name = "test");

// A worker's client of the whole model served by `shards` (in shard order).
std::unique_ptr<ShardedClient> ConnectShards(const std::vector<const ParameterServer*>& shards,
                                             const std::string& name = "test");

// A session (what a Trainer drives) of the whole model served by `shards`, in shard order.
std::unique_ptr<Session> ConnectSession(const std::vector<const ParameterServer*>& shards,
                                        const std::string& name = "test");

bool FashionMnistInstalled();

// Runs `num_workers` Trainers against `server`, each in its own thread with its own client, on
// the first `train_limit` Fashion-MNIST training images, and returns the results of those that
// succeeded (failing the calling test for the others).
std::vector<TrainingResult> TrainWorkers(const ParameterServer& server, int num_workers,
                                         int64_t train_limit, int64_t test_limit);
// The same against a model split over `shards`.
std::vector<TrainingResult> TrainWorkers(const std::vector<const ParameterServer*>& shards,
                                         int num_workers, int64_t train_limit, int64_t test_limit);
// The same with every Trainer's options taken from `base` (quiet, on the dataset's directory).
std::vector<TrainingResult> TrainWorkers(const std::vector<const ParameterServer*>& shards,
                                         int num_workers, TrainerOptions base);

// Test accuracy of the server's broadcast model on the first `test_limit` Fashion-MNIST test
// images.
EvalResult EvaluateServerModel(const ParameterServer& server, int64_t test_limit);

}  // namespace ps::testing

#endif  // PS_TESTS_TEST_SUPPORT_H_
