#include "server/byte_budget.h"

#include <algorithm>
#include <vector>

namespace ps {

bool ByteBudget::Acquire(uint64_t bytes, Waiter* waiter) {
  absl::MutexLock lock(&mu_);
  if (queue_.empty() && Fits(bytes)) {
    held_ += bytes;
    return true;
  }
  queue_.emplace_back(waiter, bytes);
  ++waited_total_;
  return false;
}

void ByteBudget::Release(uint64_t bytes) {
  std::vector<Waiter*> granted;
  {
    absl::MutexLock lock(&mu_);
    held_ -= std::min(bytes, held_);
    granted = GrantFromFront();
  }
  for (Waiter* w : granted) w->OnGranted();
}

bool ByteBudget::Cancel(Waiter* waiter) {
  std::vector<Waiter*> granted;
  {
    absl::MutexLock lock(&mu_);
    auto it = std::find_if(queue_.begin(), queue_.end(),
                           [waiter](const auto& entry) { return entry.first == waiter; });
    if (it == queue_.end()) return false;
    queue_.erase(it);
    granted = GrantFromFront();  // a large request at the head may have held smaller ones back
  }
  for (Waiter* w : granted) w->OnGranted();
  return true;
}

std::vector<ByteBudget::Waiter*> ByteBudget::GrantFromFront() {
  std::vector<Waiter*> granted;
  while (!queue_.empty() && Fits(queue_.front().second)) {
    held_ += queue_.front().second;
    granted.push_back(queue_.front().first);
    queue_.pop_front();
  }
  return granted;
}

uint64_t ByteBudget::held() const {
  absl::MutexLock lock(&mu_);
  return held_;
}

size_t ByteBudget::num_waiting() const {
  absl::MutexLock lock(&mu_);
  return queue_.size();
}

uint64_t ByteBudget::waited_total() const {
  absl::MutexLock lock(&mu_);
  return waited_total_;
}

}  // namespace ps
