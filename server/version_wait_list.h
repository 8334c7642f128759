// Long-polling support: parks callers until a version newer than theirs is published or their
// deadline passes, without a thread per caller and without polling. Knows nothing of gRPC.
#ifndef PS_SERVER_VERSION_WAIT_LIST_H_
#define PS_SERVER_VERSION_WAIT_LIST_H_

#include <algorithm>
#include <cstdint>
#include <map>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace ps {

// Thread-safe. A registered waiter gets exactly one OnReady call, from the publishing thread or
// the list's timer thread, unless Cancel removed it first. OnReady runs without the list's lock
// held.
class VersionWaitList {
 public:
  class Waiter {
   public:
    virtual ~Waiter() = default;
    // timed_out: the deadline passed (or the list shut down) before a newer version appeared.
    virtual void OnReady(bool timed_out) = 0;
  };

  explicit VersionWaitList(uint64_t initial_version);
  ~VersionWaitList();  // shuts down

  // Registers `waiter` unless a version newer than `have_version` is already published; returns
  // whether it registered (false: go ahead now, no OnReady will come).
  bool WaitForNewer(uint64_t have_version, absl::Time deadline, Waiter* waiter);
  // Removes `waiter`; true if it was registered (so no OnReady will come).
  bool Cancel(Waiter* waiter);
  // Wakes every waiter whose have_version is below `version`.
  void Publish(uint64_t version);
  // Wakes every waiter as timed out and refuses new ones (they go ahead at once).
  void Shutdown();

  size_t num_waiting() const;

 private:
  struct Entry {
    uint64_t have_version;
    absl::Time deadline;
  };
  void TimerLoop();

  mutable absl::Mutex mu_;
  uint64_t version_ ABSL_GUARDED_BY(mu_);
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  std::map<Waiter*, Entry> waiters_ ABSL_GUARDED_BY(mu_);
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;  // grows with every registration
  std::thread timer_;
};

}  // namespace ps

#endif  // PS_SERVER_VERSION_WAIT_LIST_H_
