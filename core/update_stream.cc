#include "core/update_stream.h"

#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <algorithm>
#include <map>
#include <unordered_set>
#include <vector>

#include "base/error.h"
#include "storage/layout.h"
#include "storage/redis_client.h"

namespace tf_hps {
namespace {

// The key and vector fields are raw little-endian bytes; the hosts we build
// for are little-endian.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "update messages are little-endian");

int64_t ParseCount(std::string_view text, const char* field) {
  if (text.empty() || text.size() > 18) ThrowInvalidArgument(std::string("update message: bad ") + field);
  int64_t value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') ThrowInvalidArgument(std::string("update message: bad ") + field);
    value = value * 10 + (c - '0');
  }
  return value;
}

}  // namespace

std::vector<std::pair<std::string, std::string>> EncodeUpdate(const std::string& model, const std::string& table,
                                                              int64_t n, const int64_t* keys, const float* vectors,
                                                              int64_t dim) {
  return {{"v", kUpdateFormatVersion},
          {"model", model},
          {"table", table},
          {"key_type", "int64"},
          {"value_type", "float32"},
          {"dim", std::to_string(dim)},
          {"count", std::to_string(n)},
          {"keys", std::string(reinterpret_cast<const char*>(keys), n * sizeof(int64_t))},
          {"vectors", std::string(reinterpret_cast<const char*>(vectors), n * dim * sizeof(float))}};
}

UpdateMessage DecodeUpdate(const std::vector<std::pair<std::string_view, std::string_view>>& fields) {
  std::map<std::string_view, std::string_view> by_name(fields.begin(), fields.end());
  auto get = [&](const char* name) {
    auto it = by_name.find(name);
    if (it == by_name.end()) ThrowInvalidArgument(std::string("update message: no field '") + name + "'");
    return it->second;
  };
  if (get("v") != kUpdateFormatVersion)
    ThrowInvalidArgument("update message: format version '" + std::string(get("v")) + "' is not supported (this build reads " +
                         kUpdateFormatVersion + ")");
  if (get("key_type") != "int64") ThrowInvalidArgument("update message: key_type must be int64");
  if (get("value_type") != "float32") ThrowInvalidArgument("update message: value_type must be float32");
  UpdateMessage message;
  message.model = std::string(get("model"));
  message.table = std::string(get("table"));
  message.dim = ParseCount(get("dim"), "dim");
  const int64_t count = ParseCount(get("count"), "count");
  if (message.dim < 1) ThrowInvalidArgument("update message: dim must be positive");
  if (count > 0 && message.dim > INT64_MAX / 4 / count) ThrowInvalidArgument("update message: count * dim is too large");
  const std::string_view keys = get("keys");
  const std::string_view vectors = get("vectors");
  if (keys.size() != static_cast<size_t>(count) * sizeof(int64_t))
    ThrowInvalidArgument("update message: 'keys' holds " + std::to_string(keys.size()) + " bytes, not count * 8 = " +
                         std::to_string(count * 8));
  if (vectors.size() != static_cast<size_t>(count * message.dim) * sizeof(float))
    ThrowInvalidArgument("update message: 'vectors' holds " + std::to_string(vectors.size()) +
                         " bytes, not count * dim * 4 = " + std::to_string(count * message.dim * 4));
  message.keys.resize(count);
  message.vectors.resize(count * message.dim);
  std::memcpy(message.keys.data(), keys.data(), keys.size());
  std::memcpy(message.vectors.data(), vectors.data(), vectors.size());
  return message;
}

StreamId StreamId::Parse(std::string_view text) {
  const size_t dash = text.find('-');
  if (dash == std::string_view::npos) ThrowInvalidArgument("bad stream entry id '" + std::string(text) + "'");
  StreamId id;
  auto number = [&](std::string_view part) {
    if (part.empty() || part.size() > 20) ThrowInvalidArgument("bad stream entry id '" + std::string(text) + "'");
    uint64_t value = 0;
    for (char c : part) {
      if (c < '0' || c > '9') ThrowInvalidArgument("bad stream entry id '" + std::string(text) + "'");
      value = value * 10 + (c - '0');
    }
    return value;
  };
  id.ms = number(text.substr(0, dash));
  id.seq = number(text.substr(dash + 1));
  return id;
}

std::string StreamId::Version() const {
  char text[48];
  std::snprintf(text, sizeof(text), "%020" PRIu64 "-%020" PRIu64, ms, seq);
  return text;
}

RedisClientOptions UpdateSourceClientOptions(const UpdateSourceConfig& config) {
  RedisClientOptions options;
  options.SetFromSection(config, "update_source");
  options.connections_per_node = 2;
  options.connect_timeout_ms = 1000;
  // A blocking read waits up to poll_timeout_ms before its reply comes.
  options.command_timeout_ms = 5000 + config.poll_timeout_ms;
  return options;
}

UpdatePublisher::UpdatePublisher(const ParameterServerConfig& config, int64_t max_pending_bytes)
    : config_(config), max_pending_bytes_(max_pending_bytes) {
  if (config_.update_source.type != "redis_stream")
    ThrowInvalidArgument("update_source.type is '" + config_.update_source.type +
                         "'; publishing updates needs \"redis_stream\" (with update_source.address)");
  client_ = std::make_unique<RedisClusterClient>(UpdateSourceClientOptions(config_.update_source));
}

UpdatePublisher::~UpdatePublisher() = default;

void UpdatePublisher::Publish(const std::string& model, const std::string& table, int64_t n, const int64_t* keys,
                              const float* vectors, int64_t dim) {
  const int m = config_.FindModel(model);
  if (m < 0) ThrowInvalidArgument("model '" + model + "' is not in the config");
  const ModelConfig& mc = config_.models[m];
  int64_t t = -1;
  for (size_t i = 0; i < mc.embedding_table_names.size(); ++i)
    if (mc.embedding_table_names[i] == table) t = static_cast<int64_t>(i);
  if (t < 0) {
    std::string names;
    for (const auto& name : mc.embedding_table_names) names += (names.empty() ? "'" : ", '") + name + "'";
    ThrowInvalidArgument("table '" + table + "' is not a table of model '" + model + "' (tables: " + names + ")");
  }
  if (dim != mc.embedding_vecsize_per_table[t])
    ThrowInvalidArgument("vectors have dimension " + std::to_string(dim) + " but table '" + table + "' of model '" +
                         model + "' has embedding_vecsize_per_table " +
                         std::to_string(mc.embedding_vecsize_per_table[t]));
  if (n < 0) ThrowInvalidArgument("negative number of rows");
  // A key given twice: its last row is the update. A message applies its rows under one version, so
  // a repeat inside it would leave which row wins to the order each tier writes in.
  std::vector<int64_t> distinct_keys;
  std::vector<float> distinct_rows;
  {
    std::unordered_set<int64_t> seen;
    std::vector<int64_t> last;  // positions of each key's last row, from the end
    for (int64_t i = n - 1; i >= 0; --i)
      if (seen.insert(keys[i]).second) last.push_back(i);
    if (static_cast<int64_t>(last.size()) != n) {
      std::reverse(last.begin(), last.end());
      distinct_keys.reserve(last.size());
      distinct_rows.reserve(last.size() * dim);
      for (int64_t i : last) {
        distinct_keys.push_back(keys[i]);
        distinct_rows.insert(distinct_rows.end(), vectors + i * dim, vectors + (i + 1) * dim);
      }
      n = static_cast<int64_t>(last.size());
      keys = distinct_keys.data();
      vectors = distinct_rows.data();
    }
  }
  const std::string stream = UpdateStreamKey(TableTag(model, table));
  const int64_t batch = config_.update_source.max_batch_size;
  for (int64_t begin = 0; begin < n; begin += batch) {
    const int64_t count = std::min(batch, n - begin);
    RedisCommand xadd("XADD");
    xadd.Add(stream);
    if (config_.update_source.max_stream_entries > 0)
      xadd.Add("MAXLEN").Add("~").Add(config_.update_source.max_stream_entries);
    xadd.Add("*");
    for (const auto& [field, value] : EncodeUpdate(model, table, count, keys + begin, vectors + begin * dim, dim))
      xadd.Add(field).Add(value);
    pending_.push_back(std::move(xadd));
    pending_bytes_ += count * (8 + dim * 4);
    rows_published_ += count;
    if (pending_bytes_ >= max_pending_bytes_) Flush();
  }
}

void UpdatePublisher::Flush() {
  if (pending_.empty()) return;
  // On failure the messages stay queued, so a later Flush sends them again
  // (in order; one that had reached Redis is then applied twice, which
  // leaves the same rows).
  const std::vector<RedisReplyPtr> replies = client_->Execute(pending_);
  for (size_t i = 0; i < replies.size(); ++i) {
    if (replies[i] == nullptr || RedisReplyIsError(*replies[i]))
      throw HpsError(ErrorCode::kInternal,
                     "XADD to " + std::string(pending_[i].key()) + " failed: " +
                         (replies[i] ? std::string(RedisReplyText(*replies[i])) : std::string("no reply")));
  }
  messages_published_ += static_cast<int64_t>(pending_.size());
  pending_.clear();
  pending_bytes_ = 0;
}

}  // namespace tf_hps
