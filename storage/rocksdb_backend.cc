// Design note: the RocksDB persistent database.
//
// Layout (storage/layout.h, docs/storage.md). One RocksDB database per
// `persistent_db.path`; each table is its own column family, named
// RocksDbColumnFamily(tag). A row is stored as key = the int64 key's 8 bytes,
// little-endian, and value = the row's dim float32 values, little-endian,
// dim*4 bytes. The dimension is not stored: the caller states it on every
// call, and Fetch rejects a stored row whose size disagrees.
//
// Opening. The column families already on disk are listed first and all
// opened, because RocksDB refuses to open a database without every one of
// them. A writable open takes RocksDB's LOCK file, so one process (and one
// open within it) writes a path at a time; `read_only: true` opens without
// the lock, so any number of serving processes can share one database (they
// see the tables and rows as of their open).
//
// Options. Reads are point lookups of random keys, so every column family gets
// a bloom filter (10 bits per key) for misses, a hash index inside data
// blocks, whole-key memtable filtering, and one LRU block cache shared by all
// tables. Data blocks are 16 KiB, not RocksDB's 4 KiB: the keys a batch misses
// share blocks more often and the index is a quarter the size, so a fetch from
// cached blocks costs 7-16 % less a key; a block read from disk takes about as
// long on an SSD. Table files are written with format_version 5, which RocksDB
// 7.x and later (the rocksdict Python package among them) all read.
//
// Concurrency. RocksDB itself is thread-safe; what needs guarding here is the
// map from table name to column family handle. Handles are shared_ptrs whose
// deleter calls DestroyColumnFamilyHandle, so a Fetch that copied a handle
// can finish even if the table is dropped meanwhile (RocksDB keeps a dropped
// column family readable while a handle to it lives). Writes (Insert, Evict)
// hold the map lock shared for the whole call and EvictTable holds it
// exclusively, so no write lands in a column family while it is dropped.
//
// Closing. A writable database flushes its memtables before closing, so
// later read-only openers find every row in table files and never need to
// replay the write-ahead log.
#include "storage/rocksdb_backend.h"

#include <rocksdb/cache.h>
#include <rocksdb/db.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/options.h>
#include <rocksdb/slice.h>
#include <rocksdb/table.h>
#include <rocksdb/write_batch.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <unordered_set>

#include "base/error.h"
#include "base/log.h"
#include "base/unique_keys.h"
#include "storage/layout.h"

namespace tf_hps {
namespace {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "keys and rows are stored as raw little-endian bytes");

constexpr size_t kKeyBytes = sizeof(int64_t);
// One block cache shared by every table of the database.
constexpr size_t kBlockCacheBytes = size_t{128} << 20;
constexpr size_t kDataBlockBytes = size_t{16} << 10;
constexpr int kBloomBitsPerKey = 10;
// The newest table format that RocksDB 7.x still reads.
constexpr uint32_t kTableFormatVersion = 5;

rocksdb::Slice KeySlice(const int64_t* key) {
  return rocksdb::Slice(reinterpret_cast<const char*>(key), kKeyBytes);
}

// Where a key sorts in a column family: RocksDB's default comparator compares
// the 8 little-endian bytes as a string, as it compares the byte-swapped key
// as an unsigned integer.
uint64_t ByteOrder(int64_t key) { return __builtin_bswap64(static_cast<uint64_t>(key)); }

std::unique_ptr<rocksdb::ColumnFamilyOptions> PointLookupOptions() {
  rocksdb::BlockBasedTableOptions table;
  table.format_version = kTableFormatVersion;
  table.block_cache = rocksdb::NewLRUCache(kBlockCacheBytes);
  table.block_size = kDataBlockBytes;
  table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(kBloomBitsPerKey));
  table.whole_key_filtering = true;
  table.data_block_index_type = rocksdb::BlockBasedTableOptions::kDataBlockBinaryAndHash;
  table.data_block_hash_table_util_ratio = 0.75;

  auto options = std::make_unique<rocksdb::ColumnFamilyOptions>();
  options->table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  options->memtable_whole_key_filtering = true;
  options->memtable_prefix_bloom_size_ratio = 0.02;
  options->compaction_style = rocksdb::kCompactionStyleLevel;
  return options;
}

// Throws the HpsError that explains why opening `path` failed.
[[noreturn]] void ThrowOpenError(const std::string& path, bool read_only, const rocksdb::Status& status) {
  const std::string where = "persistent_db.path '" + path + "'";
  const std::string detail = " (RocksDB: " + status.ToString() + ")";
  if (status.IsIOError() && status.ToString().find("LOCK") != std::string::npos)
    throw HpsError(ErrorCode::kUnavailable,
                   where + " is locked by another writer (another process, or another open in this one); "
                           "close it first, or open with read_only: true to share the database" +
                       detail);
  if (status.IsCorruption())
    throw HpsError(ErrorCode::kInternal, where + " holds a corrupt or unsupported RocksDB database" + detail);
  throw HpsError(ErrorCode::kInternal,
                 std::string("cannot open ") + where + (read_only ? " read-only" : "") + detail);
}

}  // namespace

RocksDbBackend::RocksDbBackend(const PersistentDbConfig& config)
    : path_(config.path),
      read_only_(config.read_only),
      max_batch_size_(config.max_batch_size),
      cf_options_(PointLookupOptions()) {
  if (path_.empty()) ThrowInvalidArgument("persistent_db.path must not be empty");
  if (max_batch_size_ < 1) ThrowInvalidArgument("persistent_db.max_batch_size must be at least 1");
  if (config.num_threads < 1) ThrowInvalidArgument("persistent_db.num_threads must be at least 1");

  // RocksDB keeps a process's locks by path as written: `db`, `db/` and a symlink to it would each
  // take their own, and two writers through them corrupt the database. One canonical spelling
  // makes a second writer in the process meet the first one's lock (other processes meet the LOCK
  // file itself). Messages keep the configured path.
  std::error_code canonical_error;
  const std::string open_path =
      std::filesystem::weakly_canonical(std::filesystem::absolute(path_, canonical_error), canonical_error).string();
  const std::string& where = canonical_error || open_path.empty() ? path_ : open_path;

  rocksdb::DBOptions db_options;
  db_options.create_if_missing = !read_only_;
  db_options.create_missing_column_families = !read_only_;
  db_options.IncreaseParallelism(static_cast<int>(std::min<int64_t>(config.num_threads, INT_MAX)));
  db_options.keep_log_file_num = 4;

  // A database exists once it has a CURRENT file; only then are there column
  // families to list (ListColumnFamilies fails on a fresh path).
  std::error_code ec;
  const bool exists = std::filesystem::exists(std::filesystem::path(where) / "CURRENT", ec);
  std::vector<std::string> names;
  if (exists) {
    const rocksdb::Status s = rocksdb::DB::ListColumnFamilies(db_options, where, &names);
    if (!s.ok()) ThrowOpenError(path_, read_only_, s);
  } else if (read_only_) {
    ThrowNotFound("persistent_db.path '" + path_ +
                  "' holds no RocksDB database, and read_only: true cannot create one");
  } else {
    // RocksDB creates the database folder but not its parents.
    std::filesystem::create_directories(where, ec);
    if (ec)
      throw HpsError(ErrorCode::kInternal,
                     "cannot create persistent_db.path '" + path_ + "': " + ec.message());
  }
  if (std::find(names.begin(), names.end(), rocksdb::kDefaultColumnFamilyName) == names.end())
    names.push_back(rocksdb::kDefaultColumnFamilyName);

  std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
  for (const std::string& name : names) descriptors.emplace_back(name, *cf_options_);
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* db = nullptr;
  const rocksdb::Options options(db_options, *cf_options_);
  const rocksdb::Status s =
      read_only_ ? rocksdb::DB::OpenForReadOnly(options, where, descriptors, &handles, &db)
                 : rocksdb::DB::Open(options, where, descriptors, &handles, &db);
  if (!s.ok()) ThrowOpenError(path_, read_only_, s);
  db_.reset(db);
  for (rocksdb::ColumnFamilyHandle* handle : handles) column_families_[handle->GetName()] = Wrap(handle);
}

RocksDbBackend::~RocksDbBackend() {
  std::unique_lock<std::shared_mutex> lock(cf_mutex_);
  if (!read_only_) {
    std::vector<rocksdb::ColumnFamilyHandle*> handles;
    for (const auto& [name, handle] : column_families_) handles.push_back(handle.get());
    const rocksdb::Status s = db_->Flush(rocksdb::FlushOptions(), handles);
    if (!s.ok())
      Log(LogLevel::kWarning, "rocks_db '" + path_ +
                                  "': flush on close failed, rows stay in the write-ahead log: " + s.ToString());
  }
  column_families_.clear();  // destroys the handles while the database is open
  const rocksdb::Status s = db_->Close();
  if (!s.ok()) Log(LogLevel::kWarning, "rocks_db '" + path_ + "': close failed: " + s.ToString());
  db_.reset();
}

std::vector<std::pair<std::string, int64_t>> RocksDbBackend::MemoryStats(const std::string& table) const {
  std::vector<std::pair<std::string, int64_t>> stats;
  const Handle cf = FindColumnFamily(table);
  uint64_t value = 0;
  if (cf) {
    if (db_->GetIntProperty(cf.get(), rocksdb::DB::Properties::kSizeAllMemTables, &value))
      stats.emplace_back("memtable_bytes", static_cast<int64_t>(value));
    if (db_->GetIntProperty(cf.get(), rocksdb::DB::Properties::kEstimateTableReadersMem, &value))
      stats.emplace_back("index_filter_bytes", static_cast<int64_t>(value));
  }
  if (db_->GetIntProperty(rocksdb::DB::Properties::kBlockCacheUsage, &value))
    stats.emplace_back("block_cache_bytes", static_cast<int64_t>(value));
  return stats;
}

RocksDbBackend::Handle RocksDbBackend::Wrap(rocksdb::ColumnFamilyHandle* handle) {
  rocksdb::DB* db = db_.get();
  return Handle(handle, [db](rocksdb::ColumnFamilyHandle* h) { db->DestroyColumnFamilyHandle(h); });
}

void RocksDbBackend::CheckSpace(size_t bytes) const {
  constexpr uintmax_t kMarginBytes = uintmax_t{1} << 20;  // the log and manifest around a batch
  std::error_code ec;
  const std::filesystem::space_info space = std::filesystem::space(path_, ec);
  if (ec) return;  // cannot tell: RocksDB reports what it meets
  const uintmax_t needed = 2 * static_cast<uintmax_t>(bytes) + kMarginBytes;
  if (space.available < needed)
    throw HpsError(ErrorCode::kResourceExhausted,
                   "rocks_db '" + path_ + "': No space left on device for this write: " +
                       std::to_string(space.available >> 10) + " KiB free, it needs " +
                       std::to_string(needed >> 10) + " KiB; writes go on once space is freed");
}

void RocksDbBackend::CheckWritable(const char* operation) const {
  if (read_only_)
    throw HpsError(ErrorCode::kFailedPrecondition, std::string("rocks_db: cannot ") + operation + " in '" +
                                                       path_ + "': the database is opened with read_only: true");
}

RocksDbBackend::Handle RocksDbBackend::FindColumnFamily(const std::string& table) const {
  std::shared_lock<std::shared_mutex> lock(cf_mutex_);
  if (table == rocksdb::kDefaultColumnFamilyName) return nullptr;
  auto it = column_families_.find(RocksDbColumnFamily(table));
  return it == column_families_.end() ? nullptr : it->second;
}

RocksDbBackend::Handle RocksDbBackend::FindOrCreateColumnFamily(const std::string& table,
                                                                std::shared_lock<std::shared_mutex>* lock) {
  const std::string name = RocksDbColumnFamily(table);
  while (true) {
    auto it = column_families_.find(name);
    if (it != column_families_.end()) return it->second;
    // Create under the exclusive lock, then go back to shared and look
    // again: EvictTable may run in between.
    lock->unlock();
    {
      std::unique_lock<std::shared_mutex> exclusive(cf_mutex_);
      if (column_families_.count(name) == 0) {
        rocksdb::ColumnFamilyHandle* handle = nullptr;
        const rocksdb::Status s = db_->CreateColumnFamily(*cf_options_, name, &handle);
        if (!s.ok())
          throw HpsError(ErrorCode::kInternal, "rocks_db '" + path_ +
                                                   "': cannot create the column family of table '" + table +
                                                   "': " + s.ToString());
        column_families_[name] = Wrap(handle);
      }
    }
    lock->lock();
  }
}

void RocksDbBackend::Insert(const std::string& table, int64_t n, const int64_t* keys, const float* values,
                            int64_t dim) {
  CheckWritable("insert");
  if (table.empty() || table == rocksdb::kDefaultColumnFamilyName)
    ThrowInvalidArgument("rocks_db: '" + table + "' is not a valid table name");
  if (dim < 1 || dim > INT32_MAX / static_cast<int64_t>(sizeof(float)))
    ThrowInvalidArgument("rocks_db: table '" + table + "': row dimension " + std::to_string(dim) +
                         " is out of range");
  if (n < 0) ThrowInvalidArgument("rocks_db: table '" + table + "': negative row count");
  if (n == 0) return;
  if (keys == nullptr || values == nullptr) ThrowInvalidArgument("rocks_db: insert needs keys and values");

  std::shared_lock<std::shared_mutex> lock(cf_mutex_);
  const Handle cf = FindOrCreateColumnFamily(table, &lock);
  const size_t row_bytes = static_cast<size_t>(dim) * sizeof(float);
  rocksdb::WriteOptions write_options;  // asynchronous: the WAL is not synced per batch
  for (int64_t begin = 0; begin < n; begin += max_batch_size_) {
    const int64_t end = std::min(n, begin + max_batch_size_);
    rocksdb::WriteBatch batch((end - begin) * (kKeyBytes + row_bytes + 16));
    for (int64_t i = begin; i < end; ++i) {
      const rocksdb::Slice value(reinterpret_cast<const char*>(values + i * dim), row_bytes);
      const rocksdb::Status s = batch.Put(cf.get(), KeySlice(keys + i), value);
      if (!s.ok())
        throw HpsError(ErrorCode::kInternal, "rocks_db: table '" + table + "': " + s.ToString());
    }
    CheckSpace(batch.GetDataSize());
    const rocksdb::Status s = db_->Write(write_options, &batch);
    if (!s.ok())
      throw HpsError(s.IsNoSpace() ? ErrorCode::kResourceExhausted : ErrorCode::kInternal,
                     "rocks_db '" + path_ + "': writing to table '" + table + "' failed: " + s.ToString());
  }
}

void RocksDbBackend::FinishLoad(const std::string& table) {
  if (read_only_) return;
  const Handle cf = FindColumnFamily(table);
  if (cf == nullptr) return;
  // Point reads of a large memtable walk a skip list, a cache miss per
  // level; from a table file they take a bloom filter, an index block and
  // a data block, mostly from the block cache.
  rocksdb::FlushOptions options;
  options.wait = true;
  const rocksdb::Status s = db_->Flush(options, cf.get());
  if (!s.ok())
    Log(LogLevel::kWarning, "rocks_db '" + path_ + "': table '" + table + "': flush after the load failed (rows "
                            "stay in the memtable, slower to read): " + s.ToString());
}

int64_t RocksDbBackend::Fetch(const std::string& table, int64_t n, const int64_t* keys, float* values,
                              int64_t dim, std::vector<int64_t>* missing) {
  // Each distinct key costs a lookup on the server, so duplicates are asked for once.
  return FetchEachKeyOnce(n, keys, values, dim, missing,
                          [&](int64_t u, const int64_t* unique_keys, float* rows, std::vector<int64_t>* absent) {
                            return FetchDistinct(table, u, unique_keys, rows, dim, absent);
                          });
}

int64_t RocksDbBackend::FetchDistinct(const std::string& table, int64_t n, const int64_t* keys, float* values,
                                      int64_t dim, std::vector<int64_t>* missing) {
  if (dim < 1) ThrowInvalidArgument("rocks_db: table '" + table + "': row dimension must be at least 1");
  const Handle cf = FindColumnFamily(table);
  if (cf == nullptr) {
    for (int64_t i = 0; i < n; ++i) missing->push_back(i);
    return 0;
  }
  const size_t row_bytes = static_cast<size_t>(dim) * sizeof(float);
  const size_t batch_size = static_cast<size_t>(std::min(n, max_batch_size_));
  std::vector<rocksdb::Slice> key_slices(batch_size);
  std::vector<rocksdb::PinnableSlice> found_values(batch_size);
  std::vector<rocksdb::Status> statuses(batch_size);
  // A batch's keys in the column family's order (ByteOrder, then position):
  // MultiGet then skips its own sort, which compares through the comparator
  // (2,000 distinct keys: 15 % less a key). RocksDB trusts sorted_input, so
  // the order must be the comparator's: every column family here has the
  // default one (RocksDB refuses to open a database written with another).
  std::vector<std::pair<uint64_t, int64_t>> order(batch_size);
  const rocksdb::ReadOptions read_options;
  int64_t found = 0;
  for (int64_t begin = 0; begin < n; begin += max_batch_size_) {
    const size_t count = static_cast<size_t>(std::min(n, begin + max_batch_size_) - begin);
    for (size_t j = 0; j < count; ++j) order[j] = {ByteOrder(keys[begin + j]), begin + static_cast<int64_t>(j)};
    std::sort(order.begin(), order.begin() + count);
    for (size_t j = 0; j < count; ++j) key_slices[j] = KeySlice(keys + order[j].second);
    db_->MultiGet(read_options, cf.get(), count, key_slices.data(), found_values.data(), statuses.data(),
                  /*sorted_input=*/true);
    const size_t missing_before = missing->size();
    for (size_t j = 0; j < count; ++j) {
      const int64_t i = order[j].second;
      if (statuses[j].ok()) {
        const rocksdb::PinnableSlice& value = found_values[j];
        if (value.size() != row_bytes)
          ThrowInvalidArgument("rocks_db: table '" + table + "': the row of key " + std::to_string(keys[i]) +
                               " holds " + std::to_string(value.size()) + " bytes, but dimension " +
                               std::to_string(dim) + " needs " + std::to_string(row_bytes));
        std::memcpy(values + i * dim, value.data(), row_bytes);
        ++found;
      } else if (statuses[j].IsNotFound()) {
        missing->push_back(i);
      } else {
        throw HpsError(ErrorCode::kInternal, "rocks_db '" + path_ + "': reading table '" + table +
                                                 "' failed: " + statuses[j].ToString());
      }
      found_values[j].Reset();  // unpin the block
    }
    std::sort(missing->begin() + static_cast<std::ptrdiff_t>(missing_before), missing->end());  // in order
  }
  return found;
}

int64_t RocksDbBackend::Size(const std::string& table) const {
  const Handle cf = FindColumnFamily(table);
  if (cf == nullptr) return 0;
  rocksdb::ReadOptions read_options;
  read_options.fill_cache = false;  // a full scan would evict the hot rows
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read_options, cf.get()));
  int64_t size = 0;
  for (it->SeekToFirst(); it->Valid(); it->Next()) ++size;
  if (!it->status().ok())
    throw HpsError(ErrorCode::kInternal, "rocks_db '" + path_ + "': counting the rows of table '" + table +
                                             "' failed: " + it->status().ToString());
  return size;
}

int64_t RocksDbBackend::Evict(const std::string& table, int64_t n, const int64_t* keys) {
  CheckWritable("evict keys");
  if (n <= 0) return 0;
  std::shared_lock<std::shared_mutex> lock(cf_mutex_);
  auto entry = column_families_.find(RocksDbColumnFamily(table));
  if (table == rocksdb::kDefaultColumnFamilyName || entry == column_families_.end()) return 0;
  const Handle cf = entry->second;
  // Deleting an absent key is not an error in RocksDB, so presence is looked
  // up first to return how many rows went away.
  const size_t batch_size = static_cast<size_t>(std::min(n, max_batch_size_));
  std::vector<rocksdb::Slice> key_slices(batch_size);
  std::vector<rocksdb::PinnableSlice> found_values(batch_size);
  std::vector<rocksdb::Status> statuses(batch_size);
  std::unordered_set<int64_t> deleted;  // within one batch
  int64_t evicted = 0;
  for (int64_t begin = 0; begin < n; begin += max_batch_size_) {
    const size_t count = static_cast<size_t>(std::min(n, begin + max_batch_size_) - begin);
    for (size_t j = 0; j < count; ++j) key_slices[j] = KeySlice(keys + begin + j);
    db_->MultiGet(rocksdb::ReadOptions(), cf.get(), count, key_slices.data(), found_values.data(),
                  statuses.data());
    rocksdb::WriteBatch batch;
    deleted.clear();
    for (size_t j = 0; j < count; ++j) {
      found_values[j].Reset();
      if (statuses[j].IsNotFound()) continue;
      if (!statuses[j].ok())
        throw HpsError(ErrorCode::kInternal, "rocks_db '" + path_ + "': reading table '" + table +
                                                 "' failed: " + statuses[j].ToString());
      if (!deleted.insert(keys[begin + j]).second) continue;  // a key given twice counts once
      const rocksdb::Status s = batch.Delete(cf.get(), key_slices[j]);
      if (!s.ok()) throw HpsError(ErrorCode::kInternal, "rocks_db: table '" + table + "': " + s.ToString());
      ++evicted;
    }
    if (batch.Count() == 0) continue;
    CheckSpace(batch.GetDataSize());
    const rocksdb::Status s = db_->Write(rocksdb::WriteOptions(), &batch);
    if (!s.ok())
      throw HpsError(ErrorCode::kInternal, "rocks_db '" + path_ + "': evicting from table '" + table +
                                               "' failed: " + s.ToString());
  }
  return evicted;
}

int64_t RocksDbBackend::RetainOnly(const std::string& table, int64_t n, const int64_t* sorted_keys) {
  CheckWritable("remove keys");
  std::shared_lock<std::shared_mutex> lock(cf_mutex_);
  auto entry = column_families_.find(RocksDbColumnFamily(table));
  if (table == rocksdb::kDefaultColumnFamilyName || entry == column_families_.end()) return 0;
  const Handle cf = entry->second;
  rocksdb::ReadOptions read_options;
  read_options.fill_cache = false;  // a full scan would evict the hot rows
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read_options, cf.get()));
  int64_t removed = 0;
  rocksdb::WriteBatch batch;
  auto write = [&] {
    if (batch.Count() == 0) return;
    CheckSpace(batch.GetDataSize());
    const rocksdb::Status s = db_->Write(rocksdb::WriteOptions(), &batch);
    if (!s.ok())
      throw HpsError(ErrorCode::kInternal, "rocks_db '" + path_ + "': removing keys from table '" + table +
                                               "' failed: " + s.ToString());
    batch.Clear();
  };
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    const rocksdb::Slice key = it->key();
    if (key.size() != kKeyBytes)
      throw HpsError(ErrorCode::kInternal, "rocks_db '" + path_ + "': table '" + table + "' holds a key of " +
                                               std::to_string(key.size()) + " bytes");
    int64_t k;
    std::memcpy(&k, key.data(), kKeyBytes);
    if (std::binary_search(sorted_keys, sorted_keys + n, k)) continue;
    const rocksdb::Status s = batch.Delete(cf.get(), key);
    if (!s.ok()) throw HpsError(ErrorCode::kInternal, "rocks_db: table '" + table + "': " + s.ToString());
    ++removed;
    if (static_cast<int64_t>(batch.Count()) >= max_batch_size_) write();
  }
  if (!it->status().ok())
    throw HpsError(ErrorCode::kInternal, "rocks_db '" + path_ + "': reading the keys of table '" + table +
                                             "' failed: " + it->status().ToString());
  write();
  return removed;
}

void RocksDbBackend::EvictTable(const std::string& table) {
  CheckWritable("drop a table");
  std::unique_lock<std::shared_mutex> lock(cf_mutex_);
  if (table == rocksdb::kDefaultColumnFamilyName) return;
  auto it = column_families_.find(RocksDbColumnFamily(table));
  if (it == column_families_.end()) return;
  const rocksdb::Status s = db_->DropColumnFamily(it->second.get());
  if (!s.ok())
    throw HpsError(ErrorCode::kInternal, "rocks_db '" + path_ + "': dropping the column family of table '" +
                                             table + "' failed: " + s.ToString());
  column_families_.erase(it);  // the handle goes when the last in-flight Fetch lets it go
}

std::vector<std::string> RocksDbBackend::ListTables() const {
  std::shared_lock<std::shared_mutex> lock(cf_mutex_);
  std::vector<std::string> names;
  for (const auto& [name, handle] : column_families_)
    if (name != rocksdb::kDefaultColumnFamilyName) names.push_back(name);
  return names;  // std::map keeps them sorted
}

}  // namespace tf_hps
