// Who the workers are: ids, data ranks and leases. Knows nothing of gRPC.
#ifndef PS_SERVER_MEMBERSHIP_H_
#define PS_SERVER_MEMBERSHIP_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"

namespace ps {

struct Member {
  uint64_t id = 0;
  std::string name;
  std::string identity;  // who it authenticated as ("" when authentication is off)
  int rank = 0;
  absl::Time last_seen;
  uint64_t updates_accepted = 0;
  // Order of joining (1, 2, ...): a sync round waits only for members that joined before it opened.
  uint64_t join_serial = 0;
  // Its pushes and pulls the server is receiving, waiting on or sending (see BeginCall).
  int calls_in_flight = 0;
};

// NOT_FOUND for a worker id that is not a member: the client should join again.
absl::Status NotAMemberError(uint64_t id);

// Thread-safe. Each member holds one of the ranks 0..max_workers-1 (its data shard). A member that
// is not heard from within the lease, and has no call in flight, is dropped by ExpireLeases.
class Membership {
 public:
  // Ids are handed out from `first_id` on. The server starts them at a random value so that ids of
  // an earlier run (before a restart) are never taken for members of this one.
  Membership(int max_workers, absl::Duration lease, Clock* clock, uint64_t first_id = 1);

  // RESOURCE_EXHAUSTED when every rank is taken; INVALID_ARGUMENT for a rank out of range;
  // ALREADY_EXISTS when the requested rank is held by a live member.
  // A non-empty `identity` replaces any member that joined with the same identity: that is the
  // same worker restarted, and waiting out its old lease would only stall the rounds. The replaced
  // members are appended to `replaced` when given. A refused Join changes nothing.
  absl::StatusOr<Member> Join(const std::string& name, int requested_rank,
                              const std::string& identity = "",
                              std::vector<Member>* replaced = nullptr);
  // OK when `identity` is "" (authentication off) or is the identity `id` joined as.
  // NOT_FOUND for an id that is not a member; PERMISSION_DENIED for someone else's id.
  absl::Status CheckIdentity(uint64_t id, const std::string& identity) const;
  // NOT_FOUND for an id that is not a member.
  absl::Status Touch(uint64_t id);
  // A push or pull of `id` has begun (NOT_FOUND for an id that is not a member). While it is in
  // flight the member is alive: its lease does not run out (a push can wait behind others for
  // room, a sync pull for the round, longer than a lease when the server is busy, and the client's
  // heartbeats may be late then too), and EndCall renews it. A client that dies has its calls
  // ended by the transport, or by the idle canceller.
  absl::Status BeginCall(uint64_t id);
  // Ends one BeginCall's call and renews the lease; nothing for an id that is no longer a member.
  void EndCall(uint64_t id);
  absl::Status Leave(uint64_t id);
  // Drops members whose lease ran out; returns them.
  std::vector<Member> ExpireLeases();
  void CountAcceptedUpdate(uint64_t id);

  bool IsMember(uint64_t id) const;
  std::vector<uint64_t> LiveIds() const;
  std::vector<Member> Members() const;
  size_t size() const;
  // True once max_workers members were present at the same time: training has started.
  bool assembled() const;
  // True once the membership was assembled and every member has left since.
  bool all_left() const;
  absl::Duration lease() const { return lease_; }
  int max_workers() const { return max_workers_; }
  // The serial of the latest join (0 before any).
  uint64_t last_join_serial() const;

 private:
  const int max_workers_;
  const absl::Duration lease_;
  Clock* const clock_;
  mutable absl::Mutex mu_;
  std::map<uint64_t, Member> members_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_);
  uint64_t join_serial_ ABSL_GUARDED_BY(mu_) = 0;
  bool assembled_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace ps

#endif  // PS_SERVER_MEMBERSHIP_H_
