#include "core/parameter_server.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <exception>
#include <filesystem>
#include <memory>
#include <numeric>
#include <random>
#include <thread>

#include "base/error.h"
#include "base/log.h"
#include "base/row_copy.h"
#include "base/unique_keys.h"
#include "core/table_file.h"
#include "storage/factory.h"

namespace tf_hps {
namespace {

constexpr int64_t kLoadChunkRows = 1 << 16;
// Outputs of at least this size are written with non-temporal stores: half
// a server's L3 slice or more, so the next op reads them from memory either
// way, and plain stores would first read every line they write (about 20 %
// faster lookups at 32 MiB; at 8 MiB, which L3 holds, plain stores win).
constexpr size_t kStreamOutputBytes = size_t{16} << 20;
// How LookupThroughCache splits a batch over the worker pool: ranges of at
// least kMinPositionsPerRange positions (below that, waking a worker costs
// about what it saves), and no more ranges than the machine has cores (at
// most kMaxRanges): ranges beyond the cores only wait for one (16k-key calls
// on 2 cores: 2 ranges take about 0.75x the time of one, and vary less than
// 8 ranges of 2k). Each range de-duplicates its own keys, so a key two
// ranges miss is fetched once (ResolveMisses) but listed by both.
constexpr int64_t kMinPositionsPerRange = 8192;
constexpr int64_t kMaxRanges = 16;
// LookupMany's ranges span tables, so they can be shorter: a worker's share
// of a fused call is many tables' positions.
constexpr int64_t kMinPositionsPerFusedRange = 2048;
constexpr int64_t kRangeCost = int64_t{1} << 24;  // a range is a unit of work: never split further

std::string JoinInts(const std::vector<int64_t>& values) {
  std::string s;
  for (int64_t v : values) s += (s.empty() ? "" : ", ") + std::to_string(v);
  return "[" + s + "]";
}

[[noreturn]] void ThrowUnimplemented(const std::string& what) {
  throw HpsError(ErrorCode::kUnimplemented, what);
}

}  // namespace

void SerialFor(int64_t total, int64_t, const std::function<void(int64_t, int64_t)>& work) {
  if (total > 0) work(0, total);
}

ParameterServer::ParameterServer(ParameterServerConfig config) : config_(std::move(config)) {
  if (config_.update_source.type == "kafka_message_queue")
    ThrowUnimplemented("update_source.type 'kafka_message_queue' is not available in this build; "
                       "use \"redis_stream\" (docs/updates.md)");
  // A serving node comes up while its Redis is down: lookups go on from the PDB or the default.
  volatile_db_ = MakeVolatileBackend(config_.volatile_db, /*start_if_unreachable=*/true);
  volatile_db_shared_ = volatile_db_ && config_.volatile_db.type == "redis_cluster";
  persistent_db_ = MakePersistentBackend(config_.persistent_db);
  if (!volatile_db_ && !persistent_db_)
    ThrowInvalidArgument("config: volatile_db and persistent_db are both disabled, so no tier would hold "
                         "the table rows; enable volatile_db (e.g. {\"type\": \"hash_map\"})");

  std::vector<const EmbeddingTable*> all_tables;
  for (const ModelConfig& model : config_.models) {
    auto& tables = tables_[model.model];
    for (int64_t t = 0; t < model.num_tables(); ++t) {
      auto table = std::make_unique<EmbeddingTable>();
      table->model = model.model;
      table->name = model.embedding_table_names[t];
      table->tag = TableTag(table->model, table->name);
      table->dim = model.embedding_vecsize_per_table[t];
      all_tables.push_back(table.get());
      tables.push_back(std::move(table));
    }
  }
  // The update streams' positions are taken before the tables load, so that
  // updates published meanwhile are applied after.
  if (config_.update_source.type == "redis_stream") {
    UpdateConsumer::Tiers tiers;
    tiers.volatile_db = volatile_db_.get();
    tiers.volatile_db_shared = volatile_db_shared_;
    tiers.volatile_filters = config_.volatile_db.update_filters;
    if (!config_.persistent_db.read_only) tiers.persistent_db = persistent_db_.get();
    tiers.persistent_path = config_.persistent_db.path;
    tiers.persistent_filters = config_.persistent_db.update_filters;
    updates_ = std::make_unique<UpdateConsumer>(*this, config_.update_source, std::move(tiers), all_tables);
  }
  for (const ModelConfig& model : config_.models) {
    Log(LogLevel::kInfo, "model '" + model.model + "': deployed_device_list " +
                             JoinInts(model.deployed_device_list));
    auto& tables = tables_[model.model];
    for (int64_t t = 0; t < model.num_tables(); ++t) {
      EmbeddingTable* table = tables[t].get();
      LoadTable(model, t, table);
      table->hit_rate_threshold = model.hit_rate_threshold;
      table->refresh_fraction = model.cache_refresh_percentage_per_iteration;
    }
  }
  inserter_ = std::make_unique<BackgroundWorker>(/*max_queued=*/64);
  if (config_.stats_log_interval_seconds > 0) {
    const auto interval = std::chrono::milliseconds(static_cast<int64_t>(config_.stats_log_interval_seconds * 1000));
    timers_.push_back(std::make_unique<PeriodicTask>(interval, interval, [this] { LogStats(); }));
  }
  for (const ModelConfig& model : config_.models) {
    if (model.refresh_interval <= 0) continue;
    const auto delay = std::chrono::milliseconds(static_cast<int64_t>(model.refresh_delay * 1000));
    const auto interval = std::chrono::milliseconds(static_cast<int64_t>(model.refresh_interval * 1000));
    timers_.push_back(std::make_unique<PeriodicTask>(
        delay, interval, [this, name = model.model] { RefreshCaches(name); }));
  }
  if (updates_) updates_->Start();
}

ParameterServer::~ParameterServer() = default;

std::string ParameterServer::TierNames() const {
  std::string names;
  if (volatile_db_) names += volatile_db_->name();
  if (persistent_db_) names += std::string(names.empty() ? "" : " + ") + persistent_db_->name();
  return names;
}

void ParameterServer::LoadTable(const ModelConfig& model, int64_t t, EmbeddingTable* table) {
  const auto start = std::chrono::steady_clock::now();
  table->model = model.model;
  table->name = model.embedding_table_names[t];
  table->tag = TableTag(table->model, table->name);
  table->dim = model.embedding_vecsize_per_table[t];
  table->default_value = static_cast<float>(model.default_value_for_each_table[t]);
  table->max_keys_per_call = model.max_batch_size * model.maxnum_catfeature_query_per_table_per_sample[t];
  table->fused = config_.fuse_embedding_table && model.fuse_embedding_table;

  // Which tiers take the rows of the table files at start-up. A shared Redis
  // or a RocksDB with initialize_after_startup false, and a read-only RocksDB, are filled
  // ahead of time (python -m tf_hps ingest) and only read here.
  const bool fill_vdb = volatile_db_ && config_.volatile_db.initialize_after_startup;
  const bool fill_pdb =
      persistent_db_ && !config_.persistent_db.read_only && config_.persistent_db.initialize_after_startup;
  // With a PDB behind it, the VDB starts with the first initial_cache_rate of the rows.
  const double vdb_share = persistent_db_ ? config_.volatile_db.initial_cache_rate : 1.0;

  TableFolderInfo info;
  if (fill_vdb || fill_pdb) {
    info = InspectTableFolder(model.sparse_files[t], table->dim);
    table->num_rows = info.num_rows;
  } else {
    DatabaseBackend* deepest = persistent_db_ ? persistent_db_.get() : volatile_db_.get();
    bool unknown = false;
    try {
      table->num_rows = deepest->Size(table->tag);
    } catch (const HpsError& e) {
      if (deepest != volatile_db_.get() || e.code() != ErrorCode::kUnavailable) throw;
      volatile_health_.RecordFailure(e.what());  // rows unknown: L1 sized for none; the default answers
      unknown = true;
      Log(LogLevel::kWarning, "table " + table->tag + ": its rows are in the " + deepest->name() +
                                  ", which does not answer; the default answers until it does");
    }
    if (table->num_rows == 0 && !unknown)
      ThrowNotFound("table " + table->tag + " is not in the " + deepest->name() +
                    ", and the config does not load it at start-up; ingest it first (python -m tf_hps ingest)");
  }
  table->gpu_config = model.gpucache;
  if (model.gpucache) {
    const bool whole_table = model.embedding_cache_type != "dynamic" && model.embedding_cache_type != "stochastic";
    const int64_t rows = whole_table ? table->num_rows
                                     : std::max<int64_t>(64, static_cast<int64_t>(std::ceil(
                                                                 model.gpucacheper * table->num_rows)));
    table->cache = std::make_unique<EmbeddingCache>(rows, table->dim);
  }
  const std::string l1 = table->cache ? "CPU cache of " + std::to_string(table->cache->capacity()) + " rows"
                                       : std::string("none (gpucache is false)");
  if (!fill_vdb && !fill_pdb) {
    Log(LogLevel::kInfo, "table " + table->tag + ": " + std::to_string(table->num_rows) +
                             " rows found in the " + TierNames() + " (not loaded from files); L1: " + l1);
    return;
  }

  // Warm-up fills the cache with the first rows of the file, as HPS does.
  const bool warm = table->cache && model.init_ec && model.cache_refresh_percentage_per_iteration > 0;
  const uint64_t warm_stamp = table->cache ? table->cache->NextStamp() : 0;
  const int64_t vdb_rows = static_cast<int64_t>(std::ceil(vdb_share * info.num_rows));
  const int64_t report_every = std::max<int64_t>(info.num_rows / 10, 1 << 22);
  int64_t loaded = 0;
  bool vdb_down = false;  // a shared VDB that does not answer: the rest of its share is not loaded
  // A key twice in the files is refused before any row is written (8 bytes per row meanwhile).
  const std::vector<int64_t> file_keys = DistinctTableKeys(info, !config_.supportlonglong);
  // The files are the truth at start-up: keys a RocksDB kept from an earlier load that the files no
  // longer hold go once the load is done.
  const bool retain = fill_pdb && persistent_db_->HasTable(table->tag);
  ReadTableFolder(info, kLoadChunkRows, !config_.supportlonglong, [&](const int64_t* keys, const float* vectors,
                                                                     int64_t n) {
    if (fill_pdb) persistent_db_->Insert(table->tag, n, keys, vectors, table->dim);
    if (fill_vdb && !vdb_down && loaded < vdb_rows) {
      try {
        // A shared Redis may hold rows that online updates wrote since the files were made: they stay.
        volatile_db_->InsertUnlessUpdated(table->tag, std::min(n, vdb_rows - loaded), keys, vectors, table->dim,
                                          /*only_absent=*/false);
      } catch (const HpsError& e) {
        if (e.code() != ErrorCode::kUnavailable) throw;
        vdb_down = true;
        volatile_health_.RecordFailure(e.what());
        Log(LogLevel::kWarning, "table " + table->tag + ": not loaded into the " + volatile_db_->name() +
                                    ", which does not answer: lookups go to " +
                                    (persistent_db_ ? "the " + std::string(persistent_db_->name()) : "the default") +
                                    " until it does (rows it lacks then come from there)");
      }
    }
    if (warm && loaded < table->cache->capacity()) {
      const int64_t take = std::min(n, table->cache->capacity() - loaded);
      table->cache->Replace(keys, take, vectors, warm_stamp);
    }
    loaded += n;
    if (loaded % report_every < n && loaded < info.num_rows)
      Log(LogLevel::kInfo, "table " + table->tag + ": loaded " + std::to_string(loaded) + " of " +
                               std::to_string(info.num_rows) + " rows");
  });
  if (retain) {
    const int64_t removed = persistent_db_->RetainOnly(table->tag, static_cast<int64_t>(file_keys.size()),
                                                       file_keys.data());
    if (removed > 0)
      Log(LogLevel::kInfo, "table " + table->tag + ": " + std::to_string(removed) + " rows of an earlier load " +
                               "that the table files no longer hold were removed from the " +
                               persistent_db_->name());
  }
  if (fill_pdb) persistent_db_->FinishLoad(table->tag);
  // An in-process hash map as the deepest tier that could not keep every row (overflow_margin) would
  // answer the default for the rows it evicted: no tier below holds them. Refuse it.
  if (fill_vdb && !vdb_down && !persistent_db_ && !volatile_db_shared_) {
    const int64_t kept = volatile_db_->Size(table->tag);
    if (kept < vdb_rows)
      ThrowInvalidArgument("table " + table->tag + ": the volatile_db keeps " + std::to_string(kept) + " of its " +
                           std::to_string(vdb_rows) + " rows (overflow_margin " +
                           std::to_string(config_.volatile_db.overflow_margin) + " per partition, " +
                           std::to_string(config_.volatile_db.num_partitions) +
                           " partitions) and there is no persistent_db: the others would answer the default; "
                           "raise overflow_margin, or add a persistent_db that holds every row");
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  Log(LogLevel::kInfo, "table " + table->tag + ": " + std::to_string(info.num_rows) + " rows of dimension " +
                           std::to_string(table->dim) + " loaded into the " +
                           (vdb_down ? std::string(persistent_db_ ? persistent_db_->name() : "L1 only") : TierNames()) +
                           " in " +
                           std::to_string(seconds) + " s; L1: " + l1);
}

void ParameterServer::NoteServedOnCpu(const EmbeddingTable& table) const {
  if (!table.gpu_config || table.noted_on_cpu.exchange(true)) return;
  Log(LogLevel::kInfo, "table " + table.tag + ": no GPU: L1 on CPU (the config's GPU cache is kept in host memory, " +
                           std::to_string(table.cache ? table.cache->capacity() : 0) + " rows)");
}

const EmbeddingTable& ParameterServer::FindTable(const std::string& model, int64_t table_id) const {
  auto it = tables_.find(model);
  if (it == tables_.end()) {
    std::string names;
    for (const auto& [name, tables] : tables_) names += (names.empty() ? "'" : ", '") + name + "'";
    ThrowInvalidArgument("model '" + model + "' is not in the config (models: " + names + ")");
  }
  if (table_id < 0 || table_id >= static_cast<int64_t>(it->second.size()))
    ThrowInvalidArgument("table_id " + std::to_string(table_id) + " is out of range: model '" + model +
                         "' has " + std::to_string(it->second.size()) + " table(s)");
  return *it->second[table_id];
}

void ParameterServer::CountLookup(const EmbeddingTable& table, int64_t n) const {
  if (n > table.max_keys_per_call && !table.warned_oversized.exchange(true))
    Log(LogLevel::kWarning,
        "table " + table.tag + ": a lookup of " + std::to_string(n) + " keys, more than max_batch_size x "
        "maxnum_catfeature_query_per_table_per_sample = " + std::to_string(table.max_keys_per_call) +
        "; served in full (HPS refuses such calls; GPU caches size their buffers by it). Logged once per table.");
  table.stats.lookups.fetch_add(1, std::memory_order_relaxed);
  table.stats.keys.fetch_add(n, std::memory_order_relaxed);
}

void ParameterServer::Lookup(const EmbeddingTable& table, const int64_t* keys, int64_t n, float* out,
                             const ParallelFor& parallel_for) const {
  if (n <= 0) return;
  const auto start = std::chrono::steady_clock::now();
  CountLookup(table, n);
  if (table.cache) {
    LookupThroughCache(table, keys, n, out, parallel_for);
  } else {
    LookupDatabases(table, keys, n, out, parallel_for);
  }
  table.stats.RecordLatency(
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - start).count());
}

void ParameterServer::LookupMany(const std::vector<LookupPart>& parts, const ParallelFor& parallel_for) const {
  const bool fused = std::all_of(parts.begin(), parts.end(), [](const LookupPart& p) { return p.table->fused; });
  if (!fused || parts.size() == 1) {
    for (const LookupPart& part : parts) Lookup(*part.table, part.keys, part.n, part.out, parallel_for);
    return;
  }
  const auto start = std::chrono::steady_clock::now();
  const int64_t num_parts = static_cast<int64_t>(parts.size());
  // The positions of every part with an L1, end to end, split into ranges as
  // LookupThroughCache splits one table's; a range may span tables, so it is
  // a list of segments, each one part's positions [begin, end).
  struct Segment {
    int64_t part, begin, end;
  };
  thread_local std::vector<Segment> this_thread_segments;
  std::vector<Segment>& segments = this_thread_segments;
  segments.clear();
  thread_local std::vector<int64_t> this_thread_range_starts;  // first segment of each range, then the end
  std::vector<int64_t>& range_starts = this_thread_range_starts;
  range_starts.clear();
  std::vector<uint64_t> stamps(num_parts, 0);
  int64_t total = 0;
  for (int64_t i = 0; i < num_parts; ++i) {
    if (parts[i].n <= 0) continue;
    CountLookup(*parts[i].table, parts[i].n);
    parts[i].table->stats.fused_lookups.fetch_add(1, std::memory_order_relaxed);
    if (parts[i].table->cache) total += parts[i].n;
  }
  static const int64_t max_ranges =
      std::clamp<int64_t>(static_cast<int64_t>(std::thread::hardware_concurrency()), 1, kMaxRanges);
  const int64_t ranges = std::clamp<int64_t>(total / kMinPositionsPerFusedRange, 1, max_ranges);
  {
    int64_t offset = 0;  // of the current part's first position among all
    int64_t i = 0;
    for (int64_t r = 0; r < ranges; ++r) {
      const int64_t range_begin = total * r / ranges, range_end = total * (r + 1) / ranges;
      range_starts.push_back(static_cast<int64_t>(segments.size()));
      while (i < num_parts && offset < range_end) {
        const LookupPart& part = parts[i];
        if (part.n <= 0 || !part.table->cache) {
          ++i;
          continue;
        }
        const int64_t begin = std::max(range_begin, offset) - offset;
        const int64_t end = std::min(range_end, offset + part.n) - offset;
        if (begin < end) segments.push_back({i, begin, end});
        if (offset + part.n <= range_end) {
          offset += part.n;
          ++i;
        } else {
          break;  // the part goes on in the next range
        }
      }
    }
    range_starts.push_back(static_cast<int64_t>(segments.size()));
  }
  // One LRU stamp per table for the whole call, as a Lookup takes one.
  for (int64_t i = 0; i < num_parts; ++i)
    if (parts[i].n > 0 && parts[i].table->cache) stamps[i] = parts[i].table->cache->NextStamp();
  thread_local std::vector<EmbeddingCache::PositionMisses> this_thread_segment_misses;
  std::vector<EmbeddingCache::PositionMisses>& segment_misses = this_thread_segment_misses;
  if (segment_misses.size() < segments.size()) segment_misses.resize(segments.size());
  if (total > 0) parallel_for(ranges, kRangeCost, [&](int64_t first_range, int64_t end_range) {
    for (int64_t s = range_starts[first_range]; s < range_starts[end_range]; ++s) {
      const Segment& seg = segments[s];
      const LookupPart& part = parts[seg.part];
      EmbeddingCache::PositionMisses& misses = segment_misses[s];
      misses.Clear();
      const bool stream =
          static_cast<size_t>(part.n) * part.table->dim * sizeof(float) >= kStreamOutputBytes;
      part.table->cache->QueryPositions(part.keys, seg.begin, seg.end, part.out, stamps[seg.part], &misses, stream);
    }
  });
  // Each table's misses, its segments' put together, through its databases:
  // the tables on the pool, each on one worker, when several have misses
  // (else the one table's fetch is split over the pool, as in Lookup).
  std::vector<int64_t> first_segment(num_parts + 1, static_cast<int64_t>(segments.size()));
  for (int64_t s = static_cast<int64_t>(segments.size()) - 1; s >= 0; --s) first_segment[segments[s].part] = s;
  for (int64_t i = num_parts - 1; i >= 0; --i) first_segment[i] = std::min(first_segment[i], first_segment[i + 1]);
  // Parts with work below L1: small ones (each on one worker), and large
  // ones, whose fetches are split over the pool as in Lookup.
  std::vector<int64_t> small, large;
  int64_t small_positions = 0;  // what the small ones missed (every position of a table without L1)
  for (int64_t i = 0; i < num_parts; ++i) {
    if (parts[i].n <= 0) continue;
    int64_t missed = parts[i].table->cache ? 0 : parts[i].n;
    for (int64_t s = first_segment[i]; s < first_segment[i + 1]; ++s)
      missed += static_cast<int64_t>(segment_misses[s].positions.size());
    if (missed >= kMinPositionsPerRange) {
      large.push_back(i);
    } else if (missed > 0) {
      small.push_back(i);
      small_positions += missed;
    } else {
      parts[i].table->stats.l1_hits.fetch_add(parts[i].n, std::memory_order_relaxed);
    }
  }
  auto resolve = [&](int64_t i, const ParallelFor& inner) {
    const LookupPart& part = parts[i];
    if (!part.table->cache) {
      LookupDatabases(*part.table, part.keys, part.n, part.out, inner);
      return;
    }
    thread_local EmbeddingCache::PositionMisses this_thread_part_misses;
    EmbeddingCache::PositionMisses& merged = this_thread_part_misses;
    merged.Clear();
    for (int64_t s = first_segment[i]; s < first_segment[i + 1]; ++s) merged.Append(segment_misses[s]);
    ResolveMisses(*part.table, part.n, part.out, merged, stamps[i], inner);
  };
  // (Tables of a few misses each cost less than waking a worker.)
  if (small.size() >= 2 && small_positions >= kMinPositionsPerFusedRange / 8) {
    // A failure on a worker is rethrown here, on the caller's thread.
    std::mutex failure_mutex;
    std::exception_ptr failure;
    parallel_for(static_cast<int64_t>(small.size()), kRangeCost, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        try {
          resolve(small[k], SerialFor);
        } catch (...) {
          std::lock_guard<std::mutex> lock(failure_mutex);
          if (!failure) failure = std::current_exception();
        }
      }
    });
    if (failure) std::rethrow_exception(failure);
  } else {
    for (int64_t i : small) resolve(i, parallel_for);
  }
  for (int64_t i : large) resolve(i, parallel_for);
  const int64_t micros =
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - start).count();
  for (const LookupPart& part : parts)
    if (part.n > 0) part.table->stats.RecordLatency(micros);
}

void ParameterServer::LookupThroughCache(const EmbeddingTable& table, const int64_t* keys, int64_t n, float* out,
                                         const ParallelFor& parallel_for) const {
  const size_t row_bytes = table.dim * sizeof(float);
  EmbeddingCache& cache = *table.cache;
  // One LRU stamp for the whole batch: its misses, inserted below, are as
  // recent as its hits, so they never evict the rows this batch just used.
  const uint64_t stamp = cache.NextStamp();

  // L1, each range of positions on its own thread: every position of a cached
  // key gets its row; each distinct key of a range is probed once. Buffers of
  // this thread's previous lookups are reused (parallel_for's workers reach
  // the caller's through this reference, never by its thread_local name).
  thread_local EmbeddingCache::PositionMisses this_thread_misses;
  EmbeddingCache::PositionMisses& misses = this_thread_misses;
  misses.Clear();
  // An output much larger than the CPU caches is written around them.
  const bool stream = static_cast<size_t>(n) * row_bytes >= kStreamOutputBytes;
  // Ranges: see kMinPositionsPerRange.
  static const int64_t max_ranges =
      std::clamp<int64_t>(static_cast<int64_t>(std::thread::hardware_concurrency()), 1, kMaxRanges);
  const int64_t ranges = std::clamp<int64_t>(n / kMinPositionsPerRange, 1, max_ranges);
  std::mutex merge_mutex;
  parallel_for(ranges, kRangeCost, [&](int64_t first_range, int64_t end_range) {
    const int64_t begin = n * first_range / ranges, end = n * end_range / ranges;
    thread_local EmbeddingCache::PositionMisses range_misses;
    range_misses.Clear();
    cache.QueryPositions(keys, begin, end, out, stamp, &range_misses, stream);
    std::lock_guard<std::mutex> lock(merge_mutex);
    misses.Append(range_misses);
  });
  ResolveMisses(table, n, out, misses, stamp, parallel_for);
}

void ParameterServer::ResolveMisses(const EmbeddingTable& table, int64_t n, float* out,
                                    const EmbeddingCache::PositionMisses& misses, uint64_t stamp,
                                    const ParallelFor& parallel_for) const {
  const int64_t dim = table.dim;
  const size_t row_bytes = dim * sizeof(float);
  const int64_t missed_positions = static_cast<int64_t>(misses.positions.size());
  table.stats.l1_hits.fetch_add(n - missed_positions, std::memory_order_relaxed);
  if (missed_positions == 0) return;

  // Lower tiers, then the default, for what L1 did not hold: each key once
  // (two ranges may have missed the same key).
  thread_local UniqueKeys this_thread_unique;
  UniqueKeys& unique = this_thread_unique;
  Dedup(misses.keys.data(), static_cast<int64_t>(misses.keys.size()), &unique);
  const int64_t m = static_cast<int64_t>(unique.keys.size());
  table.stats.missed_keys.fetch_add(m, std::memory_order_relaxed);
  std::unique_ptr<float[]> fetched(new float[m * dim]);  // every row is written below
  std::vector<char> found(m, 0);
  const uint64_t epoch_seen = table.update_epoch.load(std::memory_order_acquire);
  FetchFromDatabases(table, unique.keys.data(), m, fetched.get(), &found, parallel_for);
  for (int64_t p = 0; p < missed_positions; ++p)
    std::memcpy(out + misses.positions[p] * dim, fetched.get() + unique.index[misses.key_of[p]] * dim, row_bytes);
  std::vector<int64_t> insert_keys;
  std::vector<float> insert_rows;
  for (int64_t j = 0; j < m; ++j) {
    if (!found[j]) continue;  // defaults are never cached
    insert_keys.push_back(unique.keys[j]);
    insert_rows.insert(insert_rows.end(), fetched.get() + j * dim, fetched.get() + (j + 1) * dim);
  }
  // The batch's hit rate over its distinct keys (per range: a key two ranges
  // asked for counts in both).
  const double hit_rate = 1.0 - static_cast<double>(misses.keys.size()) / std::max<int64_t>(misses.distinct, 1);
  if (!insert_keys.empty()) InsertIntoCache(table, hit_rate, stamp, epoch_seen, &insert_keys, &insert_rows);
}

void ParameterServer::LookupDatabases(const EmbeddingTable& table, const int64_t* keys, int64_t n, float* out,
                                      const ParallelFor& parallel_for) const {
  const int64_t dim = table.dim;
  const size_t row_bytes = dim * sizeof(float);
  // An in-process VDB is handed the batch as it is (DatabaseBackend::InProcess):
  // shards of positions on the pool, each writing its rows into `out`.
  DatabaseBackend* const in_process = volatile_db_ && volatile_db_->InProcess() ? volatile_db_.get() : nullptr;
  std::vector<int64_t> rest;  // positions the in-process VDB lacked
  if (in_process != nullptr) {
    // Ranges of at least the backend's minimum, no more than the cores (as
    // L1's: each range is one pipelined pass over its positions).
    static const int64_t max_ranges =
        std::clamp<int64_t>(static_cast<int64_t>(std::thread::hardware_concurrency()), 1, kMaxRanges);
    const int64_t shards =
        std::clamp<int64_t>(n / std::max<int64_t>(1, in_process->MinRowsPerFetchShard()), 1, max_ranges);
    // A large output is written around the CPU caches, as L1 writes it.
    const bool stream = static_cast<size_t>(n) * row_bytes >= kStreamOutputBytes;
    std::mutex merge_mutex;
    std::exception_ptr failure;
    auto fetch_shard = [&](int64_t shard) {
      const int64_t begin = n * shard / shards, end = n * (shard + 1) / shards;
      try {
        thread_local std::vector<int64_t> absent;
        absent.clear();
        in_process->FetchRows(table.tag, end - begin, keys + begin, out + begin * dim, dim, &absent, stream);
        if (absent.empty()) return;
        std::lock_guard<std::mutex> lock(merge_mutex);
        for (int64_t j : absent) rest.push_back(begin + j);
      } catch (...) {
        std::lock_guard<std::mutex> lock(merge_mutex);
        if (!failure) failure = std::current_exception();
      }
    };
    if (shards == 1) {
      fetch_shard(0);
    } else {
      parallel_for(shards, kRangeCost, [&](int64_t begin, int64_t end) {
        for (int64_t shard = begin; shard < end; ++shard) fetch_shard(shard);
      });
    }
    if (failure) std::rethrow_exception(failure);
    const int64_t answered = n - static_cast<int64_t>(rest.size());
    // missed_keys: the positions answered here, then each distinct key of the rest once.
    table.stats.vdb_hits.fetch_add(answered, std::memory_order_relaxed);
    table.stats.missed_keys.fetch_add(answered, std::memory_order_relaxed);
    if (rest.empty()) return;
    std::sort(rest.begin(), rest.end());
  }
  // The keys left (all of them, or those the in-process VDB lacked), each distinct one once.
  std::vector<int64_t> rest_keys(rest.size());
  for (size_t j = 0; j < rest.size(); ++j) rest_keys[j] = keys[rest[j]];
  const int64_t* left = in_process != nullptr ? rest_keys.data() : keys;
  const int64_t num_left = in_process != nullptr ? static_cast<int64_t>(rest.size()) : n;
  thread_local UniqueKeys this_thread_unique;
  UniqueKeys& unique = this_thread_unique;
  Dedup(left, num_left, &unique);
  const int64_t u = static_cast<int64_t>(unique.keys.size());
  table.stats.missed_keys.fetch_add(u, std::memory_order_relaxed);
  std::unique_ptr<float[]> fetched(new float[u * dim]);  // every row is written below
  std::vector<char> found(u, 0);
  FetchFromDatabases(table, unique.keys.data(), u, fetched.get(), &found, parallel_for,
                     /*skip_volatile_db=*/in_process != nullptr);
  parallel_for(num_left, 10 + dim / 4, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      std::memcpy(out + (in_process != nullptr ? rest[i] : i) * dim, fetched.get() + unique.index[i] * dim,
                  row_bytes);
  });
}

void ParameterServer::InsertIntoCache(const EmbeddingTable& table, double hit_rate, uint64_t stamp,
                                      uint64_t epoch_seen, std::vector<int64_t>* keys,
                                      std::vector<float>* rows) const {
  const int64_t count = static_cast<int64_t>(keys->size());
  const UpdateGuard guard{&table.update_epoch, epoch_seen};
  if (hit_rate < table.hit_rate_threshold) {
    // A cold batch: insert now, so the next batch finds its rows.
    table.stats.cache_evicted.fetch_add(table.cache->Replace(keys->data(), count, rows->data(), stamp, &guard),
                                        std::memory_order_relaxed);
    table.stats.cache_inserted.fetch_add(count, std::memory_order_relaxed);
    return;
  }
  // A warm batch: the answer is already exact, so the insertion leaves the lookup path.
  auto task = [&table, keys = std::move(*keys), rows = std::move(*rows), count, stamp, guard] {
    table.stats.cache_evicted.fetch_add(table.cache->Replace(keys.data(), count, rows.data(), stamp, &guard),
                                        std::memory_order_relaxed);
    table.stats.cache_inserted.fetch_add(count, std::memory_order_relaxed);
  };
  if (inserter_->TrySubmit(std::move(task))) {
    table.stats.insert_deferred.fetch_add(count, std::memory_order_relaxed);
  } else {
    table.stats.insert_dropped.fetch_add(count, std::memory_order_relaxed);
  }
}

void ParameterServer::FetchFromDatabases(const EmbeddingTable& table, const int64_t* keys, int64_t m,
                                         float* rows, std::vector<char>* found, const ParallelFor& parallel_for,
                                         bool skip_volatile_db) const {
  const int64_t dim = table.dim;
  const size_t row_bytes = dim * sizeof(float);
  std::vector<int64_t> pending(m);  // positions not found yet
  std::iota(pending.begin(), pending.end(), 0);
  std::mutex merge_mutex;
  const uint64_t epoch_at_read = table.update_epoch.load(std::memory_order_acquire);
  for (DatabaseBackend* tier : {skip_volatile_db ? nullptr : volatile_db_.get(), persistent_db_.get()}) {
    if (tier == nullptr || pending.empty()) continue;
    const bool is_vdb = tier == volatile_db_.get();
    if (is_vdb && !volatile_health_.ShouldTry()) {
      table.stats.vdb_skipped.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    const int64_t p = static_cast<int64_t>(pending.size());
    // While every key is pending (the first tier asked), pending is 0..m-1:
    // the tier writes straight into rows; a later tier into a buffer of its
    // keys' rows. (Rows of keys a tier lacks are written by the next tier or
    // the default.)
    const bool direct = p == m;
    const int64_t* tier_keys = keys;
    std::vector<int64_t> tier_key_buffer;
    std::unique_ptr<float[]> tier_row_buffer;
    if (!direct) {
      tier_key_buffer.resize(p);
      for (int64_t j = 0; j < p; ++j) tier_key_buffer[j] = keys[pending[j]];
      tier_keys = tier_key_buffer.data();
      tier_row_buffer.reset(new float[p * dim]);
    }
    float* const tier_rows = direct ? rows : tier_row_buffer.get();
    std::vector<int64_t> still_missing;  // positions into pending
    try {
      // Shards of at least the tier's minimum, each on its own task; a
      // failure on a worker thread is rethrown here, on the caller's.
      const int64_t shards = std::clamp<int64_t>(p / std::max<int64_t>(1, tier->MinRowsPerFetchShard()), 1, 64);
      std::exception_ptr failure;
      auto fetch_shard = [&](int64_t shard) {
        const int64_t begin = p * shard / shards, end = p * (shard + 1) / shards;
        try {
          std::vector<int64_t> absent;
          tier->Fetch(table.tag, end - begin, tier_keys + begin, tier_rows + begin * dim, dim, &absent);
          std::lock_guard<std::mutex> lock(merge_mutex);
          for (int64_t j : absent) still_missing.push_back(begin + j);
        } catch (...) {
          std::lock_guard<std::mutex> lock(merge_mutex);
          if (!failure) failure = std::current_exception();
        }
      };
      if (shards == 1) {
        fetch_shard(0);
      } else {
        parallel_for(shards, /*cost_per_unit=*/100'000'000, [&](int64_t begin, int64_t end) {
          for (int64_t shard = begin; shard < end; ++shard) fetch_shard(shard);
        });
      }
      if (failure) std::rethrow_exception(failure);
    } catch (const HpsError& e) {
      // A shared VDB that fails is passed over: the PDB (or the default) answers.
      if (!is_vdb || e.code() != ErrorCode::kUnavailable) throw;
      table.stats.vdb_errors.fetch_add(1, std::memory_order_relaxed);
      volatile_health_.RecordFailure(e.what());
      continue;
    }
    if (is_vdb) volatile_health_.RecordSuccess();
    std::sort(still_missing.begin(), still_missing.end());
    (is_vdb ? table.stats.vdb_hits : table.stats.pdb_hits)
        .fetch_add(p - static_cast<int64_t>(still_missing.size()), std::memory_order_relaxed);
    // Copy the rows found, and remember which keys remain for the next tier.
    std::vector<int64_t> next_pending;
    std::vector<int64_t> found_keys;
    std::vector<float> found_rows;
    const bool write_back = !is_vdb && volatile_db_ && config_.volatile_db.cache_missed_embeddings &&
                            volatile_health_.ShouldTry();
    size_t s = 0;
    for (int64_t j = 0; j < p; ++j) {
      if (s < still_missing.size() && still_missing[s] == j) {
        ++s;
        next_pending.push_back(pending[j]);
        continue;
      }
      if (!direct) std::memcpy(rows + pending[j] * dim, tier_rows + j * dim, row_bytes);
      (*found)[pending[j]] = 1;
      if (write_back) {
        found_keys.push_back(tier_keys[j]);
        found_rows.insert(found_rows.end(), tier_rows + j * dim, tier_rows + (j + 1) * dim);
      }
    }
    // cache_missed_embeddings: rows only the PDB held move up into the VDB, unless an online update
    // wrote the key there meanwhile (its row is newer than the one read here).
    if (!found_keys.empty()) {
      try {
        const int64_t count = static_cast<int64_t>(found_keys.size());
        if (volatile_db_shared_) {
          // Other processes update a shared Redis: the server-side check decides.
          volatile_db_->InsertUnlessUpdated(table.tag, count, found_keys.data(), found_rows.data(), dim,
                                            /*only_absent=*/true);
        } else {
          // This process's updates: none began since the read (an even, unchanged epoch).
          std::shared_lock<std::shared_mutex> lock(table.write_back_mutex);
          if (epoch_at_read % 2 == 0 && table.update_epoch.load(std::memory_order_acquire) == epoch_at_read)
            volatile_db_->Insert(table.tag, count, found_keys.data(), found_rows.data(), dim);
        }
      } catch (const HpsError& e) {
        if (e.code() != ErrorCode::kUnavailable) throw;
        table.stats.vdb_errors.fetch_add(1, std::memory_order_relaxed);
        volatile_health_.RecordFailure(e.what());
      }
    }
    pending.swap(next_pending);
  }
  table.stats.defaults.fetch_add(static_cast<int64_t>(pending.size()), std::memory_order_relaxed);
  for (int64_t j : pending) std::fill_n(rows + j * dim, dim, table.default_value);
  if (!pending.empty() && !persistent_db_ && volatile_db_shared_)
    CheckVolatileDbHoldsTable(table);
}

void ParameterServer::CheckVolatileDbHoldsTable(const EmbeddingTable& table) const {
  // A Redis that is the only tier answers the default for rows it lost (restarted empty, or
  // evicted by overflow_margin) as for unknown keys; at most every kRowCheckEveryNs, count them.
  constexpr int64_t kRowCheckEveryNs = 10'000'000'000;
  int64_t due = table.vdb_checked_at_ns.load(std::memory_order_relaxed);
  const int64_t now =
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
          .count();
  if (now < due || !table.vdb_checked_at_ns.compare_exchange_strong(due, now + kRowCheckEveryNs)) return;
  int64_t held = 0;
  try {
    held = volatile_db_->Size(table.tag);
  } catch (const HpsError& e) {
    if (e.code() != ErrorCode::kUnavailable) throw;
    return;
  }
  const int64_t missing = std::max<int64_t>(0, table.num_rows - held);
  const int64_t before = table.stats.vdb_rows_missing.exchange(missing, std::memory_order_relaxed);
  if (missing > before)
    Log(LogLevel::kWarning, "table " + table.tag + ": the " + volatile_db_->name() + " holds " + std::to_string(held) +
                                " of the " + std::to_string(table.num_rows) +
                                " rows it was loaded with, and there is no persistent_db: the others answer the "
                                "default (a Redis restarted empty, or overflow_margin); counted in vdb_rows_missing. "
                                "Reload them with python -m tf_hps ingest, or add a persistent_db");
}

std::string ParameterServer::MemoryFields(const std::string& tag) const {
  std::string fields;
  for (const auto& [tier, prefix] : {std::pair{volatile_db_.get(), "vdb_"}, std::pair{persistent_db_.get(), "pdb_"}}) {
    if (tier == nullptr) continue;
    for (const auto& [name, bytes] : tier->MemoryStats(tag))
      fields += "\"" + (prefix + name) + "\": " + std::to_string(bytes) + ", ";
  }
  return fields;
}

std::string ParameterServer::StatsJson() const {
  std::string json;
  for (const auto& [model, tables] : tables_) {
    for (const auto& t : tables) {
      const TableStats& c = t->stats;
      std::atomic<int64_t> cache_rows{t->cache ? t->cache->Size() : 0};
      std::string bounds, counts;
      for (int b = 0; b < TableStats::kLatencyBuckets; ++b) {
        if (b + 1 < TableStats::kLatencyBuckets)
          bounds += (b ? ", " : "") + std::to_string(TableStats::kLatencyBoundsUs[b]);
        counts += (b ? ", " : "") + std::to_string(c.latency_counts[b].load(std::memory_order_relaxed));
      }
      auto field = [](const char* name, const std::atomic<int64_t>& v) {
        return std::string("\"") + name + "\": " + std::to_string(v.load(std::memory_order_relaxed));
      };
      json += (json.empty() ? "" : ", ") + ("\"" + t->tag + "\": {") + field("lookups", c.lookups) + ", " +
              field("fused_lookups", c.fused_lookups) + ", " + field("keys", c.keys) + ", " + field("missed_keys", c.missed_keys) + ", " +
              field("l1_hits", c.l1_hits) + ", " + field("vdb_hits", c.vdb_hits) + ", " +
              field("pdb_hits", c.pdb_hits) + ", " + field("defaults", c.defaults) + ", " +
              field("vdb_errors", c.vdb_errors) + ", " + field("vdb_skipped", c.vdb_skipped) + ", " +
              field("cache_inserted", c.cache_inserted) + ", " + field("insert_deferred", c.insert_deferred) + ", " +
              field("insert_dropped", c.insert_dropped) + ", " + field("cache_refreshed", c.cache_refreshed) + ", " +
              field("cache_evicted", c.cache_evicted) + ", " + field("rows_updated", c.rows_updated) + ", " +
              field("updates_rejected", c.updates_rejected) + ", " + field("update_failures", c.update_failures) + ", " +
              field("updates_trimmed", c.updates_trimmed) + ", " + field("vdb_rows_missing", c.vdb_rows_missing) +
              ", " + field("update_lag_ms", c.update_lag_ms) + ", " +
              field("cache_rows", cache_rows) + ", " + MemoryFields(t->tag) +
              "\"latency_us_bounds\": [" + bounds + "], \"latency_counts\": [" + counts + "]}";
    }
  }
  return "{" + json + "}";
}

namespace {

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

void TableStats::RecordLatency(int64_t micros) {
  int b = 0;
  while (b < kLatencyBuckets - 1 && micros > kLatencyBoundsUs[b]) ++b;
  latency_counts[b].fetch_add(1, std::memory_order_relaxed);
}

void ParameterServer::WaitForBackgroundWork() const { inserter_->Drain(); }

int64_t ParameterServer::RefreshCaches(const std::string& model) const {
  int64_t refreshed = 0;
  for (const auto& [name, tables] : tables_) {
    if (!model.empty() && name != model) continue;
    for (const auto& t : tables) {
      // Caches of other owners (GPU pipelines), outside update_mutex: they
      // read the databases, which must not hold up updates.
      std::vector<CacheRefresher> refreshers;
      {
        std::lock_guard<std::mutex> lock(t->update_mutex);
        refreshers = t->cache_refreshers;
      }
      for (const CacheRefresher& refresher : refreshers) {
        const int64_t rows = refresher();
        refreshed += rows;
        t->stats.cache_refreshed.fetch_add(rows, std::memory_order_relaxed);
      }
      if (!t->cache) continue;
      EmbeddingCache& cache = *t->cache;
      const int64_t sets = cache.num_sets();
      const int64_t chunk =
          t->refresh_fraction > 0 ? std::max<int64_t>(1, static_cast<int64_t>(std::ceil(t->refresh_fraction * sets)))
                                  : sets;
      std::vector<int64_t> keys;
      std::vector<float> rows;
      std::vector<char> found;
      for (int64_t begin = 0; begin < sets; begin += chunk) {
        keys.clear();
        cache.Dump(begin, std::min(sets, begin + chunk), &keys);
        const int64_t n = static_cast<int64_t>(keys.size());
        if (n == 0) continue;
        rows.resize(n * t->dim);
        found.assign(n, 0);
        const UpdateGuard guard{&t->update_epoch, t->update_epoch.load(std::memory_order_acquire)};
        FetchFromDatabases(*t, keys.data(), n, rows.data(), &found, SerialFor);
        // Keep only rows some tier still holds.
        int64_t kept = 0;
        for (int64_t i = 0; i < n; ++i) {
          if (!found[i]) continue;
          keys[kept] = keys[i];
          if (kept != i) std::memcpy(&rows[kept * t->dim], &rows[i * t->dim], t->dim * sizeof(float));
          ++kept;
        }
        // An update that overtook this read wrote newer rows itself.
        cache.Update(keys.data(), kept, rows.data(), &guard);
        refreshed += kept;
        t->stats.cache_refreshed.fetch_add(kept, std::memory_order_relaxed);
      }
    }
  }
  return refreshed;
}

void ParameterServer::ApplyUpdate(const EmbeddingTable& table, const int64_t* keys, int64_t n, const float* rows,
                                  const std::function<void()>& write_databases) const {
  if (n <= 0) return;
  std::lock_guard<std::mutex> lock(table.update_mutex);
  std::unique_lock<std::shared_mutex> no_write_back(table.write_back_mutex);
  // Odd while the update is applied: lookups and refreshes that read the
  // databases before it ends keep their rows out of the cache (UpdateGuard).
  table.update_epoch.fetch_add(1, std::memory_order_seq_cst);
  struct EndEpoch {
    const EmbeddingTable& table;
    ~EndEpoch() { table.update_epoch.fetch_add(1, std::memory_order_seq_cst); }
  } end_epoch{table};
  if (write_databases) write_databases();
  if (table.cache) table.cache->Update(keys, n, rows);
  for (const CacheListener& listener : table.cache_listeners) listener(keys, n, rows);
  table.stats.rows_updated.fetch_add(n, std::memory_order_relaxed);
}

void ParameterServer::AddCacheListener(const EmbeddingTable& table, CacheListener listener) const {
  std::lock_guard<std::mutex> lock(table.update_mutex);
  table.cache_listeners.push_back(std::move(listener));
}

void ParameterServer::AddCacheRefresher(const EmbeddingTable& table, CacheRefresher refresher) const {
  std::lock_guard<std::mutex> lock(table.update_mutex);
  table.cache_refreshers.push_back(std::move(refresher));
}

void ParameterServer::LogStats() const {
  for (const auto& [model, tables] : tables_) {
    for (const auto& t : tables) {
      const TableStats& c = t->stats;
      const int64_t keys = c.keys.load(std::memory_order_relaxed);
      const int64_t missed = c.missed_keys.load(std::memory_order_relaxed);
      auto share = [](const std::atomic<int64_t>& v, int64_t of) {
        return of == 0 ? std::string("-") : std::to_string(100 * v.load(std::memory_order_relaxed) / of) + "%";
      };
      Log(LogLevel::kInfo, "stats " + t->tag + ": " + std::to_string(c.lookups.load()) + " lookups, " +
                               std::to_string(keys) + " keys, L1 hits " + share(c.l1_hits, keys) + "; of " +
                               std::to_string(missed) + " distinct missed keys VDB " + share(c.vdb_hits, missed) +
                               ", PDB " + share(c.pdb_hits, missed) + ", default " + share(c.defaults, missed) +
                               "; VDB errors " + std::to_string(c.vdb_errors.load()));
    }
  }
}

bool TierHealth::ShouldTry() const { return NowNs() >= retry_after_ns_.load(std::memory_order_relaxed); }

void TierHealth::RecordFailure(const std::string& what) {
  retry_after_ns_.store(NowNs() + kBackoffNs, std::memory_order_relaxed);
  if (!down_.exchange(true))
    Log(LogLevel::kWarning, name_ + " is unavailable; lookups go to the next tier, retrying every " +
                                std::to_string(kBackoffNs / 1'000'000) + " ms: " + what);
}

void TierHealth::RecordSuccess() {
  if (down_.load(std::memory_order_relaxed) && down_.exchange(false))
    Log(LogLevel::kInfo, name_ + " answers again");
}

// --- registry -------------------------------------------------------------------

ParameterServerRegistry& ParameterServerRegistry::Global() {
  static ParameterServerRegistry* registry = new ParameterServerRegistry();  // never destroyed
  return *registry;
}

std::string ParameterServerRegistry::GetOrCreate(const std::string& canonical_json) {
  std::shared_ptr<Entry> entry;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto& slot = by_config_[canonical_json];
    if (!slot) slot = std::make_shared<Entry>();
    entry = slot;
  }
  // Concurrent first calls for one config wait here while one of them loads.
  std::lock_guard<std::mutex> init_lock(entry->init_mutex);
  if (entry->server) return entry->handle;
  std::vector<std::string> warnings;
  ParameterServerConfig config = ParseConfig(canonical_json, "", &warnings);
  for (const std::string& w : warnings) Log(LogLevel::kWarning, w);
  auto server = std::make_shared<const ParameterServer>(std::move(config));
  std::lock_guard<std::mutex> lock(mutex_);
  entry->handle = "tf_hps:" + std::to_string(++num_created_);
  entry->server = server;
  by_handle_[entry->handle] = server;
  return entry->handle;
}

std::shared_ptr<const ParameterServer> ParameterServerRegistry::Find(const std::string& handle) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = by_handle_.find(handle);
  if (it == by_handle_.end())
    throw HpsError(ErrorCode::kFailedPrecondition,
                   "parameter server '" + handle + "' is not initialised in this process");
  return it->second;
}

std::vector<std::shared_ptr<const ParameterServer>> ParameterServerRegistry::All() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<std::shared_ptr<const ParameterServer>> servers;
  for (const auto& [handle, server] : by_handle_) servers.push_back(server);
  return servers;
}

namespace {

std::string CanonicalPath(const std::string& path) {
  std::error_code ec;
  const std::filesystem::path canonical = std::filesystem::weakly_canonical(std::filesystem::absolute(path, ec), ec);
  return ec ? path : canonical.string();
}

}  // namespace

void ParameterServerRegistry::Bind(const std::string& config_path, const std::string& handle) {
  const std::shared_ptr<const ParameterServer> server = Find(handle);
  Binding binding{CanonicalPath(config_path), handle, {}};
  for (const ModelConfig& m : server->config().models) binding.models.push_back(m.model);
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto it = bindings_.begin(); it != bindings_.end(); ++it) {
    if (it->config_path == binding.config_path) {
      bindings_.erase(it);
      break;
    }
  }
  bindings_.push_back(std::move(binding));
}

std::string ParameterServerRegistry::ResolveBound(const std::string& model_name) const {
  std::lock_guard<std::mutex> lock(mutex_);
  const Binding* found = nullptr;
  for (const Binding& b : bindings_) {
    if (std::find(b.models.begin(), b.models.end(), model_name) == b.models.end()) continue;
    if (found != nullptr)
      throw HpsError(ErrorCode::kFailedPrecondition,
                     "model '" + model_name + "' is in two configs loaded by hps.Init: '" + found->config_path +
                         "' and '" + b.config_path + "'; rename one, or give the layer its ps_config_file");
    found = &b;
  }
  return found == nullptr ? std::string() : found->handle;
}

std::string ParameterServerRegistry::BoundForFile(const std::string& config_path) const {
  const std::string canonical = CanonicalPath(config_path);
  std::lock_guard<std::mutex> lock(mutex_);
  for (const Binding& b : bindings_)
    if (b.config_path == canonical) return b.handle;
  return std::string();
}

const std::string& ParameterServerRegistry::ProcessToken() {
  static const std::string* token = [] {
    std::random_device device;
    std::mt19937_64 bits((static_cast<uint64_t>(device()) << 32) ^ device() ^
                         static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()));
    return new std::string("p" + std::to_string(bits()));
  }();
  return *token;
}

int64_t ParameterServerRegistry::num_created() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return num_created_;
}

}  // namespace tf_hps
