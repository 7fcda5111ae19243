// Design note: tables in Redis hashes.
//
// Layout (storage/layout.h). Key k of table T belongs to partition
// p = PartitionOf(k, num_partitions). Partition p is the hash
// RedisValueHash(T, p) = "hps_et{T/p<p>}v" (field: k's 8 bytes, little-endian;
// value: the row's dim*4 float32 bytes) plus, when an overflow policy needs
// it, RedisMetaHash(T, p) = "hps_et{T/p<p>}t" (same field; value: decimal
// access count for evict_least_used, or last access time in milliseconds
// since the Unix epoch for evict_oldest). The hash tag {T/p<p>} puts both in
// one cluster slot, so a partition lives on one node and a table of P
// partitions spreads over up to P nodes; num_partitions should be a few times
// the number of masters.
//
// Batching. A call splits its keys by partition, then each partition's keys
// into batches of at most max_batch_size: one HSET / HMGET / HDEL per batch.
// All batches of all partitions go out in one pipelined round
// (RedisClusterClient::Execute), so a call costs about one round trip however
// many partitions and nodes it touches.
//
// Overflow. Only with a finite overflow_margin does an insert also write
// metadata (least_used: count 0; oldest: now) and read HLEN of each partition
// it touched; a partition holding more than overflow_margin rows is brought
// down to overflow_margin * overflow_resolution_target rows: random fields
// (HRANDFIELD) for evict_random, else the fields with the smallest metadata
// (read with HKEYS + HGETALL, so one overflow costs O(partition size), spread
// over the margin - target inserts that led to it). Fetch hits update the
// metadata in a second pipelined round (HINCRBY / HSET). With the default
// unlimited margin none of this runs: insert is HSET only, fetch HMGET only.
#include "storage/redis_cluster_backend.h"

#include <hiredis/hiredis.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <set>
#include <unordered_map>

#include "base/error.h"
#include "base/log.h"
#include "base/unique_keys.h"
#include "storage/layout.h"

namespace tf_hps {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "rows are stored as raw little-endian float32 bytes");

namespace {

constexpr int64_t kConnectTimeoutMs = 1000;
constexpr int64_t kCommandTimeoutMs = 5000;
constexpr int64_t kScanCount = 1000;

// A key as a hash field: its 8 bytes, little-endian.
class KeyField {
 public:
  explicit KeyField(int64_t key) {
    const uint64_t bits = static_cast<uint64_t>(key);
    for (int i = 0; i < 8; ++i) bytes_[i] = static_cast<char>((bits >> (8 * i)) & 0xFF);
  }
  std::string_view view() const { return std::string_view(bytes_, 8); }

 private:
  char bytes_[8];
};

void CheckTable(const std::string& table) {
  if (table.empty() || table.find_first_of("{}\n") != std::string::npos)
    ThrowInvalidArgument("redis_cluster: table tag '" + table +
                         "' must be non-empty and contain no '{', '}' or newline");
}

void CheckDim(int64_t dim) {
  if (dim < 1) ThrowInvalidArgument("redis_cluster: dimension must be at least 1, got " + std::to_string(dim));
}

void CheckCount(int64_t n) {
  if (n < 0) ThrowInvalidArgument("redis_cluster: key count must not be negative, got " + std::to_string(n));
}

// Throws kInternal for a missing or error reply, naming the command.
const redisReply& Checked(const RedisReplyPtr& reply, const RedisCommand& command) {
  if (reply == nullptr)
    throw HpsError(ErrorCode::kInternal, "redis_cluster: no reply to " + std::string(command.arg(0)));
  if (RedisReplyIsError(*reply))
    throw HpsError(ErrorCode::kInternal, "redis_cluster: " + std::string(command.arg(0)) + " " +
                                             std::string(command.key()) + " failed: " +
                                             std::string(RedisReplyText(*reply)));
  return *reply;
}

void CheckAll(const std::vector<RedisReplyPtr>& replies, const std::vector<RedisCommand>& commands) {
  for (size_t i = 0; i < replies.size(); ++i) Checked(replies[i], commands[i]);
}

int64_t IntegerOf(const redisReply& reply) { return reply.type == REDIS_REPLY_INTEGER ? reply.integer : 0; }

std::string NowMillis() {
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(now).count());
}

int64_t TargetRows(const VolatileDbConfig& config) {
  if (config.overflow_margin == UINT64_MAX) return INT64_MAX;
  const double target = std::floor(static_cast<double>(config.overflow_margin) * config.overflow_resolution_target);
  return target >= 9.2e18 ? INT64_MAX : static_cast<int64_t>(target);
}

// One HDEL per batch of fields, on `hash`.
void AppendDeletes(const std::string& hash, const std::vector<std::string_view>& fields, int64_t batch,
                   std::vector<RedisCommand>* commands) {
  for (size_t begin = 0; begin < fields.size(); begin += batch) {
    const size_t end = std::min(fields.size(), begin + static_cast<size_t>(batch));
    RedisCommand hdel("HDEL");
    hdel.Reserve(end - begin + 1, hash.size() + 8 * (end - begin));
    hdel.Add(hash);
    for (size_t i = begin; i < end; ++i) hdel.Add(fields[i]);
    commands->push_back(std::move(hdel));
  }
}

}  // namespace

RedisClusterBackend::Policy RedisClusterBackend::ParsePolicy(const std::string& name) {
  if (name == "evict_random") return Policy::kRandom;
  if (name == "evict_least_used") return Policy::kLeastUsed;
  if (name == "evict_oldest") return Policy::kOldest;
  ThrowInvalidArgument("volatile_db.overflow_policy: unknown policy '" + name + "'");
}

RedisClusterBackend::RedisClusterBackend(const VolatileDbConfig& config, bool start_if_unreachable)
    : num_partitions_(config.num_partitions),
      max_batch_size_(config.max_batch_size),
      overflow_margin_(config.overflow_margin),
      overflow_target_(TargetRows(config)),
      policy_(ParsePolicy(config.overflow_policy)),
      track_metadata_(config.overflow_margin != UINT64_MAX && policy_ != Policy::kRandom) {
  if (num_partitions_ < 1) ThrowInvalidArgument("volatile_db.num_partitions must be at least 1");
  if (max_batch_size_ < 1) ThrowInvalidArgument("volatile_db.max_batch_size must be at least 1");
  if (config.num_node_connections < 1) ThrowInvalidArgument("volatile_db.num_node_connections must be at least 1");
  RedisClientOptions options;
  options.SetFromSection(config, "volatile_db");
  options.connections_per_node = config.num_node_connections;
  options.connect_timeout_ms = kConnectTimeoutMs;
  options.command_timeout_ms = kCommandTimeoutMs;
  options_ = std::move(options);
  try {
    owned_client_ = std::make_unique<RedisClusterClient>(options_);
  } catch (const HpsError& e) {
    if (!start_if_unreachable || e.code() != ErrorCode::kUnavailable) throw;
    retry_connect_at_ = std::chrono::steady_clock::now() + kReconnectEvery;
    Log(LogLevel::kWarning, std::string("volatile_db: starting without it: ") + e.what() +
                                "; lookups go to the persistent_db (or the default) and it is tried again every " +
                                std::to_string(kReconnectEvery.count()) + " ms");
    return;
  }
  client_.store(owned_client_.get(), std::memory_order_release);
}

RedisClusterClient& RedisClusterBackend::Client() const {
  if (RedisClusterClient* client = client_.load(std::memory_order_acquire)) return *client;
  std::lock_guard<std::mutex> lock(connect_mutex_);
  if (RedisClusterClient* client = client_.load(std::memory_order_acquire)) return *client;
  const auto now = std::chrono::steady_clock::now();
  if (now < retry_connect_at_)
    throw HpsError(ErrorCode::kUnavailable, "volatile_db: not connected yet (no server answered at start-up)");
  try {
    owned_client_ = std::make_unique<RedisClusterClient>(options_);
  } catch (const HpsError& e) {
    if (e.code() == ErrorCode::kUnavailable) retry_connect_at_ = now + kReconnectEvery;
    throw;
  }
  Log(LogLevel::kInfo, "volatile_db: connected");
  client_.store(owned_client_.get(), std::memory_order_release);
  return *owned_client_;
}

RedisClusterBackend::~RedisClusterBackend() = default;

std::vector<std::vector<int64_t>> RedisClusterBackend::GroupByPartition(int64_t n, const int64_t* keys) const {
  std::vector<std::vector<int64_t>> groups(num_partitions_);
  if (num_partitions_ == 1) {
    groups[0].resize(n);
    for (int64_t i = 0; i < n; ++i) groups[0][i] = i;
    return groups;
  }
  std::vector<int64_t> partition(n);
  std::vector<int64_t> counts(num_partitions_, 0);
  for (int64_t i = 0; i < n; ++i) ++counts[partition[i] = PartitionOf(keys[i], num_partitions_)];
  for (int64_t p = 0; p < num_partitions_; ++p) groups[p].reserve(counts[p]);
  for (int64_t i = 0; i < n; ++i) groups[partition[i]].push_back(i);
  return groups;
}

namespace {

// KEYS: the partition's value hash, its version hash. ARGV: the version, then
// (key field, row) pairs. Versions compare as byte strings (fixed width).
constexpr const char* kApplyUpdateScript = R"lua(
local version = ARGV[1]
for i = 2, #ARGV, 2 do
  local seen = redis.call('HGET', KEYS[2], ARGV[i])
  if (not seen) or seen < version then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    redis.call('HSET', KEYS[2], ARGV[i], version)
  end
end
return 0
)lua";

// KEYS: the partition's value hash, its version hash. ARGV: '1' to write only
// keys without a row, else '0'; then (key field, row) pairs. A key with a
// version, which only an online update writes, keeps its row.
constexpr const char* kInsertUnlessUpdatedScript = R"lua(
local only_absent = ARGV[1] == '1'
local updated = redis.call('EXISTS', KEYS[2]) == 1
for i = 2, #ARGV, 2 do
  if not (updated and redis.call('HEXISTS', KEYS[2], ARGV[i]) == 1) and
     not (only_absent and redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return 0
)lua";

}  // namespace

void RedisClusterBackend::WriteRows(const std::string& table, int64_t n, const int64_t* keys, const float* values,
                                    int64_t dim, const std::function<RedisCommand(int64_t partition)>& begin_batch) {
  CheckTable(table);
  CheckDim(dim);
  CheckCount(n);
  if (n == 0) return;
  const size_t row_bytes = static_cast<size_t>(dim) * sizeof(float);
  const bool limited = overflow_margin_ != UINT64_MAX;
  const std::string initial_meta = policy_ == Policy::kOldest ? NowMillis() : "0";
  const auto groups = GroupByPartition(n, keys);

  std::vector<RedisCommand> commands;
  std::vector<std::pair<int64_t, size_t>> lengths;  // (partition, index of its HLEN command)
  for (int64_t p = 0; p < num_partitions_; ++p) {
    const std::vector<int64_t>& rows = groups[p];
    if (rows.empty()) continue;
    const std::string meta_hash = RedisMetaHash(table, p);
    for (size_t begin = 0; begin < rows.size(); begin += max_batch_size_) {
      const size_t end = std::min(rows.size(), begin + static_cast<size_t>(max_batch_size_));
      RedisCommand write = begin_batch(p);
      write.Reserve(2 * (end - begin), (8 + row_bytes) * (end - begin));
      for (size_t j = begin; j < end; ++j) {
        const int64_t i = rows[j];
        write.Add(KeyField(keys[i]).view());
        write.Add(std::string_view(reinterpret_cast<const char*>(values + i * dim), row_bytes));
      }
      commands.push_back(std::move(write));
      if (track_metadata_) {
        RedisCommand meta("HSET");
        meta.Reserve(1 + 2 * (end - begin), meta_hash.size() + (8 + initial_meta.size()) * (end - begin));
        meta.Add(meta_hash);
        for (size_t j = begin; j < end; ++j) meta.Add(KeyField(keys[rows[j]]).view()).Add(initial_meta);
        commands.push_back(std::move(meta));
      }
    }
    if (limited) {
      lengths.emplace_back(p, commands.size());
      commands.push_back(std::move(RedisCommand("HLEN").Add(RedisValueHash(table, p))));
    }
  }
  const std::vector<RedisReplyPtr> replies = Client().Execute(commands);
  CheckAll(replies, commands);
  for (const auto& [p, index] : lengths) {
    const int64_t rows = IntegerOf(*replies[index]);
    if (static_cast<uint64_t>(rows) > overflow_margin_) ResolveOverflow(table, p, rows);
  }
}

void RedisClusterBackend::Insert(const std::string& table, int64_t n, const int64_t* keys, const float* values,
                                 int64_t dim) {
  WriteRows(table, n, keys, values, dim,
            [&](int64_t p) { return std::move(RedisCommand("HSET").Add(RedisValueHash(table, p))); });
}

void RedisClusterBackend::ApplyUpdate(const std::string& table, int64_t n, const int64_t* keys,
                                      const float* values, int64_t dim, const std::string& version) {
  WriteRows(table, n, keys, values, dim, [&](int64_t p) {
    RedisCommand eval("EVAL");
    eval.Add(kApplyUpdateScript).Add(int64_t{2}).Add(RedisValueHash(table, p)).Add(RedisVersionHash(table, p));
    eval.Add(version).RouteBy(3);  // routed by the value hash, EVAL's first key
    return eval;
  });
}

void RedisClusterBackend::InsertUnlessUpdated(const std::string& table, int64_t n, const int64_t* keys,
                                              const float* values, int64_t dim, bool only_absent) {
  WriteRows(table, n, keys, values, dim, [&](int64_t p) {
    RedisCommand eval("EVAL");
    eval.Add(kInsertUnlessUpdatedScript).Add(int64_t{2}).Add(RedisValueHash(table, p));
    eval.Add(RedisVersionHash(table, p)).Add(only_absent ? "1" : "0").RouteBy(3);
    return eval;
  });
}

int64_t RedisClusterBackend::Fetch(const std::string& table, int64_t n, const int64_t* keys, float* values,
                                   int64_t dim, std::vector<int64_t>* missing) {
  CheckTable(table);
  CheckDim(dim);
  // Each distinct key costs a lookup on the server, so duplicates are asked for once.
  return FetchEachKeyOnce(n, keys, values, dim, missing,
                          [&](int64_t u, const int64_t* unique_keys, float* rows, std::vector<int64_t>* absent) {
                            return FetchDistinct(table, u, unique_keys, rows, dim, absent);
                          });
}

int64_t RedisClusterBackend::FetchDistinct(const std::string& table, int64_t n, const int64_t* keys,
                                           float* values, int64_t dim, std::vector<int64_t>* missing) {
  CheckDim(dim);
  CheckCount(n);
  if (n == 0) return 0;
  const size_t row_bytes = static_cast<size_t>(dim) * sizeof(float);
  const auto groups = GroupByPartition(n, keys);

  struct Batch {
    int64_t partition;
    size_t begin, end;  // range of groups[partition]
  };
  std::vector<RedisCommand> commands;
  std::vector<Batch> batches;
  for (int64_t p = 0; p < num_partitions_; ++p) {
    const std::vector<int64_t>& rows = groups[p];
    if (rows.empty()) continue;
    const std::string value_hash = RedisValueHash(table, p);
    for (size_t begin = 0; begin < rows.size(); begin += max_batch_size_) {
      const size_t end = std::min(rows.size(), begin + static_cast<size_t>(max_batch_size_));
      RedisCommand hmget("HMGET");
      hmget.Reserve(1 + end - begin, value_hash.size() + 8 * (end - begin));
      hmget.Add(value_hash);
      for (size_t j = begin; j < end; ++j) hmget.Add(KeyField(keys[rows[j]]).view());
      commands.push_back(std::move(hmget));
      batches.push_back(Batch{p, begin, end});
    }
  }
  // Rows are copied out of each reply as it arrives, and the reply freed.
  std::vector<uint8_t> found(n, 0);
  std::vector<std::vector<int64_t>> hits(track_metadata_ ? num_partitions_ : 0);
  int64_t num_found = 0;
  const RedisClusterClient::ReplyConsumer copy_rows = [&](size_t b, const redisReply& reply) {
    const Batch& batch = batches[b];
    if (reply.type != REDIS_REPLY_ARRAY || reply.elements != batch.end - batch.begin)
      throw HpsError(ErrorCode::kInternal,
                     "redis_cluster: unexpected answer to HMGET " + std::string(commands[b].key()));
    for (size_t j = batch.begin; j < batch.end; ++j) {
      const redisReply& element = *reply.element[j - batch.begin];
      if (element.type != REDIS_REPLY_STRING) continue;  // nil: not stored
      if (element.len != row_bytes)
        ThrowInvalidArgument("redis_cluster: table '" + table + "' holds rows of " + std::to_string(element.len) +
                             " bytes (dimension " + std::to_string(element.len / sizeof(float)) +
                             "), but dimension " + std::to_string(dim) + " (" + std::to_string(row_bytes) +
                             " bytes) was asked for");
      const int64_t i = groups[batch.partition][j];
      if (found[i]) continue;  // handed over again after a resend
      std::memcpy(values + i * dim, element.str, row_bytes);
      found[i] = 1;
      ++num_found;
      if (track_metadata_) hits[batch.partition].push_back(i);
    }
  };
  const std::vector<RedisReplyPtr> errors = Client().Execute(commands, &copy_rows);
  for (size_t b = 0; b < errors.size(); ++b) {
    if (errors[b]) Checked(errors[b], commands[b]);  // throws, naming the command
  }
  for (int64_t i = 0; i < n; ++i)
    if (!found[i]) missing->push_back(i);
  if (track_metadata_ && num_found > 0) TouchMetadata(table, hits, keys);
  return num_found;
}

void RedisClusterBackend::TouchMetadata(const std::string& table, const std::vector<std::vector<int64_t>>& hits,
                                        const int64_t* keys) {
  std::vector<RedisCommand> commands;
  const std::string now = NowMillis();
  for (int64_t p = 0; p < num_partitions_; ++p) {
    const std::vector<int64_t>& rows = hits[p];
    if (rows.empty()) continue;
    const std::string meta_hash = RedisMetaHash(table, p);
    if (policy_ == Policy::kLeastUsed) {
      for (int64_t i : rows)
        commands.push_back(std::move(RedisCommand("HINCRBY").Add(meta_hash).Add(KeyField(keys[i]).view()).Add(1)));
      continue;
    }
    for (size_t begin = 0; begin < rows.size(); begin += max_batch_size_) {
      const size_t end = std::min(rows.size(), begin + static_cast<size_t>(max_batch_size_));
      RedisCommand hset("HSET");
      hset.Reserve(1 + 2 * (end - begin), meta_hash.size() + (8 + now.size()) * (end - begin));
      hset.Add(meta_hash);
      for (size_t j = begin; j < end; ++j) hset.Add(KeyField(keys[rows[j]]).view()).Add(now);
      commands.push_back(std::move(hset));
    }
  }
  CheckAll(Client().Execute(commands), commands);
}

void RedisClusterBackend::ResolveOverflow(const std::string& table, int64_t p, int64_t rows) {
  int64_t excess = rows - overflow_target_;
  if (excess <= 0) return;
  const std::string value_hash = RedisValueHash(table, p);
  const std::string meta_hash = RedisMetaHash(table, p);

  if (policy_ == Policy::kRandom) {
    // HRANDFIELD with a positive count returns distinct fields.
    while (excess > 0) {
      std::vector<RedisCommand> pick;
      pick.push_back(std::move(RedisCommand("HRANDFIELD").Add(value_hash).Add(std::min(excess, max_batch_size_))));
      const std::vector<RedisReplyPtr> picked = Client().Execute(pick);
      const redisReply& fields = Checked(picked[0], pick[0]);
      if (fields.type != REDIS_REPLY_ARRAY || fields.elements == 0) return;
      std::vector<std::string_view> victims;
      for (size_t i = 0; i < fields.elements; ++i)
        victims.emplace_back(fields.element[i]->str, fields.element[i]->len);
      std::vector<RedisCommand> deletes;
      AppendDeletes(value_hash, victims, max_batch_size_, &deletes);
      AppendDeletes(meta_hash, victims, max_batch_size_, &deletes);
      const std::vector<RedisReplyPtr> deleted = Client().Execute(deletes);
      CheckAll(deleted, deletes);
      const int64_t removed = IntegerOf(*deleted[0]);
      if (removed == 0) return;
      excess -= removed;
    }
    return;
  }

  // least_used / oldest: delete the fields with the smallest metadata; a row
  // without metadata counts as 0 (never used, or older than any timestamp).
  std::vector<RedisCommand> reads;
  reads.push_back(std::move(RedisCommand("HKEYS").Add(value_hash)));
  reads.push_back(std::move(RedisCommand("HGETALL").Add(meta_hash)));
  const std::vector<RedisReplyPtr> read = Client().Execute(reads);
  const redisReply& fields = Checked(read[0], reads[0]);
  const redisReply& meta = Checked(read[1], reads[1]);
  std::unordered_map<std::string_view, int64_t> meta_of;
  meta_of.reserve(meta.elements / 2);
  for (size_t i = 0; i + 1 < meta.elements; i += 2) {
    const std::string value(meta.element[i + 1]->str, meta.element[i + 1]->len);
    meta_of.emplace(std::string_view(meta.element[i]->str, meta.element[i]->len),
                    std::strtoll(value.c_str(), nullptr, 10));
  }
  std::vector<std::pair<int64_t, std::string_view>> candidates;
  candidates.reserve(fields.elements);
  for (size_t i = 0; i < fields.elements; ++i) {
    const std::string_view field(fields.element[i]->str, fields.element[i]->len);
    auto it = meta_of.find(field);
    candidates.emplace_back(it == meta_of.end() ? 0 : it->second, field);
    if (it != meta_of.end()) meta_of.erase(it);
  }
  excess = std::min<int64_t>(excess, static_cast<int64_t>(candidates.size()));
  std::nth_element(candidates.begin(), candidates.begin() + excess, candidates.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<std::string_view> victims;
  victims.reserve(excess + meta_of.size());
  for (int64_t i = 0; i < excess; ++i) victims.push_back(candidates[i].second);
  std::vector<RedisCommand> deletes;
  AppendDeletes(value_hash, victims, max_batch_size_, &deletes);
  // Metadata of the victims, and any left over from rows deleted elsewhere.
  for (const auto& [field, unused] : meta_of) victims.push_back(field);
  AppendDeletes(meta_hash, victims, max_batch_size_, &deletes);
  CheckAll(Client().Execute(deletes), deletes);
}

int64_t RedisClusterBackend::Size(const std::string& table) const {
  CheckTable(table);
  std::vector<RedisCommand> commands;
  for (int64_t p = 0; p < num_partitions_; ++p)
    commands.push_back(std::move(RedisCommand("HLEN").Add(RedisValueHash(table, p))));
  const std::vector<RedisReplyPtr> replies = Client().Execute(commands);
  int64_t size = 0;
  for (size_t i = 0; i < replies.size(); ++i) size += IntegerOf(Checked(replies[i], commands[i]));
  return size;
}

int64_t RedisClusterBackend::Evict(const std::string& table, int64_t n, const int64_t* keys) {
  CheckTable(table);
  CheckCount(n);
  if (n == 0) return 0;
  const auto groups = GroupByPartition(n, keys);
  std::vector<RedisCommand> commands;
  std::vector<size_t> value_deletes;  // indices of the HDELs on value hashes
  for (int64_t p = 0; p < num_partitions_; ++p) {
    if (groups[p].empty()) continue;
    std::vector<KeyField> fields;
    fields.reserve(groups[p].size());
    for (int64_t i : groups[p]) fields.emplace_back(keys[i]);
    std::vector<std::string_view> views;
    views.reserve(fields.size());
    for (const KeyField& field : fields) views.push_back(field.view());
    const size_t first = commands.size();
    AppendDeletes(RedisValueHash(table, p), views, max_batch_size_, &commands);
    for (size_t c = first; c < commands.size(); ++c) value_deletes.push_back(c);
    AppendDeletes(RedisMetaHash(table, p), views, max_batch_size_, &commands);
  }
  const std::vector<RedisReplyPtr> replies = Client().Execute(commands);
  CheckAll(replies, commands);
  int64_t evicted = 0;
  for (size_t c : value_deletes) evicted += IntegerOf(*replies[c]);
  return evicted;
}

void RedisClusterBackend::EvictTable(const std::string& table) {
  CheckTable(table);
  std::vector<RedisCommand> commands;
  // The hashes of a partition share a slot, so one DEL takes them all.
  for (int64_t p = 0; p < num_partitions_; ++p)
    commands.push_back(std::move(RedisCommand("DEL")
                                     .Add(RedisValueHash(table, p))
                                     .Add(RedisMetaHash(table, p))
                                     .Add(RedisVersionHash(table, p))));
  CheckAll(Client().Execute(commands), commands);
}

std::vector<std::string> RedisClusterBackend::ListTables() const {
  // Value hashes are named "hps_et{<tag>/p<partition>}v".
  static const std::string kPrefix = "hps_et{";
  static const std::string kSuffix = "}v";
  std::set<std::string> tags;
  for (const std::string& node : Client().Masters()) {
    std::string cursor = "0";
    do {
      std::vector<RedisCommand> scan;
      scan.push_back(std::move(
          RedisCommand("SCAN").Add(cursor).Add("MATCH").Add(kPrefix + "*" + kSuffix).Add("COUNT").Add(kScanCount)));
      const std::vector<RedisReplyPtr> replies = Client().ExecuteOn(node, scan);
      const redisReply& reply = Checked(replies[0], scan[0]);
      if (reply.type != REDIS_REPLY_ARRAY || reply.elements != 2 || reply.element[0]->type != REDIS_REPLY_STRING ||
          reply.element[1]->type != REDIS_REPLY_ARRAY)
        throw HpsError(ErrorCode::kInternal, "redis node " + node + ": unexpected answer to SCAN");
      cursor.assign(reply.element[0]->str, reply.element[0]->len);
      const redisReply& keys = *reply.element[1];
      for (size_t i = 0; i < keys.elements; ++i) {
        const std::string_view key(keys.element[i]->str, keys.element[i]->len);
        if (key.size() <= kPrefix.size() + kSuffix.size()) continue;
        const std::string_view inner = key.substr(kPrefix.size(), key.size() - kPrefix.size() - kSuffix.size());
        const size_t mark = inner.rfind("/p");
        if (mark == std::string_view::npos || mark == 0 || mark + 2 == inner.size() ||
            inner.find_first_not_of("0123456789", mark + 2) != std::string_view::npos)
          continue;
        tags.emplace(inner.substr(0, mark));
      }
    } while (cursor != "0");
  }
  return std::vector<std::string>(tags.begin(), tags.end());
}

}  // namespace tf_hps
