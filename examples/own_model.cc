// Bring your own model: a training program of its own (a two-layer tanh network fitted to a fixed
// random "teacher" network of the same shape), trained by several processes through a stock
// ps-server with the client library. It knows nothing of the project's built-in models.
// See README, "Use it with your own training code".
//   own_model --servers=HOST:PORT[,HOST:PORT...] [--name=N] [--rounds=8] [--local_steps=4]
//             [--seed=1] [--lr=4] [--batch=8]
#include <Eigen/Dense>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "client/session.h"

namespace {

constexpr int kIn = 453, kHidden = 1533, kOut = 1501;  // 3,000,017 parameters in 5 tensors
using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Vector = Eigen::RowVectorXf;

ps::Layout NetLayout() {  // the same as examples/own_model.layout
  return *ps::Layout::Create({{"hidden.weight", {kHidden, kIn}},
                              {"hidden.bias", {kHidden}},
                              {"out.weight", {kOut, kHidden}},
                              {"out.bias", {kOut}},
                              {"out.scale", {kOut}}});
}

// The tensors as views into one flat vector, in layout order.
struct Net {
  Eigen::Map<Matrix> w1, w2;
  Eigen::Map<Vector> b1, b2, scale;
  explicit Net(float* p)
      : w1(p, kHidden, kIn),
        w2(p + kHidden * (kIn + 1), kOut, kHidden),
        b1(p + kHidden * kIn, kHidden),
        b2(w2.data() + kOut * kHidden, kOut),
        scale(b2.data() + kOut, kOut) {}
};

std::vector<float> RandomNet(unsigned seed) {
  std::vector<float> p(NetLayout().size(), 0.0f);
  Net n(p.data());
  std::srand(seed);  // Eigen's Random() draws from rand()
  n.w1 = Matrix::Random(kHidden, kIn) * (1.7f / std::sqrt(1.0f * kIn));
  n.w2 = Matrix::Random(kOut, kHidden) * (1.7f / std::sqrt(1.0f * kHidden));
  n.scale.setOnes();
  return p;
}

// Mean squared error of the network on the batch (x, y); with `grad`, also its gradient.
double Loss(std::vector<float>& params, const Matrix& x, const Matrix& y,
            std::vector<float>* grad) {
  Net n(params.data());
  const Matrix h = ((x * n.w1.transpose()).rowwise() + n.b1).array().tanh().matrix();
  const Matrix pre = h * n.w2.transpose();
  const Matrix err =
      ((pre.array().rowwise() * n.scale.array()).rowwise() + n.b2.array()).matrix() - y;
  if (grad != nullptr) {  // backpropagation by hand
    Net g(grad->data());
    const Matrix d_out = err * (2.0f / err.size());
    g.b2 = d_out.colwise().sum();
    g.scale = d_out.cwiseProduct(pre).colwise().sum();
    const Matrix d_pre = d_out.array().rowwise() * n.scale.array();
    g.w2 = d_pre.transpose() * h;
    const Matrix d_act = (d_pre * n.w2).cwiseProduct((1 - h.array().square()).matrix());
    g.b1 = d_act.colwise().sum();
    g.w1 = d_act.transpose() * x;
  }
  return err.squaredNorm() / err.size();
}

// `count` examples x ~ U(-1, 1)^kIn labelled by the teacher network.
void Examples(std::vector<float>& teacher, int count, Matrix* x, Matrix* y) {
  *x = Matrix::Random(count, kIn);
  Net t(teacher.data());
  const Matrix h = ((*x * t.w1.transpose()).rowwise() + t.b1).array().tanh().matrix();
  *y = ((h * t.w2.transpose()).array().rowwise() * t.scale.array()).rowwise() + t.b2.array();
}

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "own_model: %s\n", status.ToString().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, std::string> flag = {{"rounds", "8"}, {"local_steps", "4"},
                                             {"seed", "1"},   {"lr", "4"},
                                             {"batch", "8"},  {"name", "own"}};
  for (int i = 1; i < argc; ++i) {
    std::vector<std::string> kv = absl::StrSplit(argv[i] + 2, absl::MaxSplits('=', 1));
    flag[kv[0]] = kv.size() > 1 ? kv[1] : "";
  }
  ps::SessionOptions options;
  options.connection.servers = absl::StrSplit(flag["servers"], ',', absl::SkipEmpty());
  options.connection.worker_name = flag["name"];
  absl::StatusOr<std::unique_ptr<ps::Session>> connected = ps::Session::Connect(options);
  if (!connected.ok()) return Fail(connected.status());
  ps::Session& session = **connected;
  // The first process's random initial model becomes everyone's (the server adopts it).
  const unsigned seed = std::stoul(flag["seed"]);
  absl::StatusOr<ps::JoinedRun> joined = session.Join({NetLayout(), RandomNet(seed)});
  if (!joined.ok()) return Fail(joined.status());

  std::vector<float> teacher = RandomNet(1234), grad(session.model().size());
  std::vector<float> params(session.model().begin(), session.model().end());
  Matrix test_x, test_y, x, y;
  Examples(teacher, 64, &test_x, &test_y);  // held out: the same in every process (srand(1234))
  std::srand(seed * 7919 + joined->rank);
  const double initial_loss = Loss(params, test_x, test_y, nullptr);
  const int rounds = std::stoi(flag["rounds"]), h = std::stoi(flag["local_steps"]);
  const float lr = std::stof(flag["lr"]);
  for (int r = 0; r < rounds; ++r) {
    double train_loss = 0;
    for (int step = 0; step < h; ++step) {  // H local SGD steps
      Examples(teacher, std::stoi(flag["batch"]), &x, &y);
      train_loss += Loss(params, x, y, &grad) / h;
      for (size_t i = 0; i < params.size(); ++i) params[i] -= lr * grad[i];
    }
    // One call: the delta goes to the servers (compressed as they ask), and the next global
    // model comes back into params.
    absl::StatusOr<ps::RoundResult> round =
        session.Sync(absl::MakeSpan(params), {uint64_t(h) * x.rows(), train_loss, lr});
    if (!round.ok()) return Fail(round.status());
    std::printf("[%s] round %d/%d version %llu train_loss %.5f\n", flag["name"].c_str(), r + 1,
                rounds, static_cast<unsigned long long>(round->version), train_loss);
  }
  absl::StatusOr<uint64_t> version = session.Refresh(absl::ZeroDuration());  // the newest model
  if (!version.ok()) return Fail(version.status());
  params.assign(session.model().begin(), session.model().end());
  const ps::SessionCounters c = session.counters();
  std::printf(
      "summary {\"rank\": %u, \"version\": %llu, \"initial_loss\": %.6f, \"final_loss\": %.6f, "
      "\"bytes_sent\": %llu, \"bytes_received\": %llu}\n",
      joined->rank, static_cast<unsigned long long>(*version), initial_loss,
      Loss(params, test_x, test_y, nullptr), static_cast<unsigned long long>(c.wire.bytes_sent),
      static_cast<unsigned long long>(c.wire.bytes_received));
  absl::Status left = session.Leave();
  return left.ok() ? 0 : Fail(left);
}
