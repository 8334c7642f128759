// Happens-before edges that ThreadSanitizer cannot see by itself, and nothing in other builds.
//
// gRPC's callback API guarantees that a reaction (OnReadDone, OnWriteDone, OnDone, ...) runs after
// the Start* or Finish call that caused it, but that ordering lives in gRPC's core, which
// Debian ships uninstrumented. A reactor marks each Start*/Finish with PS_HAPPENS_BEFORE(this)
// and begins each reaction with PS_HAPPENS_AFTER(this), so TSan checks the reactor's own state
// with the same ordering gRPC gives it.
#ifndef PS_COMMON_HAPPENS_BEFORE_H_
#define PS_COMMON_HAPPENS_BEFORE_H_

#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#include <sanitizer/tsan_interface.h>
#define PS_HAPPENS_BEFORE(addr) __tsan_release(const_cast<void*>(static_cast<const void*>(addr)))
#define PS_HAPPENS_AFTER(addr) __tsan_acquire(const_cast<void*>(static_cast<const void*>(addr)))
#endif
#endif

#ifndef PS_HAPPENS_BEFORE
#define PS_HAPPENS_BEFORE(addr) static_cast<void>(addr)
#define PS_HAPPENS_AFTER(addr) static_cast<void>(addr)
#endif

#endif  // PS_COMMON_HAPPENS_BEFORE_H_
