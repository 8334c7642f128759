// A data race on purpose: two threads write one int without synchronisation. Under
// ThreadSanitizer (with ignore_noninstrumented_modules=1, as the TSan suite runs) this exits
// non-zero; ctest expects it to fail, so a TSan build that stopped seeing races fails the suite.
#include <cstdio>
#include <thread>

namespace {
int shared_counter = 0;  // deliberately unguarded
}

int main() {
  std::thread a([] {
    for (int i = 0; i < 100000; ++i) ++shared_counter;
  });
  std::thread b([] {
    for (int i = 0; i < 100000; ++i) ++shared_counter;
  });
  a.join();
  b.join();
  std::printf("counter %d\n", shared_counter);
  return 0;
}
