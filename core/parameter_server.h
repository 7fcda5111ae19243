// The parameter server: owns the tiers of every table of every model in one
// configuration, and answers batched lookups through them.
//
// Data path of one lookup (LookupSession in the docs):
//   1. dedup: the batch's keys are reduced to distinct keys, each looked up once;
//   2. L1: the distinct keys are queried in the table's embedding cache;
//   3. misses go to the volatile database (VDB), its misses to the
//      persistent database (PDB), and what is still missing gets the table's
//      default value in every element; with cache_missed_embeddings, rows
//      only the PDB held are written into the VDB;
//   4. rows found below L1 are inserted into the cache (before returning, or
//      by the background inserter for a warm batch); every answer is exact
//      and never depends on what the cache held;
//   5. each distinct key's row, written into the first output position of
//      that key, is copied to the key's other positions.
// Work is split over the caller's thread pool (TF's CPU workers in the op).
#ifndef TF_HPS_CORE_PARAMETER_SERVER_H_
#define TF_HPS_CORE_PARAMETER_SERVER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

#include "core/background_worker.h"
#include "core/config.h"
#include "core/embedding_cache.h"
#include "core/update_consumer.h"
#include "storage/backend.h"

namespace tf_hps {

// Runs work(begin, end) over [0, total) on a thread pool, in shards whose
// size the pool picks from `cost_per_unit` (roughly ns per item); returns
// when all are done.
using ParallelFor = std::function<void(int64_t total, int64_t cost_per_unit,
                                       const std::function<void(int64_t, int64_t)>& work)>;

// Runs the work inline on the calling thread.
void SerialFor(int64_t total, int64_t cost_per_unit, const std::function<void(int64_t, int64_t)>& work);

// Counters of one table, updated by every lookup (relaxed atomics).
struct TableStats {
  std::atomic<int64_t> lookups{0};      // calls
  std::atomic<int64_t> fused_lookups{0};  // of those, calls in one pass with other tables (LookupMany, fused)
  std::atomic<int64_t> keys{0};         // keys asked for, duplicates included
  std::atomic<int64_t> l1_hits{0};      // of those, answered by L1
  // Below L1 each distinct key of a batch is looked up once:
  // missed_keys = vdb_hits + pdb_hits + defaults.
  std::atomic<int64_t> missed_keys{0};
  std::atomic<int64_t> vdb_hits{0};
  std::atomic<int64_t> pdb_hits{0};
  std::atomic<int64_t> defaults{0};     // keys no tier held
  std::atomic<int64_t> vdb_errors{0};   // VDB calls that failed (server down, timeout)
  std::atomic<int64_t> vdb_skipped{0};  // VDB calls skipped while it was marked down
  std::atomic<int64_t> cache_inserted{0};   // rows put into L1 after a miss
  std::atomic<int64_t> insert_deferred{0};  // of those, rows handed to the background inserter
  std::atomic<int64_t> insert_dropped{0};   // rows not inserted: the inserter's queue was full
  std::atomic<int64_t> cache_evicted{0};    // rows L1 evicted to make room for others
  std::atomic<int64_t> cache_refreshed{0};  // rows re-read from the databases by refreshes
  std::atomic<int64_t> rows_updated{0};     // rows of online updates applied
  std::atomic<int64_t> updates_rejected{0}; // update messages refused (wrong dimension, malformed)
  std::atomic<int64_t> update_failures{0};  // polls of the table's update stream that failed (then backed off)
  std::atomic<int64_t> updates_trimmed{0};  // messages trimmed from the stream before this process read them
  std::atomic<int64_t> vdb_rows_missing{0};  // rows a Redis VDB with no PDB lost since the load (last check)
  std::atomic<int64_t> update_lag_ms{-1};   // publish-to-apply delay of the latest update applied (-1: none yet)

  // Lookup latency histogram: counts of calls taking at most kLatencyBoundsUs[i]
  // microseconds (and more than the previous bound); the last bucket is unbounded.
  static constexpr int kLatencyBuckets = 17;
  static constexpr int64_t kLatencyBoundsUs[kLatencyBuckets - 1] = {
      10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000, 200000, 500000, 1000000};
  std::atomic<int64_t> latency_counts[kLatencyBuckets] = {};
  void RecordLatency(int64_t micros);
};

// Tracks whether a shared database answers. After a failure the tier is
// skipped for a back-off period, so lookups go on from the next tier at full
// speed instead of each waiting for a timeout; the first call after the
// back-off tries it again.
class TierHealth {
 public:
  explicit TierHealth(std::string name) : name_(std::move(name)) {}
  // False while backing off after a failure.
  bool ShouldTry() const;
  void RecordFailure(const std::string& what);
  void RecordSuccess();

 private:
  static constexpr int64_t kBackoffNs = 1'000'000'000;
  const std::string name_;
  std::atomic<int64_t> retry_after_ns_{0};
  std::atomic<bool> down_{false};
};

struct EmbeddingTable {
  std::string model;
  std::string name;
  std::string tag;  // TableTag(model, name)
  double hit_rate_threshold = 0.9;  // a batch hitting L1 at least this often defers its insertions
  double refresh_fraction = 0.0;    // cache_refresh_percentage_per_iteration
  int64_t dim = 0;
  float default_value = 0.0f;
  int64_t num_rows = 0;                   // rows loaded from the table files
  int64_t max_keys_per_call = 0;          // max_batch_size x maxnum_catfeature_query_per_table_per_sample
  bool fused = false;  // fuse_embedding_table, top level and the model's: LookupMany takes one pass
  mutable std::atomic<bool> warned_oversized{false};  // a call above max_keys_per_call was logged
  bool gpu_config = false;                // gpucache on: the config meant L1 for a GPU
  mutable std::atomic<bool> noted_on_cpu{false};      // "no GPU: L1 on CPU" was logged
  std::unique_ptr<EmbeddingCache> cache;  // null when gpucache is false
  mutable TableStats stats;
  // Online updates: odd while one is applied (see UpdateGuard); one at a time.
  mutable std::atomic<uint64_t> update_epoch{0};
  mutable std::mutex update_mutex;  // also guards cache_listeners and cache_refreshers
  // Rows read from the PDB go into a process-local VDB holding it shared, and
  // only if no update began since they were read; an update holds it
  // exclusively, so it never lands between that check and the insert.
  mutable std::shared_mutex write_back_mutex;
  mutable std::atomic<int64_t> vdb_checked_at_ns{0};  // next CheckVolatileDbHoldsTable (steady clock)
  // Caches the server does not own (the GPU pipelines), told of every online update.
  mutable std::vector<std::function<void(const int64_t* keys, int64_t n, const float* rows)>> cache_listeners;
  // And how to refresh them (RefreshCaches); each returns the rows it refreshed.
  mutable std::vector<std::function<int64_t()>> cache_refreshers;
};

class ParameterServer {
 public:
  // Builds the tiers and loads every table's files. Throws HpsError.
  explicit ParameterServer(ParameterServerConfig config);
  ~ParameterServer();

  const ParameterServerConfig& config() const { return config_; }

  // The table, or throws HpsError(kInvalidArgument) naming what is wrong.
  const EmbeddingTable& FindTable(const std::string& model, int64_t table_id) const;

  // The CPU kernels call this before their lookups: logs once per table that a
  // config written for a GPU is served with its L1 in host memory.
  void NoteServedOnCpu(const EmbeddingTable& table) const;

  // Counters of every table as JSON: {"<tag>": {"lookups": ..., ...}, ...}.
  std::string StatsJson() const;

  // Waits until the deferred L1 insertions queued so far are done.
  void WaitForBackgroundWork() const;

  // Re-reads every row cached in L1 from the VDB/PDB and overwrites it, so
  // rows changed in the databases reach the cache. For one model, or all
  // when `model` is empty. Works through each cache in chunks of
  // cache_refresh_percentage_per_iteration of its sets (all at once when 0).
  // The caches the server does not own are refreshed by their refreshers
  // (AddCacheRefresher). Returns the rows refreshed, theirs included. Runs
  // on a timer for models with a refresh_interval.
  int64_t RefreshCaches(const std::string& model) const;

  // Applies an online update of rows (n, dim) to the table: runs
  // write_databases (the tiers this process writes; may be empty when
  // another process wrote them already), then overwrites the rows the L1
  // cache holds, so that no lookup or refresh racing with it can put an
  // older row back into the cache. Updates of one table are serialised.
  void ApplyUpdate(const EmbeddingTable& table, const int64_t* keys, int64_t n, const float* rows,
                   const std::function<void()>& write_databases) const;

  // Registers a cache the server does not own (a GPU pipeline's L1): it is
  // called with the rows of each online update of the table, inside the
  // update (after the databases and the CPU cache have them), and must
  // overwrite the rows it holds. Listeners live as long as the server.
  using CacheListener = std::function<void(const int64_t* keys, int64_t n, const float* rows)>;
  void AddCacheListener(const EmbeddingTable& table, CacheListener listener) const;

  // Registers how to refresh such a cache: RefreshCaches calls it for the
  // table (outside update_mutex, on RefreshCaches' thread) and adds the rows
  // it returns to its result and to cache_refreshed. It must read the rows
  // from the databases (FetchFromDatabases) and keep older rows out of its
  // cache as the CPU refresh does (UpdateGuard); it may throw HpsError.
  // Refreshers live as long as the server.
  using CacheRefresher = std::function<int64_t()>;
  void AddCacheRefresher(const EmbeddingTable& table, CacheRefresher refresher) const;

  // keys: (n) host; out: (n, table.dim) host. Thread-safe.
  void Lookup(const EmbeddingTable& table, const int64_t* keys, int64_t n, float* out,
              const ParallelFor& parallel_for) const;

  // One lookup of each part (several tables of a model, or one table twice),
  // with results equal to a Lookup of each. Where the tables are fused
  // (EmbeddingTable::fused) the L1 probes of every part are one pass over
  // the pool, split by position across tables, and then each table's misses
  // go through its databases; else the parts are looked up one after another.
  // No thread waits for another caller. Thread-safe.
  struct LookupPart {
    const EmbeddingTable* table;
    const int64_t* keys;  // (n) host
    int64_t n;
    float* out;           // (n, table->dim) host
  };
  void LookupMany(const std::vector<LookupPart>& parts, const ParallelFor& parallel_for) const;

  // The tiers below L1, for callers that keep their own L1 (the GPU cache):
  // looks distinct keys (m) up in the VDB, then the PDB, writing rows
  // (m, dim) and found[i] = 1 for each key some tier held; the others get
  // the default. Counts vdb_hits, pdb_hits and defaults. Thread-safe.
  // skip_volatile_db: the caller asked the VDB already.
  void FetchFromDatabases(const EmbeddingTable& table, const int64_t* keys, int64_t m, float* rows,
                          std::vector<char>* found, const ParallelFor& parallel_for,
                          bool skip_volatile_db = false) const;

 private:
  // Refreshes vdb_rows_missing of a table whose only tier is Redis (rate-limited); warns when it grows.
  void CheckVolatileDbHoldsTable(const EmbeddingTable& table) const;
  void LoadTable(const ModelConfig& model, int64_t table_id, EmbeddingTable* table);

  // "hash_map + rocks_db", for logs.
  std::string TierNames() const;

  // One log line per table with its counters.
  void LogStats() const;
  // The tiers' memory figures of one table as JSON fields, each followed by ", ".
  std::string MemoryFields(const std::string& tag) const;

  // Puts rows fetched below L1 into the cache with the batch's LRU stamp:
  // inline for a batch whose L1
  // hit rate is below the table's hit_rate_threshold, else on the background
  // inserter (dropped if its queue is full). Takes the vectors' contents.
  // Lookup with L1: the cache for every position, the databases for the keys it missed.
  void LookupThroughCache(const EmbeddingTable& table, const int64_t* keys, int64_t n, float* out,
                          const ParallelFor& parallel_for) const;
  // Counts a call of n keys (and warns once about one above max_keys_per_call).
  void CountLookup(const EmbeddingTable& table, int64_t n) const;
  // After L1: the rows of the positions it missed (n positions queried, the
  // batch's LRU stamp), from the databases or the default, and their
  // insertion into the cache.
  void ResolveMisses(const EmbeddingTable& table, int64_t n, float* out, const EmbeddingCache::PositionMisses& misses,
                     uint64_t stamp, const ParallelFor& parallel_for) const;
  // Lookup without L1: each distinct key from the databases; an in-process
  // VDB (InProcess) first answers every position it holds, straight into
  // `out`, and the distinct keys of the rest go on to the PDB.
  void LookupDatabases(const EmbeddingTable& table, const int64_t* keys, int64_t n, float* out,
                       const ParallelFor& parallel_for) const;
  void InsertIntoCache(const EmbeddingTable& table, double hit_rate, uint64_t stamp, uint64_t epoch_seen,
                       std::vector<int64_t>* keys, std::vector<float>* rows) const;

  ParameterServerConfig config_;
  std::unique_ptr<DatabaseBackend> volatile_db_;    // L2, may be null
  bool volatile_db_shared_ = false;  // a Redis that other processes read and update too
  mutable TierHealth volatile_health_{"volatile_db"};
  std::unique_ptr<DatabaseBackend> persistent_db_;  // L3, may be null
  std::map<std::string, std::vector<std::unique_ptr<EmbeddingTable>>> tables_;  // by model
  // Declared after the tables and databases they use, so they stop first.
  std::unique_ptr<BackgroundWorker> inserter_;      // deferred L1 insertions
  std::vector<std::unique_ptr<PeriodicTask>> timers_;  // statistics log, cache refresh
  std::unique_ptr<UpdateConsumer> updates_;            // online updates; null without an update_source
};

// The process-wide set of parameter servers, one per distinct canonical
// configuration. Many ops (and SavedModels) sharing a configuration share
// one server, created once even when first calls race.
class ParameterServerRegistry {
 public:
  static ParameterServerRegistry& Global();

  // Returns the handle of the server for `canonical_json`, creating and
  // loading it on first use. A failed creation is not remembered: the next
  // call tries again. Throws HpsError.
  std::string GetOrCreate(const std::string& canonical_json);

  // The server behind a handle; throws HpsError(kFailedPrecondition).
  std::shared_ptr<const ParameterServer> Find(const std::string& handle) const;

  // How many servers were created so far (for tests of once-only init).
  int64_t num_created() const;

  // Every server created so far.
  std::vector<std::shared_ptr<const ParameterServer>> All() const;

  // hps.Init: the server behind `handle`, read from the config file at
  // `config_path`, serves each of its models for the process (see
  // ResolveBound). A later Init of the same file replaces the earlier one.
  void Bind(const std::string& config_path, const std::string& handle);

  // The handle hps.Init bound for `model_name`, or "" if none did. Throws
  // HpsError(kFailedPrecondition) naming the files when Inits of two
  // different files name the model.
  std::string ResolveBound(const std::string& model_name) const;

  // The handle of the server hps.Init bound for the file at `config_path`
  // (compared as canonical paths), or "".
  std::string BoundForFile(const std::string& config_path) const;

  // A random id of this process, which traced graphs carry so that an op
  // can tell a graph traced here from one loaded from another process's
  // export (ops/hps_kernels.cc, TfHpsInit).
  static const std::string& ProcessToken();

 private:
  struct Binding {
    std::string config_path;  // canonical
    std::string handle;
    std::vector<std::string> models;
  };
  struct Entry {
    std::mutex init_mutex;
    std::string handle;
    std::shared_ptr<const ParameterServer> server;
  };
  mutable std::mutex mutex_;
  std::map<std::string, std::shared_ptr<Entry>> by_config_;
  std::map<std::string, std::shared_ptr<const ParameterServer>> by_handle_;
  std::vector<Binding> bindings_;  // one per config file hps.Init read, in Init order
  int64_t num_created_ = 0;
};

}  // namespace tf_hps

#endif  // TF_HPS_CORE_PARAMETER_SERVER_H_
