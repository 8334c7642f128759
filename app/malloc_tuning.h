// Process-wide allocator settings for mains (never called by libraries).
#ifndef PS_APP_MALLOC_TUNING_H_
#define PS_APP_MALLOC_TUNING_H_

namespace ps {

// glibc by default returns freed memory to the kernel eagerly (trim) and serves large blocks with
// fresh mmaps, so every model-sized message is page-faulted in anew; on virtual machines page
// faults dominate the cost of a push (bench/results/push_pull.md: about 3x on pushes). This keeps
// freed memory in the heap for reuse, up to 512 MiB.
void TuneMallocForLargeMessages();

}  // namespace ps

#endif  // PS_APP_MALLOC_TUNING_H_
