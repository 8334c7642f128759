// A fixed-size pool of threads that runs closures in FIFO order.
#ifndef PS_COMMON_THREAD_POOL_H_
#define PS_COMMON_THREAD_POOL_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/synchronization/mutex.h"

namespace ps {

// Thread-safe. The destructor runs every closure already scheduled, then joins the threads.
class ThreadPool {
 public:
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  void Schedule(std::function<void()> fn);

  // Runs fn(begin, end) over [0, n) in consecutive ranges of `grain` (the last one shorter), on
  // the caller's thread and the pool's, and returns when all have run. The caller takes ranges
  // too, so this finishes even when every pool thread is busy; a pool whose closures wait for
  // each other must not be used.
  void ParallelFor(uint64_t n, uint64_t grain, absl::FunctionRef<void(uint64_t, uint64_t)> fn);
  int size() const { return static_cast<int>(threads_.size()); }

 private:
  void WorkLoop();

  absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace ps

#endif  // PS_COMMON_THREAD_POOL_H_
