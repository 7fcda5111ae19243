// Per-thread scratch memory for the lookup hot path. Buffers grow and are
// kept for the thread's next call, so a steady stream of lookups allocates
// (and page-faults) nothing; their contents are not initialised.
#ifndef TF_HPS_CORE_SCRATCH_H_
#define TF_HPS_CORE_SCRATCH_H_

#include <cstddef>
#include <cstdint>
#include <memory>

namespace tf_hps {

template <class T>
class ScratchBuffer {
 public:
  // At least n elements, uninitialised, valid until the next Get.
  T* Get(size_t n) {
    if (n > capacity_) {
      const size_t capacity = n > SIZE_MAX / 2 / sizeof(T) ? n : n + n / 4;
      data_.reset(new T[capacity]);  // if it throws, data_ and capacity_ still agree
      capacity_ = capacity;
    }
    return data_.get();
  }

 private:
  std::unique_ptr<T[]> data_;
  size_t capacity_ = 0;
};

}  // namespace tf_hps

#endif  // TF_HPS_CORE_SCRATCH_H_
