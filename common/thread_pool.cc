#include "common/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <memory>
#include <utility>

namespace ps {

ThreadPool::ThreadPool(int num_threads) {
  if (num_threads < 1) num_threads = 1;
  threads_.reserve(num_threads);
  for (int i = 0; i < num_threads; ++i) threads_.emplace_back([this] { WorkLoop(); });
}

ThreadPool::~ThreadPool() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread& t : threads_) t.join();
}

void ThreadPool::Schedule(std::function<void()> fn) {
  absl::MutexLock lock(&mu_);
  queue_.push_back(std::move(fn));
}

void ThreadPool::ParallelFor(uint64_t n, uint64_t grain,
                             absl::FunctionRef<void(uint64_t, uint64_t)> fn) {
  grain = std::max<uint64_t>(grain, 1);
  const uint64_t parts = (n + grain - 1) / grain;
  if (parts <= 1) {
    if (n > 0) fn(0, n);
    return;
  }
  // Shared with the helpers: one that starts after every range is taken touches only this.
  struct State {
    std::atomic<uint64_t> next{0};
    absl::Mutex mu;
    uint64_t done ABSL_GUARDED_BY(mu) = 0;
  };
  auto state = std::make_shared<State>();
  auto run = [state, n, grain, parts, &fn] {
    uint64_t ran = 0;
    for (uint64_t p; (p = state->next.fetch_add(1)) < parts; ++ran) {
      fn(p * grain, std::min(n, (p + 1) * grain));
    }
    if (ran > 0) {
      absl::MutexLock lock(&state->mu);
      state->done += ran;
    }
  };
  const uint64_t helpers = std::min<uint64_t>(parts - 1, threads_.size());
  for (uint64_t i = 0; i < helpers; ++i) Schedule(run);
  run();
  absl::MutexLock lock(&state->mu);
  auto all_done = [&state, parts]()
                      ABSL_EXCLUSIVE_LOCKS_REQUIRED(state->mu) { return state->done == parts; };
  state->mu.Await(absl::Condition(&all_done));
}

void ThreadPool::WorkLoop() {
  while (true) {
    std::function<void()> fn;
    {
      absl::MutexLock lock(&mu_);
      auto has_work = [this]()
                          ABSL_SHARED_LOCKS_REQUIRED(mu_) { return !queue_.empty() || stopping_; };
      mu_.Await(absl::Condition(&has_work));
      if (queue_.empty()) return;  // stopping and drained
      fn = std::move(queue_.front());
      queue_.pop_front();
    }
    fn();
  }
}

}  // namespace ps
