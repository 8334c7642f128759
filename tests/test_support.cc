#include "tests/test_support.h"

#include <fstream>

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

bool FashionMnistInstalled() {
  return std::ifstream(std::string(kFashionMnistDir) + "/train-images-idx3-ubyte.gz").good();
}

}  // namespace ps::testing
