#include "app/stop_signals.h"

#include <pthread.h>
#include <signal.h>

#include <thread>

namespace ps {

void HandleStopSignals(std::function<void(const char* signal_name)> on_signal) {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::thread([signals, on_signal = std::move(on_signal)] {
    int sig = 0;
    sigwait(&signals, &sig);
    on_signal(sig == SIGINT ? "SIGINT" : "SIGTERM");
  }).detach();
}

}  // namespace ps
