#include "common/model_file.h"

#include <zip.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/status_macros.h"

namespace ps {
namespace {

constexpr absl::string_view kNpyMagic("\x93NUMPY", 6);

// Reads up to n bytes into `out`; returns how many (0 at the end), or -1 on an error.
using ReadFn = std::function<int64_t(void* out, uint64_t n)>;

absl::Status ReadExactly(const ReadFn& read, void* out, uint64_t n, absl::string_view what) {
  auto* p = static_cast<char*>(out);
  while (n > 0) {
    const int64_t got = read(p, n);
    if (got <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": the file ends early (truncated?)"));
    }
    p += got;
    n -= static_cast<uint64_t>(got);
  }
  return absl::OkStatus();
}

// The value of `key` in the header's Python dict literal, up to the next top-level comma.
absl::StatusOr<absl::string_view> HeaderField(absl::string_view header, absl::string_view key,
                                              absl::string_view what) {
  const size_t at = header.find(absl::StrCat("'", key, "'"));
  if (at == absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": the .npy header has no '", key, "'"));
  }
  absl::string_view rest = header.substr(at + key.size() + 2);
  rest = absl::StripLeadingAsciiWhitespace(rest);
  if (!absl::ConsumePrefix(&rest, ":")) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": malformed .npy header"));
  }
  rest = absl::StripLeadingAsciiWhitespace(rest);
  const size_t end = rest.front() == '(' ? rest.find(')') + 1 : rest.find_first_of(",}");
  if (end == absl::string_view::npos || end == 0) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": malformed .npy header"));
  }
  return absl::StripAsciiWhitespace(rest.substr(0, end));
}

absl::StatusOr<std::vector<uint64_t>> ParseShape(absl::string_view text, absl::string_view what) {
  if (!absl::ConsumePrefix(&text, "(") || !absl::ConsumeSuffix(&text, ")")) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": malformed shape in the .npy header"));
  }
  std::vector<uint64_t> shape;
  for (absl::string_view dim : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    uint64_t n = 0;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(dim), &n)) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": shape (", text, ") is not integers"));
    }
    shape.push_back(n);
  }
  return shape;
}

absl::StatusOr<NamedArray> ReadNpy(const ReadFn& read, absl::string_view what) {
  char prelude[10];
  PS_RETURN_IF_ERROR(ReadExactly(read, prelude, sizeof prelude, what));
  if (absl::string_view(prelude, 6) != kNpyMagic) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": not an .npy array (no \\x93NUMPY)"));
  }
  const int major = static_cast<unsigned char>(prelude[6]);
  uint64_t header_bytes = 0;
  std::string header;
  if (major == 1) {
    header_bytes = static_cast<unsigned char>(prelude[8]) |
                   static_cast<uint64_t>(static_cast<unsigned char>(prelude[9])) << 8;
  } else if (major == 2 || major == 3) {
    char more[2];
    PS_RETURN_IF_ERROR(ReadExactly(read, more, 2, what));
    const unsigned char b[4] = {
        static_cast<unsigned char>(prelude[8]), static_cast<unsigned char>(prelude[9]),
        static_cast<unsigned char>(more[0]), static_cast<unsigned char>(more[1])};
    header_bytes = b[0] | b[1] << 8 | b[2] << 16 | static_cast<uint64_t>(b[3]) << 24;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(what, ": .npy format version ", major,
                                                   " is not one this build reads (1 to 3)"));
  }
  if (header_bytes > (1 << 20)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": .npy header of ", header_bytes, " bytes"));
  }
  header.resize(header_bytes);
  PS_RETURN_IF_ERROR(ReadExactly(read, header.data(), header_bytes, what));
  PS_ASSIGN_OR_RETURN(absl::string_view descr, HeaderField(header, "descr", what));
  if (descr != "'<f4'") {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": dtype ", descr,
                     "; only little-endian float32 ('<f4') is read: save the array "
                     "as numpy.float32 (array.astype(numpy.float32))"));
  }
  PS_ASSIGN_OR_RETURN(absl::string_view fortran, HeaderField(header, "fortran_order", what));
  if (fortran != "False") {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": stored in Fortran order; save numpy.ascontiguousarray(array) instead"));
  }
  PS_ASSIGN_OR_RETURN(absl::string_view shape_text, HeaderField(header, "shape", what));
  NamedArray array;
  PS_ASSIGN_OR_RETURN(array.shape, ParseShape(shape_text, what));
  uint64_t n = 1;
  for (uint64_t dim : array.shape) {
    if (dim != 0 && n > Layout::kMaxSize / dim) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": the array is too large"));
    }
    n *= dim;
  }
  array.values.resize(n);
  PS_RETURN_IF_ERROR(ReadExactly(read, array.values.data(), n * sizeof(float), what));
  char extra;
  if (read(&extra, 1) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": more bytes than a float32 array of shape ", shape_text, " holds"));
  }
  return array;
}

std::string NpyHeader(absl::Span<const uint64_t> shape) {
  std::string dims = absl::StrJoin(shape, ", ");
  if (shape.size() == 1) dims += ",";
  std::string dict =
      absl::StrCat("{'descr': '<f4', 'fortran_order': False, 'shape': (", dims, "), }");
  // Padded with spaces and a newline so that the data starts at a multiple of 64 bytes.
  const bool v2 = dict.size() + 1 + 10 > 65535;
  const size_t prelude = v2 ? 12 : 10;
  const size_t total = (prelude + dict.size() + 1 + 63) / 64 * 64;
  dict.append(total - prelude - dict.size() - 1, ' ');
  dict.push_back('\n');
  std::string out(kNpyMagic);
  out.push_back(static_cast<char>(v2 ? 2 : 1));
  out.push_back(0);
  const uint64_t len = dict.size();
  for (size_t i = 0; i < (v2 ? 4u : 2u); ++i)
    out.push_back(static_cast<char>((len >> (8 * i)) & 0xff));
  return out + dict;
}

absl::Status CheckFinite(const std::vector<float>& values, absl::string_view what) {
  for (size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i])) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: value %d is not finite (%g)", what, i, values[i]));
    }
  }
  return absl::OkStatus();
}

absl::Status ZipError(zip_t* archive, absl::string_view what, absl::string_view path) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", what, ": ", zip_strerror(archive)));
}

// The arrays of an .npz, concatenated in the layout's order.
absl::StatusOr<ModelValues> FromNpz(const std::string& path, const Layout* layout) {
  PS_ASSIGN_OR_RETURN(std::vector<NamedArray> arrays, ReadNpz(path));
  ModelValues out;
  if (layout == nullptr) {
    std::vector<TensorShape> tensors;
    for (const NamedArray& a : arrays) tensors.push_back(TensorShape{a.name, a.shape});
    absl::StatusOr<Layout> made = Layout::Create(std::move(tensors));
    if (!made.ok())
      return absl::InvalidArgumentError(absl::StrCat(path, ": ", made.status().message()));
    out.layout = *std::move(made);
  } else {
    out.layout = *layout;
  }
  out.values.reserve(out.layout.size());
  for (const TensorShape& t : out.layout.tensors()) {
    auto it = std::find_if(arrays.begin(), arrays.end(),
                           [&](const NamedArray& a) { return a.name == t.name; });
    if (it == arrays.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, " has no array '", t.name, "' (the layout's ", t.ToString(), ")"));
    }
    if (it->shape != t.shape) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": array '", t.name, "' has shape [",
                                                     absl::StrJoin(it->shape, ", "),
                                                     "], the layout ", t.ToString()));
    }
    out.values.insert(out.values.end(), it->values.begin(), it->values.end());
  }
  if (arrays.size() != out.layout.tensors().size()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s has %d arrays, the layout %d tensors: remove the ones the layout does not name", path,
        arrays.size(), out.layout.tensors().size()));
  }
  return out;
}

absl::StatusOr<NamedArray> ReadNpyFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return absl::NotFoundError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  return ReadNpy(
      [&in](void* out, uint64_t n) -> int64_t {
        in.read(static_cast<char*>(out), static_cast<std::streamsize>(n));
        return in.bad() ? -1 : in.gcount();
      },
      path);
}

absl::StatusOr<std::vector<float>> ReadRawFloats(const std::string& path, uint64_t size) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in)
    return absl::NotFoundError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  const uint64_t bytes = static_cast<uint64_t>(in.tellg());
  if (bytes != size * sizeof(float)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s has %d bytes; a model of %d float32 values needs exactly %d", path,
                        bytes, size, size * sizeof(float)));
  }
  std::vector<float> values(size);
  in.seekg(0);
  in.read(reinterpret_cast<char*>(values.data()), static_cast<std::streamsize>(bytes));
  if (!in) return absl::DataLossError(absl::StrCat("error reading ", path));
  return values;
}

}  // namespace

std::string EncodeNpy(absl::Span<const uint64_t> shape, absl::Span<const float> values) {
  std::string out = NpyHeader(shape);
  out.append(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
  return out;
}

absl::StatusOr<NamedArray> DecodeNpy(absl::string_view bytes, absl::string_view what) {
  return ReadNpy(
      [&bytes](void* out, uint64_t n) -> int64_t {
        const uint64_t k = std::min<uint64_t>(n, bytes.size());
        std::memcpy(out, bytes.data(), k);
        bytes.remove_prefix(k);
        return static_cast<int64_t>(k);
      },
      what);
}

absl::StatusOr<std::vector<NamedArray>> ReadNpz(const std::string& path) {
  int error = 0;
  zip_t* archive = zip_open(path.c_str(), ZIP_RDONLY, &error);
  if (archive == nullptr) {
    zip_error_t e;
    zip_error_init_with_code(&e, error);
    absl::Status status =
        error == ZIP_ER_NOENT || error == ZIP_ER_OPEN
            ? absl::NotFoundError(absl::StrCat("cannot open ", path, ": ", zip_error_strerror(&e)))
            : absl::InvalidArgumentError(
                  absl::StrCat(path, " is not an .npz (zip) file: ", zip_error_strerror(&e)));
    zip_error_fini(&e);
    return status;
  }
  std::vector<NamedArray> arrays;
  absl::Status status;
  const zip_int64_t entries = zip_get_num_entries(archive, 0);
  for (zip_int64_t i = 0; i < entries && status.ok(); ++i) {
    const char* entry = zip_get_name(archive, i, 0);
    absl::string_view member = entry == nullptr ? "" : entry;
    absl::ConsumeSuffix(&member, ".npy");  // numpy names every member NAME.npy
    std::string name(member);
    zip_file_t* file = zip_fopen_index(archive, i, 0);
    if (file == nullptr) {
      status = ZipError(archive, absl::StrCat("cannot read member ", i), path);
      break;
    }
    const std::string what = absl::StrCat(path, " member ", entry == nullptr ? "?" : entry);
    absl::StatusOr<NamedArray> array =
        ReadNpy([file](void* out, uint64_t n) -> int64_t { return zip_fread(file, out, n); }, what);
    zip_fclose(file);
    if (!array.ok()) {
      status = array.status();
      break;
    }
    array->name = std::move(name);
    arrays.push_back(*std::move(array));
  }
  zip_discard(archive);
  if (!status.ok()) return status;
  return arrays;
}

absl::Status WriteNpz(const std::string& path, const std::vector<ArrayView>& arrays) {
  const std::string tmp = path + ".tmp";
  int error = 0;
  zip_t* archive = zip_open(tmp.c_str(), ZIP_CREATE | ZIP_TRUNCATE, &error);
  if (archive == nullptr) return absl::PermissionDeniedError(absl::StrCat("cannot create ", tmp));
  auto fail = [&](absl::string_view what) {
    absl::Status status = ZipError(archive, what, tmp);
    zip_discard(archive);
    std::remove(tmp.c_str());
    return status;
  };
  // libzip reads the members at zip_close, so they live until then: one copy of the model.
  std::vector<std::string> members;
  members.reserve(arrays.size());
  for (const ArrayView& a : arrays) {
    members.push_back(EncodeNpy(a.shape, a.values));
    zip_source_t* source =
        zip_source_buffer(archive, members.back().data(), members.back().size(), 0);
    if (source == nullptr) return fail("out of memory");
    const zip_int64_t index = zip_file_add(archive, (a.name + ".npy").c_str(), source,
                                           ZIP_FL_OVERWRITE | ZIP_FL_ENC_UTF_8);
    if (index < 0) {
      zip_source_free(source);
      return fail(absl::StrCat("cannot add ", a.name));
    }
    zip_set_file_compression(archive, index, ZIP_CM_STORE, 0);  // as numpy.savez
  }
  if (zip_close(archive) != 0) return fail("cannot write");
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot rename ", tmp, " to ", path, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelValues> ReadModelFile(const std::string& path, const Layout* layout) {
  ModelValues out;
  if (absl::EndsWith(path, ".npz")) {
    PS_ASSIGN_OR_RETURN(out, FromNpz(path, layout));
  } else if (absl::EndsWith(path, ".npy")) {
    PS_ASSIGN_OR_RETURN(NamedArray array, ReadNpyFile(path));
    if (layout == nullptr) {
      absl::StatusOr<Layout> made = Layout::Create({TensorShape{"params", array.shape}});
      if (!made.ok())
        return absl::InvalidArgumentError(absl::StrCat(path, ": ", made.status().message()));
      out.layout = *std::move(made);
    } else if (array.values.size() != layout->size()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s holds %d values; the layout (%s) has %d", path, array.values.size(),
                          layout->Summary(), layout->size()));
    } else {
      out.layout = *layout;
    }
    out.values = std::move(array.values);
  } else {
    if (layout == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          path,
          " is raw float32 (it is not .npy or .npz): give its size with --model_size or "
          "--layout"));
    }
    out.layout = *layout;
    PS_ASSIGN_OR_RETURN(out.values, ReadRawFloats(path, layout->size()));
  }
  PS_RETURN_IF_ERROR(CheckFinite(out.values, path));
  return out;
}

absl::Status WriteModelNpz(const std::string& path, const Layout& layout,
                           absl::Span<const float> values) {
  if (values.size() != layout.size()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%d values for a layout of %d coordinates", values.size(), layout.size()));
  }
  std::vector<ArrayView> arrays;
  for (size_t i = 0; i < layout.tensors().size(); ++i) {
    const TensorShape& t = layout.tensors()[i];
    arrays.push_back(ArrayView{t.name, t.shape, values.subspan(layout.offset(i), t.size())});
  }
  return WriteNpz(path, arrays);
}

}  // namespace ps
