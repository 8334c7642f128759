// slowlink._native: the client library's Session, Layout and errors for Python (pybind11).
// One implementation of the protocol and the codecs: this file only converts. numpy arrays go
// in and out without copies (float32, C-contiguous, checked), and the GIL is released while the
// session works on the network, so a training thread keeps running.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/session.h"

namespace py = pybind11;

namespace ps {
namespace {

// One Python exception class per status code a caller handles differently.
struct Errors {
  py::object base, invalid_argument, failed_precondition, not_member, unavailable, deadline,
      permission;
};
Errors* errors = nullptr;

[[noreturn]] void Raise(const absl::Status& status) {
  py::object type = errors->base;
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
      type = errors->invalid_argument;
      break;
    case absl::StatusCode::kFailedPrecondition:
      type = errors->failed_precondition;
      break;
    case absl::StatusCode::kNotFound:
      type = errors->not_member;
      break;
    case absl::StatusCode::kUnavailable:
      type = errors->unavailable;
      break;
    case absl::StatusCode::kDeadlineExceeded:
      type = errors->deadline;
      break;
    case absl::StatusCode::kUnauthenticated:
    case absl::StatusCode::kPermissionDenied:
      type = errors->permission;
      break;
    default:
      break;
  }
  PyErr_SetString(type.ptr(), std::string(status.message()).c_str());
  throw py::error_already_set();
}

template <typename T>
T OrRaise(absl::StatusOr<T> value) {
  if (!value.ok()) Raise(value.status());
  return *std::move(value);
}

// A float32, C-contiguous array of `size` values (any shape), or a TypeError/ValueError saying
// what is wrong with it. `writable`: Sync writes the new global model into it.
py::buffer_info CheckedBuffer(const py::array& array, size_t size, const char* what,
                              bool writable) {
  if (!array.dtype().is(py::dtype::of<float>())) {
    throw py::type_error(
        absl::StrCat(what, " must be float32, not ", std::string(py::str(array.dtype()))));
  }
  if (!(array.flags() & py::array::c_style)) {
    throw py::value_error(
        absl::StrCat(what, " must be C-contiguous (use numpy.ascontiguousarray)"));
  }
  if (writable && !array.writeable()) throw py::value_error(absl::StrCat(what, " is read-only"));
  if (static_cast<size_t>(array.size()) != size) {
    throw py::value_error(
        absl::StrCat(what, " has ", array.size(), " values; the model has ", size));
  }
  return array.request(writable);
}

Layout MakeLayout(const std::vector<std::pair<std::string, std::vector<uint64_t>>>& tensors) {
  std::vector<TensorShape> shapes;
  for (const auto& [name, shape] : tensors) shapes.push_back({name, shape});
  return OrRaise(Layout::Create(std::move(shapes)));
}

py::dict RoundDict(const RoundResult& r) {
  py::dict d;
  d["version"] = r.version;
  d["stale_refusals"] = r.stale_refusals;
  d["repushes"] = r.repushes;
  d["rejoined"] = r.rejoined;
  d["bits"] = r.bits;
  return d;
}

UpdateInfo Info(uint64_t sample_count, double train_loss, double learning_rate) {
  UpdateInfo info;
  info.sample_count = sample_count;
  info.train_loss = train_loss;
  info.learning_rate = learning_rate;
  return info;
}

class PySession {
 public:
  PySession(std::vector<std::string> servers, std::string name, int rank, double rpc_timeout_s,
            double retry_budget_s, std::string token, std::string tls_ca, std::string tls_cert,
            std::string tls_key, std::string tls_server_name, std::string update_encoding,
            uint32_t bits) {
    SessionOptions o;
    o.connection.servers = std::move(servers);
    o.connection.worker_name = std::move(name);
    o.connection.requested_rank = rank;
    o.connection.rpc_timeout = absl::Seconds(rpc_timeout_s);
    o.connection.retry_budget = absl::Seconds(retry_budget_s);
    o.connection.token = std::move(token);
    o.connection.tls_ca_file = std::move(tls_ca);
    o.connection.tls_cert_file = std::move(tls_cert);
    o.connection.tls_key_file = std::move(tls_key);
    o.connection.tls_server_name = std::move(tls_server_name);
    o.compression.update_encoding = std::move(update_encoding);
    o.compression.bits = bits;
    session_ = OrRaise(Session::Connect(o));
  }

  py::dict Join(const Layout& layout, const py::array& initial) {
    ModelValues values{layout, {}};
    if (initial.size() > 0) {
      const py::buffer_info b = CheckedBuffer(initial, layout.size(), "initial", false);
      const float* p = static_cast<const float*>(b.ptr);
      values.values.assign(p, p + layout.size());
    }
    absl::StatusOr<JoinedRun> joined;
    {
      py::gil_scoped_release release;
      joined = session_->Join(values);
    }
    JoinedRun run = OrRaise(std::move(joined));
    py::dict d;
    d["worker_id"] = run.worker_id;
    d["rank"] = run.rank;
    d["version"] = run.version;
    d["num_workers"] = run.config.num_workers();
    d["local_steps"] = run.config.local_steps();
    d["sync"] = run.config.mode() == v1::AGGREGATION_MODE_SYNC;
    d["gradient"] = run.config.update_kind() == v1::UPDATE_KIND_GRADIENT;
    d["learning_rate"] = run.config.learning_rate();
    return d;
  }

  py::array_t<float> Model() const {
    const absl::Span<const float> m = session_->model();
    py::array_t<float> out(m.size());
    std::copy(m.begin(), m.end(), out.mutable_data());
    return out;
  }

  py::dict Sync(py::array params, uint64_t sample_count, double train_loss, double lr) {
    const py::buffer_info b = CheckedBuffer(params, session_->model().size(), "params", true);
    absl::Span<float> span(static_cast<float*>(b.ptr), session_->model().size());
    absl::StatusOr<RoundResult> r;
    {
      py::gil_scoped_release release;
      r = session_->Sync(span, Info(sample_count, train_loss, lr));
    }
    return RoundDict(OrRaise(std::move(r)));
  }

  py::dict Push(const py::array& update, uint64_t sample_count, double train_loss, double lr) {
    const py::buffer_info b = CheckedBuffer(update, session_->model().size(), "update", false);
    absl::Span<const float> span(static_cast<const float*>(b.ptr), session_->model().size());
    absl::StatusOr<RoundResult> r;
    {
      py::gil_scoped_release release;
      r = session_->Push(span, Info(sample_count, train_loss, lr));
    }
    return RoundDict(OrRaise(std::move(r)));
  }

  uint64_t Refresh(double wait_s) {
    absl::StatusOr<uint64_t> v;
    {
      py::gil_scoped_release release;
      v = session_->Refresh(absl::Seconds(wait_s));
    }
    return OrRaise(std::move(v));
  }

  void Report(uint64_t version, double test_loss, double test_accuracy) {
    v1::EvalReport eval;
    eval.set_version(version);
    eval.set_test_loss(test_loss);
    eval.set_test_accuracy(test_accuracy);
    absl::Status s;
    {
      py::gil_scoped_release release;
      s = session_->Report(eval);
    }
    if (!s.ok()) Raise(s);
  }

  void Leave() {
    absl::Status s;
    {
      py::gil_scoped_release release;
      s = session_->Leave();
    }
    if (!s.ok()) Raise(s);
  }

  py::dict Counters() const {
    const SessionCounters c = session_->counters();
    py::dict d;
    d["bytes_sent"] = c.wire.bytes_sent;
    d["bytes_received"] = c.wire.bytes_received;
    d["raw_bytes_sent"] = c.wire.raw_bytes_sent;
    d["raw_bytes_received"] = c.wire.raw_bytes_received;
    d["updates"] = c.updates;
    d["stale_refusals"] = c.stale_refusals;
    d["stale_repushes"] = c.stale_repushes;
    d["rejoins"] = c.rejoins;
    d["mean_update_bits"] = c.mean_update_bits;
    return d;
  }

  uint64_t version() const { return session_->version(); }
  size_t size() const { return session_->model().size(); }

 private:
  std::unique_ptr<Session> session_;
};

}  // namespace
}  // namespace ps

PYBIND11_MODULE(_native, m) {
  using ps::PySession;
  m.doc() = "The parameter server's client library (C++), bound for Python.";
  static ps::Errors errors;
  errors.base = py::exception<std::exception>(m, "Error");
  auto sub = [&](const char* name) {
    return py::object(py::exception<std::exception>(m, name, errors.base.ptr()));
  };
  errors.invalid_argument = sub("InvalidArgumentError");
  errors.failed_precondition = sub("FailedPreconditionError");
  errors.not_member = sub("NotMemberError");
  errors.unavailable = sub("UnavailableError");
  errors.deadline = sub("DeadlineExceededError");
  errors.permission = sub("PermissionDeniedError");
  ps::errors = &errors;

  py::class_<ps::Layout>(m, "Layout", "An ordered list of named float32 tensors.")
      .def(py::init(&ps::MakeLayout), py::arg("tensors"),
           "tensors: [(name, shape), ...]; InvalidArgumentError names the first problem.")
      .def_property_readonly("size", &ps::Layout::size, "Coordinates in all.")
      .def("fingerprint", &ps::Layout::Fingerprint)
      .def("__repr__", &ps::Layout::Summary);

  py::class_<PySession>(m, "Session",
                        "One training process's part in a run (see docs/client.md). Not "
                        "thread-safe: drive it from one thread.")
      .def(py::init<std::vector<std::string>, std::string, int, double, double, std::string,
                    std::string, std::string, std::string, std::string, std::string, uint32_t>(),
           py::arg("servers"), py::arg("name") = "python", py::arg("rank") = -1,
           py::arg("rpc_timeout") = 30.0, py::arg("retry_budget") = 60.0, py::arg("token") = "",
           py::arg("tls_ca") = "", py::arg("tls_cert") = "", py::arg("tls_key") = "",
           py::arg("tls_server_name") = "", py::arg("update_encoding") = "", py::arg("bits") = 0)
      .def("join", &PySession::Join, py::arg("layout"), py::arg("initial"),
           "Joins every shard; a server without a model takes `initial`. Returns the run's "
           "settings.")
      .def("model", &PySession::Model, "A copy of the global model as last pulled.")
      .def_property_readonly("version", &PySession::version)
      .def_property_readonly("size", &PySession::size)
      .def("sync", &PySession::Sync, py::arg("params"), py::arg("sample_count") = 1,
           py::arg("train_loss") = 0.0, py::arg("learning_rate") = 0.0,
           "One Local SGD synchronisation: pushes params - model(), writes the next global "
           "model into params (in place).")
      .def("push", &PySession::Push, py::arg("update"), py::arg("sample_count") = 1,
           py::arg("train_loss") = 0.0, py::arg("learning_rate") = 0.0)
      .def("refresh", &PySession::Refresh, py::arg("wait") = 0.0)
      .def("report", &PySession::Report, py::arg("version"), py::arg("test_loss"),
           py::arg("test_accuracy"))
      .def("leave", &PySession::Leave)
      .def("counters", &PySession::Counters);
}
