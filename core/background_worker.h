// Threads the parameter server owns besides the callers' threads:
//   BackgroundWorker  runs queued tasks in order on one thread (cache
//                     insertions deferred off the lookup path);
//   PeriodicTask      runs one task every `interval` on one thread (cache
//                     refresh, statistics logging).
// Both stop and join in their destructors.
#ifndef TF_HPS_CORE_BACKGROUND_WORKER_H_
#define TF_HPS_CORE_BACKGROUND_WORKER_H_

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace tf_hps {

class BackgroundWorker {
 public:
  // Holds at most `max_queued` tasks; more are refused rather than queued, so
  // a slow worker never makes callers wait or memory grow.
  explicit BackgroundWorker(size_t max_queued);
  ~BackgroundWorker();

  // Queues a task; false (task dropped) when the queue is full.
  bool TrySubmit(std::function<void()> task);

  // Waits until every task queued so far has run (for tests and shutdown).
  void Drain();

 private:
  void Run();

  const size_t max_queued_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable idle_;
  std::deque<std::function<void()>> queue_;
  bool running_task_ = false;
  bool stop_ = false;
  std::thread thread_;
};

class PeriodicTask {
 public:
  // Runs task() after `delay`, then every `interval`, until destroyed.
  PeriodicTask(std::chrono::milliseconds delay, std::chrono::milliseconds interval, std::function<void()> task);
  ~PeriodicTask();

 private:
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace tf_hps

#endif  // TF_HPS_CORE_BACKGROUND_WORKER_H_
