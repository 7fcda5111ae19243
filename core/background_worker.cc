#include "core/background_worker.h"

#include <exception>

#include "base/log.h"

namespace tf_hps {

BackgroundWorker::BackgroundWorker(size_t max_queued) : max_queued_(max_queued), thread_([this] { Run(); }) {}

BackgroundWorker::~BackgroundWorker() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

bool BackgroundWorker::TrySubmit(std::function<void()> task) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stop_ || queue_.size() >= max_queued_) return false;
    queue_.push_back(std::move(task));
  }
  wake_.notify_one();
  return true;
}

void BackgroundWorker::Drain() {
  std::unique_lock<std::mutex> lock(mutex_);
  idle_.wait(lock, [this] { return queue_.empty() && !running_task_; });
}

void BackgroundWorker::Run() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (true) {
    wake_.wait(lock, [this] { return stop_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping, nothing left
    std::function<void()> task = std::move(queue_.front());
    queue_.pop_front();
    running_task_ = true;
    lock.unlock();
    try {
      task();
    } catch (const std::exception& e) {
      Log(LogLevel::kWarning, std::string("background task failed: ") + e.what());
    }
    lock.lock();
    running_task_ = false;
    if (queue_.empty()) idle_.notify_all();
  }
}

PeriodicTask::PeriodicTask(std::chrono::milliseconds delay, std::chrono::milliseconds interval,
                           std::function<void()> task)
    : thread_([this, delay, interval, task = std::move(task)] {
        std::unique_lock<std::mutex> lock(mutex_);
        auto next = std::chrono::steady_clock::now() + delay;
        while (!wake_.wait_until(lock, next, [this] { return stop_; })) {
          lock.unlock();
          try {
            task();
          } catch (const std::exception& e) {
            Log(LogLevel::kWarning, std::string("periodic task failed: ") + e.what());
          }
          lock.lock();
          next = std::chrono::steady_clock::now() + interval;
        }
      }) {}

PeriodicTask::~PeriodicTask() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

}  // namespace tf_hps
