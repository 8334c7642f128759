#include "server/membership.h"

#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace ps {

Membership::Membership(int max_workers, absl::Duration lease, Clock* clock, uint64_t first_id)
    : max_workers_(max_workers), lease_(lease), clock_(clock), next_id_(first_id) {}

absl::StatusOr<Member> Membership::Join(const std::string& name, int requested_rank,
                                        const std::string& identity,
                                        std::vector<Member>* replaced) {
  absl::MutexLock lock(&mu_);
  // A member with the same identity is the same worker restarted: its rank is free for this
  // Join, but it is removed only once the Join is sure to succeed.
  auto same_worker = [&identity](const Member& m) {
    return !identity.empty() && m.identity == identity;
  };
  std::set<int> taken;
  for (const auto& [id, m] : members_) {
    if (!same_worker(m)) taken.insert(m.rank);
  }
  int rank = requested_rank;
  if (rank >= max_workers_ || rank < -1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "requested rank %d is out of range: this server trains with %d workers (ranks 0..%d)", rank,
        max_workers_, max_workers_ - 1));
  }
  if (rank >= 0 && taken.count(rank)) {
    return absl::AlreadyExistsError(
        absl::StrFormat("rank %d is already held by a live worker", rank));
  }
  if (rank < 0) {
    for (rank = 0; rank < max_workers_ && taken.count(rank); ++rank) {
    }
    if (rank == max_workers_) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "all %d worker ranks are taken; start the server with a larger --num_workers",
          max_workers_));
    }
  }
  for (auto it = members_.begin(); it != members_.end();) {
    if (!same_worker(it->second)) {
      ++it;
      continue;
    }
    if (replaced != nullptr) replaced->push_back(it->second);
    it = members_.erase(it);
  }
  Member m;
  m.id = next_id_++;
  m.name = name;
  m.identity = identity;
  m.rank = rank;
  m.last_seen = clock_->Now();
  m.join_serial = ++join_serial_;
  members_[m.id] = m;
  if (static_cast<int>(members_.size()) == max_workers_) assembled_ = true;
  return m;
}

absl::Status NotAMemberError(uint64_t id) {
  return absl::NotFoundError(
      absl::StrCat("worker id ", id,
                   " is not a member (it never joined, left, or its lease expired); Join again"));
}

absl::Status Membership::Touch(uint64_t id) {
  absl::MutexLock lock(&mu_);
  auto it = members_.find(id);
  if (it == members_.end()) {
    return NotAMemberError(id);
  }
  it->second.last_seen = clock_->Now();
  return absl::OkStatus();
}

absl::Status Membership::BeginCall(uint64_t id) {
  absl::MutexLock lock(&mu_);
  auto it = members_.find(id);
  if (it == members_.end()) return NotAMemberError(id);
  ++it->second.calls_in_flight;
  it->second.last_seen = clock_->Now();
  return absl::OkStatus();
}

void Membership::EndCall(uint64_t id) {
  absl::MutexLock lock(&mu_);
  auto it = members_.find(id);
  if (it == members_.end()) return;
  --it->second.calls_in_flight;
  it->second.last_seen = clock_->Now();
}

absl::Status Membership::CheckIdentity(uint64_t id, const std::string& identity) const {
  if (identity.empty()) return absl::OkStatus();
  absl::MutexLock lock(&mu_);
  auto it = members_.find(id);
  if (it == members_.end()) {
    return NotAMemberError(id);
  }
  if (it->second.identity != identity) {
    return absl::PermissionDeniedError(absl::StrCat("worker id ", id,
                                                    " belongs to another identity; ", identity,
                                                    " may act only as its own members"));
  }
  return absl::OkStatus();
}

absl::Status Membership::Leave(uint64_t id) {
  absl::MutexLock lock(&mu_);
  if (members_.erase(id) == 0) {
    return absl::NotFoundError(absl::StrCat("worker id ", id, " is not a member"));
  }
  return absl::OkStatus();
}

std::vector<Member> Membership::ExpireLeases() {
  absl::MutexLock lock(&mu_);
  std::vector<Member> dropped;
  const absl::Time now = clock_->Now();
  for (auto it = members_.begin(); it != members_.end();) {
    if (it->second.calls_in_flight == 0 && now - it->second.last_seen > lease_) {
      dropped.push_back(it->second);
      it = members_.erase(it);
    } else {
      ++it;
    }
  }
  return dropped;
}

void Membership::CountAcceptedUpdate(uint64_t id) {
  absl::MutexLock lock(&mu_);
  auto it = members_.find(id);
  if (it != members_.end()) ++it->second.updates_accepted;
}

bool Membership::IsMember(uint64_t id) const {
  absl::MutexLock lock(&mu_);
  return members_.count(id) > 0;
}

std::vector<uint64_t> Membership::LiveIds() const {
  absl::MutexLock lock(&mu_);
  std::vector<uint64_t> ids;
  for (const auto& [id, m] : members_) ids.push_back(id);
  return ids;
}

std::vector<Member> Membership::Members() const {
  absl::MutexLock lock(&mu_);
  std::vector<Member> out;
  for (const auto& [id, m] : members_) out.push_back(m);
  return out;
}

size_t Membership::size() const {
  absl::MutexLock lock(&mu_);
  return members_.size();
}

uint64_t Membership::last_join_serial() const {
  absl::MutexLock lock(&mu_);
  return join_serial_;
}

bool Membership::assembled() const {
  absl::MutexLock lock(&mu_);
  return assembled_;
}

bool Membership::all_left() const {
  absl::MutexLock lock(&mu_);
  return assembled_ && members_.empty();
}

}  // namespace ps
