// The in-process volatile database: each table is split into
// `num_partitions` partitions by a 64-bit mix of the key, so that lookups and
// inserts on different partitions never contend. A partition is a hash map
// from key to a row index into one packed float array (rows are stored back
// to back, with no per-row padding).
#ifndef TF_HPS_STORAGE_HASH_MAP_BACKEND_H_
#define TF_HPS_STORAGE_HASH_MAP_BACKEND_H_

#include <map>
#include <memory>
#include <shared_mutex>
#include <unordered_map>

#include "core/config.h"
#include "storage/backend.h"

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
  int64_t Size(const std::string& table) const override;
  int64_t Evict(const std::string& table, int64_t n, const int64_t* keys) override;
  void EvictTable(const std::string& table) override;
  std::vector<std::string> ListTables() const override;

 private:
  struct Partition;
  struct Table;

  // Returns the table, creating it if `create`; nullptr if absent.
  Table* FindTable(const std::string& table, int64_t dim, bool create);
  const Table* FindTable(const std::string& table) const;

  const int64_t num_partitions_;
  mutable std::shared_mutex tables_mutex_;  // guards the map, not the tables
  std::map<std::string, std::unique_ptr<Table>> tables_;
};

}  // namespace tf_hps

#endif  // TF_HPS_STORAGE_HASH_MAP_BACKEND_H_
