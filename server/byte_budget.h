// A budget of bytes shared by calls that each need a large buffer (the payload of a push being
// received): a call that would go past it waits in line, without a thread, until earlier calls
// give their bytes back. Knows nothing of gRPC.
#ifndef PS_SERVER_BYTE_BUDGET_H_
#define PS_SERVER_BYTE_BUDGET_H_

#include <cstdint>
#include <deque>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace ps {

// Thread-safe. Grants go in arrival order, so a large request is not starved by small ones, and
// a request larger than the whole budget is granted when nothing else is held (it must be able
// to run at all). A queued waiter gets exactly one OnGranted call, from the thread of the Release
// that made room and without the budget's lock held, unless Cancel removed it first.
class ByteBudget {
 public:
  class Waiter {
   public:
    virtual ~Waiter() = default;
    virtual void OnGranted() = 0;
  };

  explicit ByteBudget(uint64_t limit) : limit_(limit) {}

  // Takes `bytes` now and returns true, or queues `waiter` (false: OnGranted comes later).
  bool Acquire(uint64_t bytes, Waiter* waiter);
  // Gives back what an Acquire took (at once or through OnGranted).
  void Release(uint64_t bytes);
  // Removes a queued waiter; true if it was queued (so no OnGranted will come).
  bool Cancel(Waiter* waiter);

  uint64_t limit() const { return limit_; }
  uint64_t held() const;
  size_t num_waiting() const;
  uint64_t waited_total() const;  // acquisitions that had to queue

 private:
  bool Fits(uint64_t bytes) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return held_ == 0 || held_ + bytes <= limit_;
  }

  // Takes the queued requests that now fit, in order; the caller wakes them without the lock.
  std::vector<Waiter*> GrantFromFront() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const uint64_t limit_;
  mutable absl::Mutex mu_;
  uint64_t held_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t waited_total_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<std::pair<Waiter*, uint64_t>> queue_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ps

#endif  // PS_SERVER_BYTE_BUDGET_H_
