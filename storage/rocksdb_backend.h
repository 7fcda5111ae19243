// The persistent database (`persistent_db.type: "rocks_db"`): one RocksDB
// database on local disk, one column family per table (storage/layout.h).
// See the design note in rocksdb_backend.cc and docs/storage.md.
#ifndef TF_HPS_STORAGE_ROCKSDB_BACKEND_H_
#define TF_HPS_STORAGE_ROCKSDB_BACKEND_H_

#include <map>
#include <memory>
#include <shared_mutex>
#include <string>
#include <vector>

#include "storage/backend.h"
#include "storage/options.h"

namespace rocksdb {
class ColumnFamilyHandle;
class DB;
struct ColumnFamilyOptions;
}  // namespace rocksdb

namespace tf_hps {

class RocksDbBackend : public DatabaseBackend {
 public:
  // Opens (or, unless config.read_only, creates) the database at config.path
  // with every column family it already holds. Throws HpsError naming the
  // path and RocksDB's status when the path is locked by another writer
  // (kUnavailable), holds no database in read-only mode (kNotFound), or is
  // corrupt or unreadable (kInternal).
  explicit RocksDbBackend(const PersistentDbConfig& config);
  // Flushes memtables of a writable database to SST files, then closes it.
  ~RocksDbBackend() override;

  RocksDbBackend(const RocksDbBackend&) = delete;
  RocksDbBackend& operator=(const RocksDbBackend&) = delete;

  const char* name() const override { return "rocks_db"; }

  // Writes rows in one WriteBatch per max_batch_size keys; creates the
  // table's column family on first use. keys: (n), values: (n, dim), host.
  void Insert(const std::string& table, int64_t n, const int64_t* keys, const float* values,
              int64_t dim) override;
  // Batched MultiGet, max_batch_size keys at a time. keys: (n), values:
  // (n, dim), host. Throws kInvalidArgument if a stored row is not dim*4 bytes.
  int64_t Fetch(const std::string& table, int64_t n, const int64_t* keys, float* values, int64_t dim,
                std::vector<int64_t>* missing) override;
  // Exact row count by iterating the column family: O(rows), for tools and
  // tests, not for the lookup path.
  int64_t MinRowsPerFetchShard() const override { return 4096; }
  int64_t Size(const std::string& table) const override;
  // memtable_bytes (the table's memtables, live and awaiting flush),
  // index_filter_bytes (its SST files' index and filter blocks) and
  // block_cache_bytes (the cache shared by every table of the database).
  std::vector<std::pair<std::string, int64_t>> MemoryStats(const std::string& table) const override;
  int64_t Evict(const std::string& table, int64_t n, const int64_t* keys) override;
  // One scan of the column family; the deletes go in batches of max_batch_size.
  int64_t RetainOnly(const std::string& table, int64_t n, const int64_t* sorted_keys) override;
  void FinishLoad(const std::string& table) override;
  // Drops the table's column family.
  void EvictTable(const std::string& table) override;
  std::vector<std::string> ListTables() const override;

 private:
  // Fetch of keys known to be distinct.
  int64_t FetchDistinct(const std::string& table, int64_t n, const int64_t* keys, float* values, int64_t dim,
                        std::vector<int64_t>* missing);

  using Handle = std::shared_ptr<rocksdb::ColumnFamilyHandle>;

  // The column family of `table`, or nullptr if it does not exist.
  Handle FindColumnFamily(const std::string& table) const;
  // The column family of `table`, created if it does not exist yet. The
  // caller holds cf_mutex_ shared; this may drop and retake it.
  Handle FindOrCreateColumnFamily(const std::string& table, std::shared_lock<std::shared_mutex>* lock);
  void CheckWritable(const char* operation) const;
  // Throws kResourceExhausted while the database's filesystem has less free
  // space than a write of `bytes` needs, plus a margin: Debian's RocksDB is
  // built with assertions on and aborts the process when a write meets a full
  // disk (and any RocksDB refuses writes after one until Resume()), so a full
  // disk must stop writes before RocksDB sees it.
  void CheckSpace(size_t bytes) const;
  Handle Wrap(rocksdb::ColumnFamilyHandle* handle);

  const std::string path_;
  const bool read_only_;
  const int64_t max_batch_size_;
  std::unique_ptr<rocksdb::ColumnFamilyOptions> cf_options_;
  std::unique_ptr<rocksdb::DB> db_;
  // Writers (Insert, Evict) hold it shared for the whole call and EvictTable
  // exclusively, so a write never lands in a column family being dropped.
  // Readers hold it only to copy a handle out of the map.
  mutable std::shared_mutex cf_mutex_;
  std::map<std::string, Handle> column_families_;  // by name, "default" included
};

}  // namespace tf_hps

#endif  // TF_HPS_STORAGE_ROCKSDB_BACKEND_H_
