#include "app/malloc_tuning.h"

#include <malloc.h>

namespace ps {

void TuneMallocForLargeMessages() {
  mallopt(M_MMAP_THRESHOLD, 32 << 20);  // the largest glibc accepts; fixes the threshold
  mallopt(M_TRIM_THRESHOLD, 512 << 20);
}

}  // namespace ps
