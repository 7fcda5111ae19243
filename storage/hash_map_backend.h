// The in-process volatile database: a partitioned hash map with packed rows.
//
// Each table is split into `num_partitions` partitions by the high bits of
// its keys' MixKey, each guarded by its own reader-writer lock, so writers
// working on different partitions never contend; a fetch holds every
// partition's read lock for a chunk of keys and runs one prefetching pipeline
// over them in their own order.
//
// A partition stores rows back to back in fixed-size pages (no per-row
// padding, no reallocation of existing rows as it grows; a full page's values
// are at least 2 MiB, on huge pages where the kernel allows):
//   row r: values[r] (dim floats), keys[r] (int64), meta[r] (uint32, only
//          with an overflow margin: access count or last access time).
// An open-addressing index (linear probing) maps keys to rows: each slot
// holds a 4-byte row number, and a probe compares the key stored with the
// row. Deleting a row moves the last row into its place (rows stay dense)
// and uses backward-shift deletion in the index (no tombstones).
//
// Memory per row: dim*4 + 8 (key) + 4 / load (index, load 0.375..0.75)
// (+ 4 with an overflow margin): at most about 1.15x the raw size at dim 16.
//
// Overflow: when a partition would exceed `overflow_margin` rows, rows are
// evicted by `overflow_policy` until it holds margin * resolution_target:
// evict_random (any rows), evict_least_used (fewest fetches since insert),
// evict_oldest (least recent insert or fetch).
#ifndef TF_HPS_STORAGE_HASH_MAP_BACKEND_H_
#define TF_HPS_STORAGE_HASH_MAP_BACKEND_H_

#include <map>
#include <memory>
#include <shared_mutex>

#include "storage/backend.h"
#include "storage/options.h"

namespace tf_hps {

class HashMapBackend : public DatabaseBackend {
 public:
  explicit HashMapBackend(const VolatileDbConfig& config);
  ~HashMapBackend() override;

  const char* name() const override { return "hash_map"; }
  void Insert(const std::string& table, int64_t n, const int64_t* keys, const float* values,
              int64_t dim) override;
  int64_t Fetch(const std::string& table, int64_t n, const int64_t* keys, float* values, int64_t dim,
                std::vector<int64_t>* missing) override;
  int64_t FetchRows(const std::string& table, int64_t n, const int64_t* keys, float* values, int64_t dim,
                    std::vector<int64_t>* missing, bool stream) override;
  int64_t MinRowsPerFetchShard() const override { return 2048; }
  bool InProcess() const override { return true; }
  int64_t Size(const std::string& table) const override;
  int64_t Evict(const std::string& table, int64_t n, const int64_t* keys) override;
  void EvictTable(const std::string& table) override;
  std::vector<std::string> ListTables() const override;

  // Bytes allocated for the table's rows and index (for memory reports).
  int64_t MemoryBytes(const std::string& table) const;

  class Partition;  // defined in the .cc

 private:
  struct Table;

  // Returns the table, creating it if `create`; nullptr if absent. Throws if
  // it exists with another dimension.
  Table* FindTable(const std::string& table, int64_t dim, bool create) const;

  // Sum of fn(partition) over the table's partitions, each under its read lock; 0 for an unknown table.
  template <class Fn>
  int64_t SumOverPartitions(const std::string& table, Fn&& fn) const;

  const VolatileDbConfig config_;
  mutable std::shared_mutex tables_mutex_;  // guards the map, not the tables
  mutable std::map<std::string, std::unique_ptr<Table>> tables_;
};

}  // namespace tf_hps

#endif  // TF_HPS_STORAGE_HASH_MAP_BACKEND_H_
