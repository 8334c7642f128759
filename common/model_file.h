// Model values in files: numpy's .npy (one array) and .npz (a zip of named .npy arrays, as
// numpy.savez writes it), and raw little-endian float32. Only float32, C order, is read or
// written: that is what the server stores. Used for --init_model and --export_model
// (docs/layouts.md).
#ifndef PS_COMMON_MODEL_FILE_H_
#define PS_COMMON_MODEL_FILE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/layout.h"

namespace ps {

struct NamedArray {
  std::string name;
  std::vector<uint64_t> shape;
  std::vector<float> values;
};

// The .npy bytes of one float32 array (format version 1.0, or 2.0 for very long headers).
std::string EncodeNpy(absl::Span<const uint64_t> shape, absl::Span<const float> values);
// An .npy file's array. INVALID_ARGUMENT (naming `what`) for anything but little-endian float32
// in C order, or a size that does not match the shape.
absl::StatusOr<NamedArray> DecodeNpy(absl::string_view bytes, absl::string_view what);

// Every array of an .npz file, in the archive's order, named without the ".npy" suffix.
absl::StatusOr<std::vector<NamedArray>> ReadNpz(const std::string& path);
// Writes `arrays` as an uncompressed .npz (numpy.load reads it), through a temporary file that is
// renamed into place, so that `path` is never half-written.
struct ArrayView {
  std::string name;
  std::vector<uint64_t> shape;
  absl::Span<const float> values;
};
absl::Status WriteNpz(const std::string& path, const std::vector<ArrayView>& arrays);

// The initial model in `path`, by its suffix:
//  .npz  one array per tensor. With `layout`, every tensor must be there by name with its shape,
//        and nothing else; without, the arrays in the archive's order are the layout.
//  .npy  one array: with `layout`, of its size; without, one tensor named "params" of its shape.
//  else  raw float32 of exactly layout->size() values (a layout is required).
// Every value must be finite. Errors name the file and what is wrong.
absl::StatusOr<ModelValues> ReadModelFile(const std::string& path, const Layout* layout);

// The model as an .npz with one array per tensor of its layout.
absl::Status WriteModelNpz(const std::string& path, const Layout& layout,
                           absl::Span<const float> values);

}  // namespace ps

#endif  // PS_COMMON_MODEL_FILE_H_
