// The options of the database backends (storage/): the volatile_db and
// persistent_db sections of a config. core/config.cc parses them (with the
// rest of the config); the backends take them and know nothing of configs.
#ifndef TF_HPS_STORAGE_OPTIONS_H_
#define TF_HPS_STORAGE_OPTIONS_H_

#include <cstdint>
#include <string>
#include <vector>

namespace tf_hps {

// Volatile database (L2): in-process hash map or Redis.
struct VolatileDbConfig {
  // Canonical names: "hash_map", "parallel_hash_map",
  // "multi_process_hash_map", "redis_cluster", "disabled".
  std::string type = "hash_map";
  std::string address = "127.0.0.1:7000";
  std::string user_name = "default";
  // The secret the Redis client sends (resolved: core/config.h, ResolveSecret).
  std::string password;
  // What the config wrote instead of the secret ("$env:NAME" or
  // "$redacted:<id>"); empty when it held the password itself.
  std::string password_ref;
  int64_t num_partitions = 16;
  int64_t allocation_rate = 268435456;
  int64_t shared_memory_size = 17179869184LL;
  std::string shared_memory_name = "hctr_mp_hash_map_database";
  bool shared_memory_auto_remove = true;
  int64_t num_node_connections = 5;
  int64_t max_batch_size = 65536;
  // TLS to Redis (docs/storage.md). With enable_tls, the three paths resolve
  // against the config file's folder; an empty tls_client_certificate means
  // no client certificate, an empty tls_ca_certificate the system trust store.
  bool enable_tls = false;
  std::string tls_ca_certificate = "cacertbundle.crt";
  std::string tls_client_certificate = "client_cert.pem";
  std::string tls_client_key = "client_key.pem";
  std::string tls_server_name_identification = "redis.localhost";
  // Per-partition row limit; the default means "no limit".
  uint64_t overflow_margin = UINT64_MAX;
  // Canonical names: "evict_random", "evict_least_used", "evict_oldest".
  std::string overflow_policy = "evict_random";
  double overflow_resolution_target = 0.8;
  double initial_cache_rate = 1.0;
  bool cache_missed_embeddings = false;
  std::vector<std::string> update_filters = {"^hps_.+$"};
  bool initialize_after_startup = true;
};

// Persistent database (L3): RocksDB.
struct PersistentDbConfig {
  std::string type = "disabled";  // "rocks_db" or "disabled"
  std::string path = "/tmp/rocksdb";
  int64_t num_threads = 16;
  bool read_only = false;
  int64_t max_batch_size = 65536;
  std::vector<std::string> update_filters = {"^hps_.+$"};
  // tf_hps extension: false keeps what the database holds (ingested ahead of
  // time, plus online updates) instead of loading the table files at start.
  bool initialize_after_startup = true;
};

}  // namespace tf_hps

#endif  // TF_HPS_STORAGE_OPTIONS_H_
