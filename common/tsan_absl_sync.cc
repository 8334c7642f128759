// ThreadSanitizer builds only (PS_TSAN): makes Debian's uninstrumented absl::Mutex, CondVar and
// Notification visible to TSan.
//
// Debian's Abseil is built without TSan, so its locks synchronise in code TSan never sees: every
// access under an absl::Mutex would look like a race. The executable defines the same public
// entry points as libabsl_synchronization (it is linked with -rdynamic, so the library's own
// calls come here too); each one calls the library's function (found with dlsym(RTLD_NEXT)) and
// tells TSan what it did: a release of the mutex before anything that may unlock it, an acquire
// after anything that returns with it held. The lock itself stays Abseil's.
//
// One blind spot remains: a Condition is evaluated inside the library, sometimes by the thread
// that unlocks, so reads in a Condition's function are suppressed (tests/tsan.supp).
#include <dlfcn.h>
#include <sanitizer/tsan_interface.h>

#include <cstdio>
#include <cstdlib>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

namespace {

template <typename F>
F Real(const char* mangled) {
  void* f = dlsym(RTLD_NEXT, mangled);
  if (f == nullptr) {
    std::fprintf(stderr, "tsan_absl_sync: %s not found\n", mangled);
    std::abort();
  }
  return reinterpret_cast<F>(f);
}

#define PS_REAL(type, mangled) static const auto real = Real<type>(mangled)

void Acquired(const void* mu) { __tsan_acquire(const_cast<void*>(mu)); }
void Releasing(const void* mu) { __tsan_release(const_cast<void*>(mu)); }

}  // namespace

namespace absl {
ABSL_NAMESPACE_BEGIN

void Mutex::Lock() {
  PS_REAL(void (*)(Mutex*), "_ZN4absl7debian35Mutex4LockEv");
  real(this);
  Acquired(this);
}

void Mutex::ReaderLock() {
  PS_REAL(void (*)(Mutex*), "_ZN4absl7debian35Mutex10ReaderLockEv");
  real(this);
  Acquired(this);
}

bool Mutex::TryLock() {
  PS_REAL(bool (*)(Mutex*), "_ZN4absl7debian35Mutex7TryLockEv");
  const bool locked = real(this);
  if (locked) Acquired(this);
  return locked;
}

bool Mutex::ReaderTryLock() {
  PS_REAL(bool (*)(Mutex*), "_ZN4absl7debian35Mutex13ReaderTryLockEv");
  const bool locked = real(this);
  if (locked) Acquired(this);
  return locked;
}

void Mutex::Unlock() {
  PS_REAL(void (*)(Mutex*), "_ZN4absl7debian35Mutex6UnlockEv");
  Releasing(this);
  real(this);
}

void Mutex::ReaderUnlock() {
  PS_REAL(void (*)(Mutex*), "_ZN4absl7debian35Mutex12ReaderUnlockEv");
  Releasing(this);
  real(this);
}

void Mutex::LockWhen(const Condition& cond) {
  PS_REAL(void (*)(Mutex*, const Condition&), "_ZN4absl7debian35Mutex8LockWhenERKNS0_9ConditionE");
  real(this, cond);
  Acquired(this);
}

void Mutex::ReaderLockWhen(const Condition& cond) {
  PS_REAL(void (*)(Mutex*, const Condition&),
          "_ZN4absl7debian35Mutex14ReaderLockWhenERKNS0_9ConditionE");
  real(this, cond);
  Acquired(this);
}

bool Mutex::LockWhenWithTimeout(const Condition& cond, Duration timeout) {
  PS_REAL(bool (*)(Mutex*, const Condition&, Duration),
          "_ZN4absl7debian35Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  const bool met = real(this, cond, timeout);
  Acquired(this);  // held either way
  return met;
}

bool Mutex::ReaderLockWhenWithTimeout(const Condition& cond, Duration timeout) {
  PS_REAL(bool (*)(Mutex*, const Condition&, Duration),
          "_ZN4absl7debian35Mutex25ReaderLockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  const bool met = real(this, cond, timeout);
  Acquired(this);
  return met;
}

void Mutex::Await(const Condition& cond) {
  PS_REAL(void (*)(Mutex*, const Condition&), "_ZN4absl7debian35Mutex5AwaitERKNS0_9ConditionE");
  Releasing(this);  // may unlock and lock again inside
  real(this, cond);
  Acquired(this);
}

bool Mutex::AwaitWithTimeout(const Condition& cond, Duration timeout) {
  PS_REAL(bool (*)(Mutex*, const Condition&, Duration),
          "_ZN4absl7debian35Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  Releasing(this);
  const bool met = real(this, cond, timeout);
  Acquired(this);
  return met;
}

bool Mutex::AwaitWithDeadline(const Condition& cond, Time deadline) {
  PS_REAL(bool (*)(Mutex*, const Condition&, Time),
          "_ZN4absl7debian35Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  Releasing(this);
  const bool met = real(this, cond, deadline);
  Acquired(this);
  return met;
}

void CondVar::Wait(Mutex* mu) {
  PS_REAL(void (*)(CondVar*, Mutex*), "_ZN4absl7debian37CondVar4WaitEPNS0_5MutexE");
  Releasing(mu);
  real(this, mu);
  Acquired(mu);
}

bool CondVar::WaitWithTimeout(Mutex* mu, Duration timeout) {
  PS_REAL(bool (*)(CondVar*, Mutex*, Duration),
          "_ZN4absl7debian37CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE");
  Releasing(mu);
  const bool timed_out = real(this, mu, timeout);
  Acquired(mu);
  return timed_out;
}

bool CondVar::WaitWithDeadline(Mutex* mu, Time deadline) {
  PS_REAL(bool (*)(CondVar*, Mutex*, Time),
          "_ZN4absl7debian37CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE");
  Releasing(mu);
  const bool timed_out = real(this, mu, deadline);
  Acquired(mu);
  return timed_out;
}

void Notification::Notify() {
  PS_REAL(void (*)(Notification*), "_ZN4absl7debian312Notification6NotifyEv");
  Releasing(this);
  real(this);
}

void Notification::WaitForNotification() const {
  PS_REAL(void (*)(const Notification*), "_ZNK4absl7debian312Notification19WaitForNotificationEv");
  real(this);
  Acquired(this);
}

bool Notification::WaitForNotificationWithTimeout(Duration timeout) const {
  PS_REAL(bool (*)(const Notification*, Duration),
          "_ZNK4absl7debian312Notification30WaitForNotificationWithTimeoutENS0_8DurationE");
  const bool notified = real(this, timeout);
  if (notified) Acquired(this);
  return notified;
}

bool Notification::WaitForNotificationWithDeadline(Time deadline) const {
  PS_REAL(bool (*)(const Notification*, Time),
          "_ZNK4absl7debian312Notification31WaitForNotificationWithDeadlineENS0_4TimeE");
  const bool notified = real(this, deadline);
  if (notified) Acquired(this);
  return notified;
}

ABSL_NAMESPACE_END
}  // namespace absl
