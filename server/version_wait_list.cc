#include "server/version_wait_list.h"

namespace ps {

VersionWaitList::VersionWaitList(uint64_t initial_version) : version_(initial_version) {
  timer_ = std::thread([this] { TimerLoop(); });
}

VersionWaitList::~VersionWaitList() {
  Shutdown();
  timer_.join();
}

bool VersionWaitList::WaitForNewer(uint64_t have_version, absl::Time deadline, Waiter* waiter) {
  absl::MutexLock lock(&mu_);
  if (shutdown_ || version_ > have_version) return false;
  waiters_[waiter] = Entry{have_version, deadline};
  ++generation_;
  return true;
}

bool VersionWaitList::Cancel(Waiter* waiter) {
  absl::MutexLock lock(&mu_);
  return waiters_.erase(waiter) > 0;
}

void VersionWaitList::Publish(uint64_t version) {
  std::vector<Waiter*> ready;
  {
    absl::MutexLock lock(&mu_);
    if (version > version_) version_ = version;
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      if (it->second.have_version < version_) {
        ready.push_back(it->first);
        it = waiters_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (Waiter* w : ready) w->OnReady(/*timed_out=*/false);
}

void VersionWaitList::Shutdown() {
  std::vector<Waiter*> ready;
  {
    absl::MutexLock lock(&mu_);
    shutdown_ = true;
    for (auto& [w, e] : waiters_) ready.push_back(w);
    waiters_.clear();
  }
  for (Waiter* w : ready) w->OnReady(/*timed_out=*/true);
}

size_t VersionWaitList::num_waiting() const {
  absl::MutexLock lock(&mu_);
  return waiters_.size();
}

void VersionWaitList::TimerLoop() {
  while (true) {
    std::vector<Waiter*> expired;
    {
      absl::MutexLock lock(&mu_);
      absl::Time earliest = absl::InfiniteFuture();
      for (const auto& [w, e] : waiters_) earliest = std::min(earliest, e.deadline);
      // Sleeps until the earliest deadline, or until a new waiter (maybe with an earlier deadline)
      // arrives, or shutdown.
      const uint64_t seen = generation_;
      auto changed = [this, seen]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return shutdown_ || generation_ != seen;
      };
      mu_.AwaitWithDeadline(absl::Condition(&changed), earliest);
      if (shutdown_) return;
      const absl::Time now = absl::Now();
      for (auto it = waiters_.begin(); it != waiters_.end();) {
        if (it->second.deadline <= now) {
          expired.push_back(it->first);
          it = waiters_.erase(it);
        } else {
          ++it;
        }
      }
    }
    for (Waiter* w : expired) w->OnReady(/*timed_out=*/true);
  }
}

}  // namespace ps
