// The parameter-server configuration: HugeCTR HPS's JSON schema, parsed once.
//
// Every field is declared once, in the Visit*() functions of config.cc, with
// its JSON name and whether it is required; the struct members below carry
// the defaults. The same field list drives parsing (with type checks that
// name the JSON path, e.g. `models[0].embedding_vecsize_per_table`) and
// writing the canonical JSON that a SavedModel embeds, so the two can never
// disagree.
#ifndef TF_HPS_CORE_CONFIG_H_
#define TF_HPS_CORE_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "storage/options.h"  // VolatileDbConfig, PersistentDbConfig: the backends' own options

namespace tf_hps {

struct UpdateSourceConfig {
  std::string type = "null";  // "null", "kafka_message_queue" (not built) or "redis_stream"
  std::string brokers = "127.0.0.1:9092";
  int64_t metadata_refresh_interval_ms = 30000;
  int64_t receive_buffer_size = 262144;
  int64_t poll_timeout_ms = 500;
  int64_t max_batch_size = 8192;
  int64_t failure_backoff_ms = 50;
  int64_t max_commit_interval = 32;
  // redis_stream (tf_hps extension): the Redis server(s) carrying the streams,
  // credentials, a name for this serving node (default: the host name; the
  // group that writes the persistent database is named after it and the
  // database path), and the length streams are trimmed to (entries, about).
  std::string address = "127.0.0.1:6379";
  std::string user_name = "default";
  std::string password;      // as VolatileDbConfig::password
  std::string password_ref;  // as VolatileDbConfig::password_ref
  std::string node_id;
  int64_t max_stream_entries = 100000;
  // TLS to the stream server(s), as in VolatileDbConfig.
  bool enable_tls = false;
  std::string tls_ca_certificate = "cacertbundle.crt";
  std::string tls_client_certificate = "client_cert.pem";
  std::string tls_client_key = "client_key.pem";
  std::string tls_server_name_identification = "redis.localhost";
};

struct ModelConfig {
  std::string model;
  std::vector<std::string> sparse_files;  // one folder per table
  std::string dense_file;
  std::string network_file;
  std::vector<std::string> embedding_table_names;  // default sparse_embedding<i>
  std::vector<int64_t> embedding_vecsize_per_table;
  std::vector<int64_t> maxnum_catfeature_query_per_table_per_sample;
  std::vector<double> default_value_for_each_table;  // padded with 0.0
  std::vector<int64_t> deployed_device_list;
  int64_t max_batch_size = 64;
  double hit_rate_threshold = 0.9;
  bool gpucache = true;
  double gpucacheper = 0.2;
  int64_t num_of_worker_buffer_in_pool = 1;
  int64_t num_of_refresher_buffer_in_pool = 1;
  double cache_refresh_percentage_per_iteration = 0.0;
  int64_t thread_pool_size = 16;
  std::string embedding_cache_type = "dynamic";  // dynamic|static|uvm|stochastic
  bool use_static_table = false;
  bool use_hctr_cache_implementation = true;
  bool init_ec = true;
  bool enable_pagelock = false;
  bool fp8_quant = false;
  bool use_context_stream = true;
  bool fuse_embedding_table = true;
  int64_t maxnum_des_feature_per_sample = 26;
  double refresh_delay = 0.0;
  double refresh_interval = 0.0;
  int64_t label_dim = 1;
  int64_t slot_num = 10;

  int64_t num_tables() const {
    return static_cast<int64_t>(embedding_vecsize_per_table.size());
  }
};

struct ParameterServerConfig {
  bool supportlonglong = true;
  bool fuse_embedding_table = false;
  // tf_hps extension: log every table's counters this often (0: never).
  double stats_log_interval_seconds = 0.0;
  std::vector<ModelConfig> models;
  VolatileDbConfig volatile_db;  // absent: an in-process hash map
  PersistentDbConfig persistent_db;  // absent: disabled
  UpdateSourceConfig update_source;

  // Index into `models`, or -1.
  int FindModel(const std::string& name) const;
};

// Parses HPS JSON text. Relative paths (sparse_files, persistent_db.path,
// and the tls_* files of a section with enable_tls) resolve against `base_dir` (the config file's folder); an empty base_dir
// leaves them as they are. A relative sparse_files folder that is not in
// base_dir but is in the working directory (where HPS looked) resolves there. Unknown keys are not errors: each one appends a
// message to `warnings`. Throws HpsError(kInvalidArgument) naming the JSON
// path on a missing required key, a wrong type or an invalid value.
ParameterServerConfig ParseConfig(const std::string& json_text,
                                  const std::string& base_dir,
                                  std::vector<std::string>* warnings);

// Reads and parses a config file (relative paths resolve against its folder).
// Throws HpsError(kNotFound) if the file cannot be read.
ParameterServerConfig LoadConfigFile(const std::string& path,
                                     std::vector<std::string>* warnings);

// Parse one database section on its own (the JSON object that stands under
// "volatile_db" or "persistent_db"), for tools that talk to a database
// without a whole config. Same checks and canonical names as ParseConfig.
VolatileDbConfig ParseVolatileDbConfig(const std::string& json_text, const std::string& base_dir,
                                       std::vector<std::string>* warnings);
PersistentDbConfig ParsePersistentDbConfig(const std::string& json_text, const std::string& base_dir,
                                           std::vector<std::string>* warnings);

// The canonical JSON of a parsed config: every known key written out, with
// defaults filled in and paths absolute. ParseConfig(ToCanonicalJson(c))
// gives back c with no warnings. Secrets (volatile_db.password,
// update_source.password) are never written: an environment reference
// ("$env:NAME") is written as it is, and a literal password as
// "$redacted:<id>", which only this process can resolve (see ResolveSecret).
std::string ToCanonicalJson(const ParameterServerConfig& config);

// Secrets. A password value of the form "$env:NAME" names an environment
// variable (NAME matches [A-Za-z_][A-Za-z0-9_]*) that holds the secret; it
// is read by ParseConfig / ParseVolatileDbConfig, i.e. when a server,
// storage or publisher is created from the config, and throws
// HpsError(kFailedPrecondition) naming the variable and the JSON path when it
// is unset or empty. LoadConfigFile does not need the variable (it only reads
// the file; ToCanonicalJson keeps the reference). "$redacted:<id>" stands for
// a literal password this process has seen. Any other value is the password.
// Returns the secret; never logs or reports it.
std::string ResolveSecret(const std::string& value, const std::string& json_path);

}  // namespace tf_hps

#endif  // TF_HPS_CORE_CONFIG_H_
