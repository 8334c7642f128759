// slowlink._native: the client library's Session, Layout and errors for Python (pybind11).
// One implementation of the protocol and the codecs: this file only converts. numpy arrays go
// in and out without copies (float32, C-contiguous, checked), and the GIL is released while the
// session works on the network, so a training thread keeps running.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/session.h"
#include "common/codec.h"
#include "google/protobuf/util/json_util.h"

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
  // e.code: the status code's name, for codes without a class of their own.
  py::object error = type(std::string(status.message()));
  error.attr("code") = absl::StatusCodeToString(status.code());
  PyErr_SetObject(type.ptr(), error.ptr());
  throw py::error_already_set();
}

template <typename T>
T OrRaise(absl::StatusOr<T> value) {
  if (!value.ok()) Raise(value.status());
  return *std::move(value);
}

// A proto message as a Python dict (field names as in ps.proto, every field present).
py::object AsDict(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string json;
  if (!google::protobuf::util::MessageToJsonString(message, &json, options).ok()) {
    throw std::runtime_error("cannot convert a message to JSON");
  }
  return py::module_::import("json").attr("loads")(json);
}

// A float32, C-contiguous array of `size` values (any shape), or a TypeError/ValueError saying
// what is wrong with it. `writable`: Sync writes the new global model into it.
py::buffer_info CheckedBuffer(const py::array& array, size_t size, const char* what,
                              bool writable) {
  if (!array.dtype().equal(py::dtype::of<float>())) {  // equal, not the same object
    throw py::type_error(
        absl::StrCat(what, " must be float32, not ", std::string(py::str(array.dtype()))));
  }
  if (!(array.flags() & py::array::c_style)) {
    throw py::value_error(
        absl::StrCat(what, " must be C-contiguous (use numpy.ascontiguousarray)"));
  }
  if (reinterpret_cast<uintptr_t>(array.data()) % alignof(float) != 0) {
    throw py::value_error(absl::StrCat(what, " is not aligned (use numpy.ascontiguousarray)"));
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

// A float32, C-contiguous array of any size.
py::buffer_info AnyFloatBuffer(const py::array& array, const char* what) {
  return CheckedBuffer(array, static_cast<size_t>(array.size()), what, false);
}

// One of the wire codecs (common/codec.h), exactly as the session and the server run it.
class PyCodec {
 public:
  PyCodec(const std::string& encoding, uint32_t bits, uint32_t bucket_size,
          const std::string& scaling, uint64_t seed) {
    params_.set_encoding(OrRaise(ParseEncoding(encoding)));
    if (params_.encoding() == v1::ENCODING_QSGD || params_.encoding() == v1::ENCODING_SIGN) {
      params_.set_bucket_size(bucket_size);
    }
    if (params_.encoding() == v1::ENCODING_QSGD) {
      params_.set_bits(bits);
      params_.set_seed(seed);
      if (scaling == "max_abs") {
        params_.set_scaling(v1::QUANT_SCALING_MAX_ABS);
      } else if (scaling == "l2") {
        params_.set_scaling(v1::QUANT_SCALING_L2);
      } else {
        Raise(absl::InvalidArgumentError(
            absl::StrCat("unknown scaling '", scaling, "'; choose max_abs or l2")));
      }
    }
    if (absl::Status s = ValidateEncodingParams(params_); !s.ok()) Raise(s);
  }

  py::bytes Encode(const py::array& values) const {
    const py::buffer_info b = AnyFloatBuffer(values, "values");
    absl::Span<const float> span(static_cast<const float*>(b.ptr), values.size());
    std::string out;
    absl::Status s;
    {
      py::gil_scoped_release release;
      s = EncodeInto(params_, span, &out);
    }
    if (!s.ok()) Raise(s);
    return py::bytes(out);
  }

  py::array_t<float> Decode(const py::bytes& payload, size_t size) const {
    char* data = nullptr;
    Py_ssize_t length = 0;
    PyBytes_AsStringAndSize(payload.ptr(), &data, &length);  // no copy; payload outlives the call
    const absl::string_view bytes(data, static_cast<size_t>(length));
    if (absl::Status s = ValidatePayload(params_, bytes, size); !s.ok()) Raise(s);  // before
    py::array_t<float> out(size);                                                   // allocating
    absl::Span<float> span(out.mutable_data(), size);
    absl::Status s;
    {
      py::gil_scoped_release release;
      s = ps::Decode(params_, bytes, span);
    }
    if (!s.ok()) Raise(s);
    return out;
  }

  uint64_t EncodedSize(uint64_t size) const { return OrRaise(ps::EncodedSize(params_, size)); }
  std::string Name() const { return EncodingName(params_); }

 private:
  v1::EncodingParams params_;
};

class PySession {
 public:
  PySession(std::vector<std::string> servers, std::string name, int rank, double rpc_timeout_s,
            double retry_budget_s, std::string token, std::string tls_ca, std::string tls_cert,
            std::string tls_key, std::string tls_server_name, std::string update_encoding,
            uint32_t bits, std::string bits_policy) {
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
    o.compression.bits_policy = std::move(bits_policy);
    session_ = OrRaise(Session::Connect(o));
  }

  py::object ServerStatus() {
    absl::StatusOr<v1::StatusResponse> status = Locked([&] { return session_->ServerStatus(); });
    return AsDict(OrRaise(std::move(status)));
  }

  py::dict Join(const Layout& layout, const py::array& initial) {
    ModelValues values{layout, {}};
    if (initial.size() > 0) {
      const py::buffer_info b = CheckedBuffer(initial, layout.size(), "initial", false);
      const float* p = static_cast<const float*>(b.ptr);
      values.values.assign(p, p + layout.size());
    }
    absl::StatusOr<JoinedRun> joined = Locked([&] { return session_->Join(values); });
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
    d["config"] = AsDict(run.config);
    return d;
  }

  py::array_t<float> Model() const {
    py::array_t<float> out(session_->model().size());
    float* data = out.mutable_data();
    Locked([&] {
      const absl::Span<const float> m = session_->model();
      std::copy(m.begin(), m.end(), data);
      return 0;
    });
    return out;
  }

  py::dict Sync(py::array params, uint64_t sample_count, double train_loss, double lr,
                uint64_t round, uint64_t total_rounds) {
    const py::buffer_info b = CheckedBuffer(params, session_->model().size(), "params", true);
    absl::Span<float> span(static_cast<float*>(b.ptr), session_->model().size());
    absl::StatusOr<RoundResult> r = Locked([&] {
      return session_->Sync(span, {sample_count, train_loss, lr, round, total_rounds});
    });
    return RoundDict(OrRaise(std::move(r)));
  }

  py::dict Push(const py::array& update, uint64_t sample_count, double train_loss, double lr,
                uint64_t round, uint64_t total_rounds) {
    const py::buffer_info b = CheckedBuffer(update, session_->model().size(), "update", false);
    absl::Span<const float> span(static_cast<const float*>(b.ptr), session_->model().size());
    absl::StatusOr<RoundResult> r = Locked([&] {
      return session_->Push(span, {sample_count, train_loss, lr, round, total_rounds});
    });
    return RoundDict(OrRaise(std::move(r)));
  }

  uint64_t Refresh(double wait_s) {
    absl::StatusOr<uint64_t> v = Locked([&] { return session_->Refresh(absl::Seconds(wait_s)); });
    return OrRaise(std::move(v));
  }

  void Report(uint64_t version, double test_loss, double test_accuracy) {
    v1::EvalReport eval;
    eval.set_version(version);
    eval.set_test_loss(test_loss);
    eval.set_test_accuracy(test_accuracy);
    absl::Status s = Locked([&] { return session_->Report(eval); });
    if (!s.ok()) Raise(s);
  }

  void Leave() {
    absl::Status s = Locked([&] { return session_->Leave(); });
    if (!s.ok()) Raise(s);
  }

  py::dict Counters() const {
    const SessionCounters c = session_->counters();
    py::dict d;
    d["bytes_sent"] = c.wire.bytes_sent;
    d["bytes_received"] = c.wire.bytes_received;
    d["raw_bytes_sent"] = c.wire.raw_bytes_sent;
    d["raw_bytes_received"] = c.wire.raw_bytes_received;
    d["upload_bytes_sent"] = c.wire.upload_bytes_sent;
    d["updates"] = c.updates;
    d["stale_refusals"] = c.stale_refusals;
    d["stale_repushes"] = c.stale_repushes;
    d["rejoins"] = c.rejoins;
    d["mean_update_bits"] = c.mean_update_bits;
    return d;
  }

  uint64_t version() const {
    return Locked([&] { return session_->version(); });
  }
  size_t size() const { return session_->model().size(); }

 private:
  // Runs `call` with the GIL released, one call at a time: a call from a second thread (a sync
  // on a background thread, a report from the training loop) waits for the first to end. The
  // GIL is released before the lock is taken, so a waiting thread never blocks the holder.
  template <typename Call>
  auto Locked(Call call) const -> decltype(call()) {
    py::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(mu_);
    return call();
  }

  std::unique_ptr<Session> session_;
  mutable std::mutex mu_;  // one session call at a time (counters() excepted)
};

}  // namespace
}  // namespace ps

PYBIND11_MODULE(_native, m) {
  using ps::PyCodec;
  using ps::PySession;
  m.doc() =
      "The parameter server's client library (C++), bound for Python: Session, Layout, Codec "
      "and one exception class per status code. See docs/python.md.";
  // Leaked on purpose: these must outlive the module, and a static destroyed after the
  // interpreter has finalized would touch freed Python objects.
  auto* errors = new ps::Errors;
  errors->base = py::exception<std::exception>(m, "Error");
  errors->base.attr("__doc__") =
      "Any error of the client library; the server's message is kept, and e.code is the "
      "status code's name (e.g. 'RESOURCE_EXHAUSTED').";
  auto sub = [&](const char* name, const char* doc) {
    py::object type = py::exception<std::exception>(m, name, errors->base.ptr());
    type.attr("__doc__") = doc;
    return type;
  };
  errors->invalid_argument =
      sub("InvalidArgumentError",
          "INVALID_ARGUMENT: the caller's input (a bad layout, NaN or Inf in an update, an "
          "encoding the server does not allow). Nothing was applied.");
  errors->failed_precondition =
      sub("FailedPreconditionError",
          "FAILED_PRECONDITION: the run cannot take this process (another layout, named in the "
          "message; shards that disagree; a full run).");
  errors->not_member =
      sub("NotMemberError", "NOT_FOUND: the server does not know this process (join first).");
  errors->unavailable =
      sub("UnavailableError", "UNAVAILABLE: no server answered within the retry budget.");
  errors->deadline = sub("DeadlineExceededError",
                         "DEADLINE_EXCEEDED: a server answered too slowly, past the retries.");
  errors->permission = sub("PermissionDeniedError",
                           "UNAUTHENTICATED or PERMISSION_DENIED: the token or certificate "
                           "was refused.");
  ps::errors = errors;

  py::class_<ps::Layout>(m, "Layout", "An ordered list of named float32 tensors.")
      .def(py::init(&ps::MakeLayout), py::arg("tensors"),
           "tensors: [(name, shape), ...] in the order the flat model holds them; "
           "InvalidArgumentError names the first problem.")
      .def_property_readonly("size", &ps::Layout::size, "Coordinates in all.")
      .def("fingerprint", &ps::Layout::Fingerprint,
           "A hash of the names and shapes: two layouts with equal fingerprints match.")
      .def("__repr__", &ps::Layout::Summary);

  py::class_<PyCodec>(m, "Codec",
                      "A wire codec, the same code the session and the server run: "
                      "encode(values) -> bytes, decode(payload, size) -> float32 array.")
      .def(py::init<std::string, uint32_t, uint32_t, std::string, uint64_t>(),
           py::arg("encoding") = "fp32", py::arg("bits") = 4, py::arg("bucket_size") = 512,
           py::arg("scaling") = "max_abs", py::arg("seed") = 0,
           "encoding: fp32, fp16, bf16, qsgd or sign. bits (2..8), scaling (max_abs or l2) and "
           "seed (of the stochastic rounding) are QSGD's; bucket_size is QSGD's and SIGN's.")
      .def("encode", &PyCodec::Encode, py::arg("values"),
           "Encodes a float32, C-contiguous array (InvalidArgumentError on NaN or Inf).")
      .def("decode", &PyCodec::Decode, py::arg("payload"), py::arg("size"),
           "Decodes `size` values; InvalidArgumentError if the payload is not exactly that.")
      .def("encoded_size", &PyCodec::EncodedSize, py::arg("size"),
           "Bytes of the encoding of `size` values.")
      .def("__repr__", &PyCodec::Name);

  py::class_<PySession>(m, "Session",
                        "One training process's part in a run (docs/client.md). Calls from "
                        "several threads are taken one at a time (a second waits for the first); "
                        "counters() may be read at any time. Network calls release the GIL.")
      .def(py::init<std::vector<std::string>, std::string, int, double, double, std::string,
                    std::string, std::string, std::string, std::string, std::string, uint32_t,
                    std::string>(),
           py::arg("servers"), py::arg("name") = "python", py::arg("rank") = -1,
           py::arg("rpc_timeout") = 30.0, py::arg("retry_budget") = 60.0, py::arg("token") = "",
           py::arg("tls_ca") = "", py::arg("tls_cert") = "", py::arg("tls_key") = "",
           py::arg("tls_server_name") = "", py::arg("update_encoding") = "", py::arg("bits") = 0,
           py::arg("bits_policy") = "",
           "servers: one address per shard, in shard order. rank: -1 = the server picks. "
           "Timeouts in seconds. TLS: tls_ca turns it on; tls_cert and tls_key for mutual TLS. "
           "update_encoding, bits, bits_policy: this process's choice within what the server "
           "allows ('' and 0 = the server's). Sends nothing until a call needs the server.")
      .def("server_status", &PySession::ServerStatus,
           "Shard 0's Status as a dict (the run's config, members, counters), before or after "
           "joining.")
      .def("join", &PySession::Join, py::arg("layout"), py::arg("initial"),
           "Joins every shard. A server without a model takes `initial` (float32, layout.size "
           "values; may be empty if the server has a model). Returns worker_id, rank, version, "
           "num_workers, local_steps, sync, gradient, learning_rate and the whole config.")
      .def("model", &PySession::Model, "A copy of the global model as last pulled (flat).")
      .def_property_readonly("version", &PySession::version,
                             "Version of the model in model() (the oldest over shards).")
      .def_property_readonly("size", &PySession::size, "Coordinates of the model.")
      .def("sync", &PySession::Sync, py::arg("params"), py::arg("sample_count") = 1,
           py::arg("train_loss") = 0.0, py::arg("learning_rate") = 0.0, py::arg("round") = 0,
           py::arg("total_rounds") = 0,
           "One Local SGD synchronisation: pushes params - model() compressed as the server "
           "asks, and writes the next global model into params (in place). Returns version, "
           "stale_refusals, repushes, rejoined and bits. A stale refusal is not an exception: "
           "the update is dropped and params is the current model.")
      .def("push", &PySession::Push, py::arg("update"), py::arg("sample_count") = 1,
           py::arg("train_loss") = 0.0, py::arg("learning_rate") = 0.0, py::arg("round") = 0,
           py::arg("total_rounds") = 0,
           "Pushes an update of the run's kind (a model delta or a gradient), then pulls the "
           "next global model into model(). Returns what sync returns.")
      .def("refresh", &PySession::Refresh, py::arg("wait") = 0.0,
           "Pulls the newest model without pushing, waiting up to `wait` seconds for one newer "
           "than version. Returns the version.")
      .def("report", &PySession::Report, py::arg("version"), py::arg("test_loss"),
           py::arg("test_accuracy"), "Sends a test-set evaluation to every shard.")
      .def("leave", &PySession::Leave, "Leaves every shard; the session is done afterwards.")
      .def("counters", &PySession::Counters,
           "Totals since the session was made: bytes_sent, bytes_received, raw_bytes_sent, "
           "raw_bytes_received (fp32 equivalents), upload_bytes_sent (of bytes_sent, the "
           "initial model's upload), updates, stale_refusals, stale_repushes, rejoins, "
           "mean_update_bits.");
}
