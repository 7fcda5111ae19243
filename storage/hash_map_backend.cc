#include "storage/hash_map_backend.h"

#include <cstring>
#include <mutex>

#include "core/error.h"
#include "core/key_hash.h"

namespace tf_hps {

struct HashMapBackend::Partition {
  mutable std::shared_mutex mutex;
  std::unordered_map<int64_t, int64_t> row_of_key;  // key -> row index
  std::vector<int64_t> key_of_row;                  // row index -> key
  std::vector<float> values;                        // (rows, dim), packed
};

struct HashMapBackend::Table {
  Table(int64_t dim, int64_t num_partitions) : dim(dim), partitions(num_partitions) {}
  const int64_t dim;
  std::vector<Partition> partitions;

  uint32_t PartitionIndex(int64_t key) const {
    return static_cast<uint32_t>(MixKey(static_cast<uint64_t>(key)) % partitions.size());
  }
  Partition& PartitionOf(int64_t key) { return partitions[PartitionIndex(key)]; }
};

HashMapBackend::HashMapBackend(const VolatileDbConfig& config) : num_partitions_(config.num_partitions) {
  if (num_partitions_ < 1) ThrowInvalidArgument("hash_map: num_partitions must be at least 1");
  if (config.overflow_margin != UINT64_MAX)
    throw HpsError(ErrorCode::kUnimplemented,
                   "volatile_db.overflow_margin: eviction from the hash map is not available in this build; "
                   "remove the key to keep every row in memory");
}

HashMapBackend::~HashMapBackend() = default;

HashMapBackend::Table* HashMapBackend::FindTable(const std::string& table, int64_t dim, bool create) {
  {
    std::shared_lock<std::shared_mutex> lock(tables_mutex_);
    auto it = tables_.find(table);
    if (it != tables_.end()) {
      if (it->second->dim != dim)
        ThrowInvalidArgument("hash_map: table '" + table + "' holds rows of dimension " +
                             std::to_string(it->second->dim) + ", not " + std::to_string(dim));
      return it->second.get();
    }
    if (!create) return nullptr;
  }
  std::unique_lock<std::shared_mutex> lock(tables_mutex_);
  auto& slot = tables_[table];
  if (!slot) slot = std::make_unique<Table>(dim, num_partitions_);
  return slot.get();
}

const HashMapBackend::Table* HashMapBackend::FindTable(const std::string& table) const {
  std::shared_lock<std::shared_mutex> lock(tables_mutex_);
  auto it = tables_.find(table);
  return it == tables_.end() ? nullptr : it->second.get();
}

void HashMapBackend::Insert(const std::string& table, int64_t n, const int64_t* keys,
                            const float* values, int64_t dim) {
  Table* t = FindTable(table, dim, /*create=*/true);
  const size_t row_bytes = dim * sizeof(float);
  std::vector<uint32_t> partition_of(n);
  for (int64_t i = 0; i < n; ++i) partition_of[i] = t->PartitionIndex(keys[i]);
  // One pass per partition keeps each lock taken once per call.
  for (size_t pi = 0; pi < t->partitions.size(); ++pi) {
    Partition& p = t->partitions[pi];
    std::unique_lock<std::shared_mutex> lock(p.mutex);
    for (int64_t i = 0; i < n; ++i) {
      if (partition_of[i] != pi) continue;
      auto [it, inserted] = p.row_of_key.try_emplace(keys[i], static_cast<int64_t>(p.key_of_row.size()));
      if (inserted) {
        p.key_of_row.push_back(keys[i]);
        p.values.resize(p.values.size() + dim);
      }
      std::memcpy(p.values.data() + it->second * dim, values + i * dim, row_bytes);
    }
  }
}

int64_t HashMapBackend::Fetch(const std::string& table, int64_t n, const int64_t* keys, float* values,
                              int64_t dim, std::vector<int64_t>* missing) {
  Table* t = FindTable(table, dim, /*create=*/false);
  if (t == nullptr) {
    for (int64_t i = 0; i < n; ++i) missing->push_back(i);
    return 0;
  }
  const size_t row_bytes = dim * sizeof(float);
  int64_t found = 0;
  for (int64_t i = 0; i < n; ++i) {
    Partition& p = t->PartitionOf(keys[i]);
    std::shared_lock<std::shared_mutex> lock(p.mutex);
    auto it = p.row_of_key.find(keys[i]);
    if (it == p.row_of_key.end()) {
      missing->push_back(i);
    } else {
      std::memcpy(values + i * dim, p.values.data() + it->second * dim, row_bytes);
      ++found;
    }
  }
  return found;
}

int64_t HashMapBackend::Size(const std::string& table) const {
  const Table* t = FindTable(table);
  if (t == nullptr) return 0;
  int64_t size = 0;
  for (const Partition& p : t->partitions) {
    std::shared_lock<std::shared_mutex> lock(p.mutex);
    size += static_cast<int64_t>(p.row_of_key.size());
  }
  return size;
}

int64_t HashMapBackend::Evict(const std::string& table, int64_t n, const int64_t* keys) {
  const Table* found = FindTable(table);
  if (found == nullptr) return 0;
  Table* t = const_cast<Table*>(found);
  const int64_t dim = t->dim;
  int64_t evicted = 0;
  for (int64_t i = 0; i < n; ++i) {
    Partition& p = t->PartitionOf(keys[i]);
    std::unique_lock<std::shared_mutex> lock(p.mutex);
    auto it = p.row_of_key.find(keys[i]);
    if (it == p.row_of_key.end()) continue;
    // Move the last row into the hole so rows stay packed.
    const int64_t hole = it->second;
    const int64_t last = static_cast<int64_t>(p.key_of_row.size()) - 1;
    if (hole != last) {
      std::memcpy(p.values.data() + hole * dim, p.values.data() + last * dim, dim * sizeof(float));
      p.key_of_row[hole] = p.key_of_row[last];
      p.row_of_key[p.key_of_row[hole]] = hole;
    }
    p.key_of_row.pop_back();
    p.values.resize(last * dim);
    p.row_of_key.erase(it);
    ++evicted;
  }
  return evicted;
}

void HashMapBackend::EvictTable(const std::string& table) {
  std::unique_lock<std::shared_mutex> lock(tables_mutex_);
  tables_.erase(table);
}

std::vector<std::string> HashMapBackend::ListTables() const {
  std::shared_lock<std::shared_mutex> lock(tables_mutex_);
  std::vector<std::string> names;
  for (const auto& [name, table] : tables_) names.push_back(name);
  return names;
}

}  // namespace tf_hps
