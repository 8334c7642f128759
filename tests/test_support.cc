#include "tests/test_support.h"

#include <fstream>
#include <thread>

#include "gtest/gtest.h"

namespace ps::testing {

ServerOptions SmallServerOptions(v1::AggregationMode mode, int num_workers, int local_steps) {
  ServerOptions o;
  o.listen_address = "127.0.0.1:0";
  v1::TrainingConfig& t = o.training;
  t.set_mode(mode);
  t.set_update_kind(v1::UPDATE_KIND_MODEL_DELTA);
  t.set_local_steps(local_steps);
  t.set_model("softmax");
  t.set_input_dim(784);
  t.set_num_classes(10);
  t.set_learning_rate(0.05f);
  t.set_lr_schedule(v1::LEARNING_RATE_SCHEDULE_CONSTANT);
  t.set_batch_size(32);
  t.set_epochs(1.0f);
  t.set_eval_every(0);
  t.set_data_seed(7);
  t.set_partition(v1::PARTITION_IID);
  t.set_num_workers(num_workers);
  t.add_allowed_encodings(v1::ENCODING_FP32);
  o.threads = 2;
  return o;
}

std::unique_ptr<ParameterServer> StartServer(const ServerOptions& options) {
  ServerOptions with_model = options;
  if (!options.initial_model.has_value() && options.initial_model_file.empty() &&
      options.layout.empty()) {
    absl::StatusOr<ModelValues> builtin = BuiltinInitialModel(options.training);
    EXPECT_TRUE(builtin.ok()) << builtin.status();
    if (builtin.ok()) with_model.initial_model = *std::move(builtin);
  }
  return StartServerWithoutModel(with_model);
}

std::unique_ptr<ParameterServer> StartServerWithoutModel(const ServerOptions& options) {
  auto server = ParameterServer::Create(options);
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? std::move(*server) : nullptr;
}

std::unique_ptr<PsClient> Connect(const ParameterServer& server, const std::string& name) {
  PsClientOptions o;
  o.servers = {server.address()};
  o.worker_name = name;
  o.rpc_timeout = absl::Seconds(60);
  auto client = PsClient::Create(o);
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? std::move(*client) : nullptr;
}

std::unique_ptr<ShardedClient> ConnectShards(const std::vector<const ParameterServer*>& shards,
                                             const std::string& name) {
  PsClientOptions o;
  for (const ParameterServer* shard : shards) o.servers.push_back(shard->address());
  o.worker_name = name;
  o.rpc_timeout = absl::Seconds(60);
  auto client = ShardedClient::Create(o);
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? std::move(*client) : nullptr;
}

std::unique_ptr<Session> ConnectSession(const std::vector<const ParameterServer*>& shards,
                                        const std::string& name) {
  SessionOptions o;
  for (const ParameterServer* shard : shards) o.connection.servers.push_back(shard->address());
  o.connection.worker_name = name;
  o.connection.rpc_timeout = absl::Seconds(60);
  auto session = Session::Connect(o);
  EXPECT_TRUE(session.ok()) << session.status();
  return session.ok() ? std::move(*session) : nullptr;
}

std::vector<TrainingResult> TrainWorkers(const ParameterServer& server, int num_workers,
                                         int64_t train_limit, int64_t test_limit) {
  return TrainWorkers(std::vector<const ParameterServer*>{&server}, num_workers, train_limit,
                      test_limit);
}

std::vector<TrainingResult> TrainWorkers(const std::vector<const ParameterServer*>& shards,
                                         int num_workers, int64_t train_limit, int64_t test_limit) {
  TrainerOptions o;
  o.data.train_limit = train_limit;
  o.data.test_limit = test_limit;
  return TrainWorkers(shards, num_workers, o);
}

std::vector<TrainingResult> TrainWorkers(const std::vector<const ParameterServer*>& shards,
                                         int num_workers, TrainerOptions base) {
  base.data.fashion_mnist_dir = kFashionMnistDir;
  base.quiet = true;
  std::vector<std::unique_ptr<Session>> sessions;
  std::vector<absl::StatusOr<TrainingResult>> results(num_workers, absl::UnknownError("not run"));
  for (int k = 0; k < num_workers; ++k) {
    sessions.push_back(ConnectSession(shards, "w" + std::to_string(k)));
  }
  std::vector<std::thread> threads;
  for (int k = 0; k < num_workers; ++k) {
    threads.emplace_back([&, k] {
      Trainer trainer(base, sessions[k].get());
      results[k] = trainer.Run();
    });
  }
  for (auto& t : threads) t.join();
  std::vector<TrainingResult> ok;
  for (auto& r : results) {
    EXPECT_TRUE(r.ok()) << r.status();
    if (r.ok()) ok.push_back(*std::move(r));
  }
  return ok;
}

EvalResult EvaluateServerModel(const ParameterServer& server, int64_t test_limit) {
  const ModelSpec spec = ModelSpecFromConfig(server.options().training);
  DataOptions data;
  data.fashion_mnist_dir = kFashionMnistDir;
  data.test_limit = test_limit;
  auto test = LoadTestData(data, spec);
  EXPECT_TRUE(test.ok()) << test.status();
  if (!test.ok()) return {};
  return Evaluate(**CreateModel(spec), *server.Model().values, *test);
}

bool FashionMnistInstalled() {
  return std::ifstream(std::string(kFashionMnistDir) + "/train-images-idx3-ubyte.gz").good();
}

}  // namespace ps::testing
