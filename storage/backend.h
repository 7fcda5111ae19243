// The interface every storage tier implements: the in-process hash map and,
// behind the same calls, Redis and RocksDB. TF-free and thread-safe.
//
// Tables are named by their tag, `hps_et.<model>.<table>` (storage/layout.h), and
// hold rows of `dim` float32 values keyed by int64. All buffers live in host
// memory.
#ifndef TF_HPS_STORAGE_BACKEND_H_
#define TF_HPS_STORAGE_BACKEND_H_

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "storage/layout.h"

namespace tf_hps {

class DatabaseBackend {
 public:
  virtual ~DatabaseBackend() = default;

  // The backend's kind, as in the config ("hash_map", ...).
  virtual const char* name() const = 0;

  // Inserts or overwrites rows. keys: (n), values: (n, dim).
  virtual void Insert(const std::string& table, int64_t n, const int64_t* keys,
                      const float* values, int64_t dim) = 0;

  // Writes the rows of an online update. `version` is the update's position
  // in its stream, as text that sorts in stream order. A backend that several
  // processes update at once (Redis) keeps, for each key, the row of the
  // highest version, in whatever order the updates arrive; the others just
  // insert (their one writer applies updates in order).
  virtual void ApplyUpdate(const std::string& table, int64_t n, const int64_t* keys, const float* values,
                           int64_t dim, const std::string& version) {
    (void)version;
    Insert(table, n, keys, values, dim);
  }

  // Writes rows that may be older than rows an online update wrote here: a
  // start-up load's, or rows read from the tier below (cache_missed_embeddings).
  // A key an update wrote (ApplyUpdate) keeps its row, even after overflow
  // evicted it; with only_absent, a key that has a row keeps it too. A backend
  // that only its own process writes just inserts: the process orders its
  // loads, write-backs and updates itself (ParameterServer).
  virtual void InsertUnlessUpdated(const std::string& table, int64_t n, const int64_t* keys, const float* values,
                                   int64_t dim, bool only_absent) {
    (void)only_absent;
    Insert(table, n, keys, values, dim);
  }

  // Copies the row of each key found into values[i] (values: (n, dim)) and
  // appends the index i of each key not found to `missing`, in order. Rows of
  // missing keys are left untouched. Returns the number of keys found.
  virtual int64_t Fetch(const std::string& table, int64_t n, const int64_t* keys, float* values,
                        int64_t dim, std::vector<int64_t>* missing) = 0;

  // Fetch into a lookup's output: with `stream`, an output much larger than
  // the CPU caches, rows may be written around them (base/row_copy.h), and
  // are visible to the caller when it returns.
  virtual int64_t FetchRows(const std::string& table, int64_t n, const int64_t* keys, float* values, int64_t dim,
                            std::vector<int64_t>* missing, bool stream) {
    (void)stream;
    return Fetch(table, n, keys, values, dim, missing);
  }

  // How many keys a Fetch should get at least before the caller splits a
  // batch over threads: small for in-process memory, unbounded for a server
  // that a single pipelined call already keeps busy.
  virtual int64_t MinRowsPerFetchShard() const { return 1024; }

  // Rows in this process's memory: a lookup without L1 hands it the batch as
  // it is, to be written into the output (FetchRows).
  virtual bool InProcess() const { return false; }

  // Named figures, in bytes, of the memory this backend holds for `table`
  // (RocksDB: its memtables, index and filter blocks, and the block cache
  // that all its tables share). None by default.
  virtual std::vector<std::pair<std::string, int64_t>> MemoryStats(const std::string& table) const {
    (void)table;
    return {};
  }

  // A load wrote the table's rows: arrange them for point reads (RocksDB
  // flushes them from its memtable, a skip list, into a table file with its
  // bloom filter and block index). Nothing by default.
  virtual void FinishLoad(const std::string& table) { (void)table; }

  // Rows stored for `table` (0 for an unknown table).
  virtual int64_t Size(const std::string& table) const = 0;

  // Removes the given keys; returns how many were present.
  virtual int64_t Evict(const std::string& table, int64_t n, const int64_t* keys) = 0;

  // Removes every row of `table` whose key is not among `sorted_keys` (n,
  // ascending, distinct); returns how many went. A load calls it after writing
  // the table files' rows, which are the truth at start-up. By default none go:
  // the in-process hash map starts empty at each load, and a shared Redis keeps
  // them (another node may still serve them; docs/updates.md). RocksDB, whose
  // tables outlive the process, removes them.
  virtual int64_t RetainOnly(const std::string& table, int64_t n, const int64_t* sorted_keys) {
    (void)table;
    (void)n;
    (void)sorted_keys;
    return 0;
  }

  // Whether `table` is stored (ListTables is sorted).
  bool HasTable(const std::string& table) const {
    const std::vector<std::string> tables = ListTables();
    return std::binary_search(tables.begin(), tables.end(), table);
  }

  // Drops the whole table.
  virtual void EvictTable(const std::string& table) = 0;

  // Tags of the tables stored, sorted.
  virtual std::vector<std::string> ListTables() const = 0;
};

}  // namespace tf_hps

#endif  // TF_HPS_STORAGE_BACKEND_H_
