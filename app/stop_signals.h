// Both mains stop cleanly on SIGINT or SIGTERM (a container's stop, Ctrl-C).
#ifndef PS_APP_STOP_SIGNALS_H_
#define PS_APP_STOP_SIGNALS_H_

#include <functional>

namespace ps {

// Blocks SIGINT and SIGTERM in the calling thread, and so in every thread it starts afterwards
// (call it first in main), and takes them on one thread of its own with sigwait: no signal
// handler ever runs on a gRPC thread. `on_signal` runs on that thread, once, with "SIGINT" or
// "SIGTERM".
void HandleStopSignals(std::function<void(const char* signal_name)> on_signal);

}  // namespace ps

#endif  // PS_APP_STOP_SIGNALS_H_
