// The Redis volatile database (`volatile_db.type: "redis_cluster"`): tables
// live in a Redis Cluster, or in one standalone Redis server, shared by every
// process that points at it. Each table is split into `num_partitions`
// partitions, each partition being one Redis hash of rows plus one hash of
// access metadata (storage/layout.h; documented in docs/storage.md).
#ifndef TF_HPS_STORAGE_REDIS_CLUSTER_BACKEND_H_
#define TF_HPS_STORAGE_REDIS_CLUSTER_BACKEND_H_

#include <cstdint>
#include <functional>
#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "storage/backend.h"
#include "storage/options.h"
#include "storage/redis_client.h"

namespace tf_hps {

class RedisClusterBackend : public DatabaseBackend {
 public:
  // Connects to the first server of `config.address` that answers and reads
  // the cluster's slot map. Throws HpsError: kUnavailable if no server
  // answers, kInvalidArgument for a bad address or rejected credentials;
  // with enable_tls, as RedisClusterClient's constructor for TLS failures.
  // With start_if_unreachable (a serving process), no answer is not an
  // error: the backend starts unconnected, every call throws kUnavailable
  // until a connection attempt (at most one a second) succeeds.
  explicit RedisClusterBackend(const VolatileDbConfig& config, bool start_if_unreachable = false);
  ~RedisClusterBackend() override;

  const char* name() const override { return "redis_cluster"; }
  void Insert(const std::string& table, int64_t n, const int64_t* keys, const float* values,
              int64_t dim) override;
  // One server-side script per partition and batch: a key's row is written
  // only if `version` is above the one recorded for it (RedisVersionHash).
  void ApplyUpdate(const std::string& table, int64_t n, const int64_t* keys, const float* values, int64_t dim,
                   const std::string& version) override;
  // One server-side script per partition and batch: skips each key that has
  // a version (an update wrote it), and with only_absent each key with a row.
  void InsertUnlessUpdated(const std::string& table, int64_t n, const int64_t* keys, const float* values,
                           int64_t dim, bool only_absent) override;
  int64_t Fetch(const std::string& table, int64_t n, const int64_t* keys, float* values, int64_t dim,
                std::vector<int64_t>* missing) override;
  // One call pipelines to every node at once; splitting it only adds round trips.
  int64_t MinRowsPerFetchShard() const override { return INT64_MAX; }
  int64_t Size(const std::string& table) const override;
  int64_t Evict(const std::string& table, int64_t n, const int64_t* keys) override;
  void EvictTable(const std::string& table) override;
  std::vector<std::string> ListTables() const override;

 private:
  // Writes rows partition by partition, in batches of max_batch_size: each
  // batch is the command begin_batch(partition) returns followed by (key
  // field, row) pairs, plus the overflow metadata; then resolves overflow.
  void WriteRows(const std::string& table, int64_t n, const int64_t* keys, const float* values, int64_t dim,
                 const std::function<RedisCommand(int64_t partition)>& begin_batch);
  // Fetch of keys known to be distinct.
  int64_t FetchDistinct(const std::string& table, int64_t n, const int64_t* keys, float* values, int64_t dim,
                        std::vector<int64_t>* missing);

  enum class Policy { kRandom, kLeastUsed, kOldest };
  static Policy ParsePolicy(const std::string& name);  // canonical config names

  // Indices of keys (n) per partition, in input order: (num_partitions).
  std::vector<std::vector<int64_t>> GroupByPartition(int64_t n, const int64_t* keys) const;
  // Records fetch hits (key indices per partition) in the metadata hashes.
  void TouchMetadata(const std::string& table, const std::vector<std::vector<int64_t>>& hits,
                     const int64_t* keys);
  // Evicts rows of partition `p` by policy until it holds at most the target.
  void ResolveOverflow(const std::string& table, int64_t p, int64_t rows);

  const int64_t num_partitions_;
  const int64_t max_batch_size_;
  const uint64_t overflow_margin_;   // UINT64_MAX: no limit
  const int64_t overflow_target_;    // rows a partition is brought down to
  const Policy policy_;
  const bool track_metadata_;        // a limit with a least_used/oldest policy
  // The client, connecting first if the backend started unconnected; throws
  // HpsError(kUnavailable) while no server answers.
  RedisClusterClient& Client() const;

  static constexpr std::chrono::milliseconds kReconnectEvery{1000};
  RedisClientOptions options_;
  mutable std::mutex connect_mutex_;  // guards owned_client_ and retry_connect_at_ while unconnected
  mutable std::unique_ptr<RedisClusterClient> owned_client_;
  mutable std::chrono::steady_clock::time_point retry_connect_at_{};
  mutable std::atomic<RedisClusterClient*> client_{nullptr};  // set once connected; thread-safe
};

}  // namespace tf_hps

#endif  // TF_HPS_STORAGE_REDIS_CLUSTER_BACKEND_H_
