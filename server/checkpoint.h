// Checkpoint files of one server shard: the model, its version and what a resume needs.
//
// Layout of `ckpt-<version, 20 digits>.ckpt` (all integers little-endian):
//   8 bytes   magic "PSCKPT\r\n"
//   u32       format version (1)
//   u32       header length H
//   H bytes   ps.v1.CheckpointHeader (proto/ps/v1/checkpoint.proto)
//   4*n bytes the shard's model, float32, n = shard_end - shard_begin
//   4*n bytes the broadcast model, only when header.has_broadcast
//   u32       CRC-32 (zlib) of every byte before it
// Written atomically: a temporary file `.ckpt-<version>.tmp` in the same directory, fsync, rename,
// fsync of the directory. A reader never sees a half-written file under the final name.
#ifndef PS_SERVER_CHECKPOINT_H_
#define PS_SERVER_CHECKPOINT_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "ps/v1/checkpoint.pb.h"

namespace ps {

struct Checkpoint {
  v1::CheckpointHeader header;
  std::vector<float> model;
  std::vector<float> broadcast;  // empty unless header.has_broadcast()
  // The outer optimizer's buffers, header.outer_buffers() of them, each of the model's size.
  std::vector<std::vector<float>> outer;
};

// What WriteCheckpoint writes, without copying it: the arrays may be a published model version
// (immutable) and a snapshot of the optimizer's buffers.
struct CheckpointView {
  const v1::CheckpointHeader& header;
  absl::Span<const float> model;
  absl::Span<const float> broadcast;  // empty unless header.has_broadcast()
  std::vector<absl::Span<const float>> outer;
};

// The file name of version `version` inside `dir`.
std::string CheckpointPath(const std::string& dir, uint64_t version);

// Writes `checkpoint` atomically as CheckpointPath(dir, header.version), creating `dir` if needed,
// then deletes all but the newest `keep` checkpoints and any leftover temporary files.
// INVALID_ARGUMENT if the sizes disagree with the header; INTERNAL (naming the file and errno) if
// a write, fsync or rename fails, in which case no earlier checkpoint was touched.
absl::Status WriteCheckpoint(const std::string& dir, const CheckpointView& checkpoint,
                             int keep = 2);
absl::Status WriteCheckpoint(const std::string& dir, const Checkpoint& checkpoint, int keep = 2);

// Reads and fully checks one file: magic, format version, lengths against the file size, CRC,
// header, sizes, finite values. DATA_LOSS naming the file and the first problem found; NOT_FOUND if
// it does not exist.
absl::StatusOr<Checkpoint> ReadCheckpoint(const std::string& path);

struct LoadedCheckpoint {
  std::string path;
  Checkpoint checkpoint;
  std::vector<std::string> skipped;  // one message per newer file that was corrupt, newest first
};

// The newest valid checkpoint in `dir`, trying older ones when a newer one is corrupt.
// nullopt when `dir` does not exist or holds no checkpoint file. DATA_LOSS listing every problem
// when there are checkpoint files but none is valid: the server then refuses to start rather than
// silently training from scratch.
absl::StatusOr<std::optional<LoadedCheckpoint>> LoadNewestCheckpoint(const std::string& dir);

// Versions of the checkpoint files in `dir` (by name, not checked), newest first.
std::vector<uint64_t> ListCheckpointVersions(const std::string& dir);

}  // namespace ps

#endif  // PS_SERVER_CHECKPOINT_H_
