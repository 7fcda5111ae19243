// Online updates over Redis streams: the message format and the publisher.
//
// One stream per table, UpdateStreamKey(tag) = "hps_upd{hps_et.<model>.<table>}"
// (storage/layout.h). Each stream entry is one message, version 1, with the
// fields (docs/updates.md):
//   "v"       "1"
//   "model"   model name             "table"   table name (embedding_table_names)
//   "key_type" "int64"               "value_type" "float32"
//   "dim"     decimal                "count"   decimal number of rows
//   "keys"    count * 8 bytes, int64 little-endian
//   "vectors" count * dim * 4 bytes, float32 little-endian
// A message's rows replace the stored rows of its keys; within a stream,
// later entries win. The transport is behind UpdateSink / the consumer's
// reader so that another queue (Kafka) can carry the same messages.
#ifndef TF_HPS_CORE_UPDATE_STREAM_H_
#define TF_HPS_CORE_UPDATE_STREAM_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/config.h"

namespace tf_hps {

class RedisClusterClient;
class RedisCommand;
struct RedisClientOptions;

inline constexpr const char* kUpdateFormatVersion = "1";

struct UpdateMessage {
  std::string model;
  std::string table;
  int64_t dim = 0;
  std::vector<int64_t> keys;   // (count)
  std::vector<float> vectors;  // (count, dim)
  int64_t count() const { return static_cast<int64_t>(keys.size()); }
};

// The stream entry's (field, value) pairs.
std::vector<std::pair<std::string, std::string>> EncodeUpdate(const std::string& model, const std::string& table,
                                                              int64_t n, const int64_t* keys, const float* vectors,
                                                              int64_t dim);

// Parses an entry's (field, value) pairs. Throws HpsError(kInvalidArgument)
// naming what is wrong (unknown version, missing field, sizes that disagree).
UpdateMessage DecodeUpdate(const std::vector<std::pair<std::string_view, std::string_view>>& fields);

// A stream entry ID "<ms>-<seq>", comparable.
struct StreamId {
  uint64_t ms = 0;
  uint64_t seq = 0;
  static StreamId Parse(std::string_view text);  // throws HpsError on bad text
  std::string ToString() const { return std::to_string(ms) + "-" + std::to_string(seq); }
  // Fixed-width text that sorts like the IDs (for DatabaseBackend::ApplyUpdate).
  std::string Version() const;
  bool operator<(const StreamId& o) const { return ms < o.ms || (ms == o.ms && seq < o.seq); }
  bool operator<=(const StreamId& o) const { return !(o < *this); }
  bool operator==(const StreamId& o) const { return ms == o.ms && seq == o.seq; }
};

// Redis connection options of an update_source section.
RedisClientOptions UpdateSourceClientOptions(const UpdateSourceConfig& config);

// Publishes rows to the tables' streams. Messages are queued by Publish and
// sent, pipelined, by Flush; Publish flushes by itself when the queue holds
// more than max_pending_bytes (back-pressure: a fast trainer waits for Redis
// instead of growing without bound). Not thread-safe: one per thread.
class UpdatePublisher {
 public:
  // `config` must have update_source.type "redis_stream". Connects now.
  // Throws HpsError (kInvalidArgument for a config without a redis_stream
  // source, kUnavailable if Redis does not answer).
  explicit UpdatePublisher(const ParameterServerConfig& config, int64_t max_pending_bytes = 64 << 20);
  ~UpdatePublisher();

  // Checks the model, table name and dim against the config, then queues the
  // rows as messages of at most update_source.max_batch_size rows each. A
  // key given twice is published once, with its last row.
  void Publish(const std::string& model, const std::string& table, int64_t n, const int64_t* keys,
               const float* vectors, int64_t dim);

  // Sends every queued message; returns once Redis has stored them all.
  // If it throws, the messages stay queued for the next Flush.
  void Flush();

  int64_t rows_published() const { return rows_published_; }
  int64_t messages_published() const { return messages_published_; }

 private:
  const ParameterServerConfig config_;
  const int64_t max_pending_bytes_;
  std::unique_ptr<RedisClusterClient> client_;
  std::vector<RedisCommand> pending_;
  int64_t pending_bytes_ = 0;
  int64_t rows_published_ = 0;
  int64_t messages_published_ = 0;
};

}  // namespace tf_hps

#endif  // TF_HPS_CORE_UPDATE_STREAM_H_
