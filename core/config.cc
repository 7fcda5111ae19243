#include "core/config.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <regex>
#include <set>
#include <sstream>

#include "base/error.h"
#include "core/table_file.h"

namespace tf_hps {
namespace {

using Json = nlohmann::ordered_json;

enum class Need { kOptional, kRequired };

[[noreturn]] void Fail(const std::string& path, const std::string& what) {
  ThrowInvalidArgument("config " + path + ": " + what);
}

std::string Got(const Json& v) { return std::string(", got ") + v.type_name(); }

std::string Printable(const std::string& value, size_t max_bytes);

// --- typed reads: one overload per field type -------------------------------

void Read(const Json& v, const std::string& path, bool* out) {
  if (!v.is_boolean()) Fail(path, "expected a boolean" + Got(v));
  *out = v.get<bool>();
}

void Read(const Json& v, const std::string& path, int64_t* out) {
  if (v.is_number_integer()) {
    if (v.is_number_unsigned() && v.get<uint64_t>() > INT64_MAX)
      Fail(path, "integer out of range");
    *out = v.get<int64_t>();
  } else if (v.is_number_float() && std::nearbyint(v.get<double>()) == v.get<double>() &&
             std::fabs(v.get<double>()) < 9.2e18) {
    *out = static_cast<int64_t>(v.get<double>());
  } else {
    Fail(path, "expected an integer" + (v.is_number() ? std::string(", got a fraction") : Got(v)));
  }
}

void Read(const Json& v, const std::string& path, uint64_t* out) {
  if (v.is_number_unsigned()) {
    *out = v.get<uint64_t>();
  } else if (v.is_number_integer()) {
    Fail(path, "expected a non-negative integer");
  } else if (v.is_number_float() && v.get<double>() >= 0 &&
             std::nearbyint(v.get<double>()) == v.get<double>()) {
    double d = v.get<double>();
    *out = d >= 1.8446744073709552e19 ? UINT64_MAX : static_cast<uint64_t>(d);
  } else {
    Fail(path, "expected a non-negative integer" + Got(v));
  }
}

void Read(const Json& v, const std::string& path, double* out) {
  if (!v.is_number()) Fail(path, "expected a number" + Got(v));
  *out = v.get<double>();
}

void Read(const Json& v, const std::string& path, std::string* out) {
  if (!v.is_string()) Fail(path, "expected a string" + Got(v));
  *out = v.get<std::string>();
}

template <class T>
void Read(const Json& v, const std::string& path, std::vector<T>* out) {
  if (!v.is_array()) Fail(path, "expected an array" + Got(v));
  out->assign(v.size(), T());
  for (size_t i = 0; i < v.size(); ++i)
    Read(v[i], path + "[" + std::to_string(i) + "]", &(*out)[i]);
}

// Reads the fields of one JSON object; remembers which keys it knew so the
// rest can be reported once each.
class JsonReader {
 public:
  JsonReader(const Json& obj, std::string path, std::vector<std::string>* warnings)
      : obj_(obj), path_(std::move(path)), warnings_(warnings) {
    if (!obj_.is_object()) Fail(path_.empty() ? "(top level)" : path_, "expected an object" + Got(obj_));
  }
  ~JsonReader() = default;

  template <class T>
  void operator()(const char* key, T& field, Need need = Need::kOptional) {
    known_.insert(key);
    auto it = obj_.find(key);
    if (it == obj_.end()) {
      if (need == Need::kRequired) Fail(Child(key), "required key is missing");
      return;
    }
    Read(*it, Child(key), &field);
  }

  const Json* Find(const char* key) {
    known_.insert(key);
    auto it = obj_.find(key);
    return it == obj_.end() ? nullptr : &*it;
  }

  std::string Child(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }

  void WarnUnknownKeys() const {
    for (auto it = obj_.begin(); it != obj_.end(); ++it) {
      if (!known_.count(it.key()))
        warnings_->push_back("config " + Child(Printable(it.key(), 130)) + ": unknown key, ignored");
    }
  }

 private:
  const Json& obj_;
  std::string path_;
  std::vector<std::string>* warnings_;
  std::set<std::string> known_;
};

class JsonWriter {
 public:
  explicit JsonWriter(Json* out) : out_(out) {}
  template <class T>
  void operator()(const char* key, const T& field, Need = Need::kOptional) {
    (*out_)[key] = field;
  }

 private:
  Json* out_;
};

// --- the schema: each field once --------------------------------------------

template <class V>
void VisitVolatileDb(V& v, VolatileDbConfig& c) {
  v("type", c.type);
  v("address", c.address);
  v("user_name", c.user_name);
  v("password", c.password);
  v("num_partitions", c.num_partitions);
  v("allocation_rate", c.allocation_rate);
  v("shared_memory_size", c.shared_memory_size);
  v("shared_memory_name", c.shared_memory_name);
  v("shared_memory_auto_remove", c.shared_memory_auto_remove);
  v("num_node_connections", c.num_node_connections);
  v("max_batch_size", c.max_batch_size);
  v("enable_tls", c.enable_tls);
  v("tls_ca_certificate", c.tls_ca_certificate);
  v("tls_client_certificate", c.tls_client_certificate);
  v("tls_client_key", c.tls_client_key);
  v("tls_server_name_identification", c.tls_server_name_identification);
  v("overflow_margin", c.overflow_margin);
  v("overflow_policy", c.overflow_policy);
  v("overflow_resolution_target", c.overflow_resolution_target);
  v("initial_cache_rate", c.initial_cache_rate);
  v("cache_missed_embeddings", c.cache_missed_embeddings);
  v("update_filters", c.update_filters);
  v("initialize_after_startup", c.initialize_after_startup);
}

template <class V>
void VisitPersistentDb(V& v, PersistentDbConfig& c) {
  v("type", c.type);
  v("path", c.path);
  v("num_threads", c.num_threads);
  v("read_only", c.read_only);
  v("max_batch_size", c.max_batch_size);
  v("update_filters", c.update_filters);
  v("initialize_after_startup", c.initialize_after_startup);
}

template <class V>
void VisitUpdateSource(V& v, UpdateSourceConfig& c) {
  v("type", c.type);
  v("brokers", c.brokers);
  v("metadata_refresh_interval_ms", c.metadata_refresh_interval_ms);
  v("receive_buffer_size", c.receive_buffer_size);
  v("poll_timeout_ms", c.poll_timeout_ms);
  v("max_batch_size", c.max_batch_size);
  v("failure_backoff_ms", c.failure_backoff_ms);
  v("max_commit_interval", c.max_commit_interval);
  v("address", c.address);
  v("user_name", c.user_name);
  v("password", c.password);
  v("node_id", c.node_id);
  v("max_stream_entries", c.max_stream_entries);
  v("enable_tls", c.enable_tls);
  v("tls_ca_certificate", c.tls_ca_certificate);
  v("tls_client_certificate", c.tls_client_certificate);
  v("tls_client_key", c.tls_client_key);
  v("tls_server_name_identification", c.tls_server_name_identification);
}

template <class V>
void VisitModel(V& v, ModelConfig& m) {
  v("model", m.model, Need::kRequired);
  v("sparse_files", m.sparse_files, Need::kRequired);
  v("dense_file", m.dense_file);
  v("network_file", m.network_file);
  v("embedding_table_names", m.embedding_table_names);
  v("embedding_vecsize_per_table", m.embedding_vecsize_per_table, Need::kRequired);
  v("maxnum_catfeature_query_per_table_per_sample",
    m.maxnum_catfeature_query_per_table_per_sample, Need::kRequired);
  v("default_value_for_each_table", m.default_value_for_each_table, Need::kRequired);
  v("deployed_device_list", m.deployed_device_list, Need::kRequired);
  v("max_batch_size", m.max_batch_size);
  v("hit_rate_threshold", m.hit_rate_threshold);
  v("gpucache", m.gpucache);
  v("gpucacheper", m.gpucacheper);
  v("num_of_worker_buffer_in_pool", m.num_of_worker_buffer_in_pool);
  v("num_of_refresher_buffer_in_pool", m.num_of_refresher_buffer_in_pool);
  v("cache_refresh_percentage_per_iteration", m.cache_refresh_percentage_per_iteration);
  v("thread_pool_size", m.thread_pool_size);
  v("embedding_cache_type", m.embedding_cache_type);
  v("use_static_table", m.use_static_table);
  v("use_hctr_cache_implementation", m.use_hctr_cache_implementation);
  v("init_ec", m.init_ec);
  v("enable_pagelock", m.enable_pagelock);
  v("fp8_quant", m.fp8_quant);
  v("use_context_stream", m.use_context_stream);
  v("fuse_embedding_table", m.fuse_embedding_table);
  v("maxnum_des_feature_per_sample", m.maxnum_des_feature_per_sample);
  v("refresh_delay", m.refresh_delay);
  v("refresh_interval", m.refresh_interval);
  v("label_dim", m.label_dim);
  v("slot_num", m.slot_num);
}

// --- validation ---------------------------------------------------------------

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char ch) { return std::tolower(ch); });
  return s;
}

// Text for an error message: at most max_bytes of it, and bytes other than
// printable ASCII written as \xNN, so the message stays one line of valid
// UTF-8 whatever the value holds.
std::string Printable(const std::string& value, size_t max_bytes) {
  std::string out;
  for (size_t i = 0; i < value.size() && i < max_bytes; ++i) {
    const unsigned char ch = value[i];
    if (ch >= 0x20 && ch < 0x7f) {
      out += static_cast<char>(ch);
    } else {
      char hex[5];
      std::snprintf(hex, sizeof(hex), "\\x%02x", ch);
      out += hex;
    }
  }
  return out;
}

// A value quoted in an error message, cut short so that a huge value cannot
// make a huge message.
std::string Quote(const std::string& value) {
  constexpr size_t kMax = 130;
  if (value.size() <= kMax) return "'" + Printable(value, kMax) + "'";
  return "'" + Printable(value, kMax) + "...' (" + std::to_string(value.size()) + " bytes)";
}

// Maps an accepted spelling to its canonical name.
void Canonicalize(std::string* value, const std::string& path,
                  const std::map<std::string, std::string>& aliases) {
  auto it = aliases.find(Lower(*value));
  if (it == aliases.end()) {
    std::set<std::string> names;
    for (const auto& [alias, name] : aliases) names.insert(name);
    std::string list;
    for (const auto& n : names) list += (list.empty() ? "" : ", ") + ("'" + n + "'");
    Fail(path, "unknown value " + Quote(*value) + "; expected one of " + list);
  }
  *value = it->second;
}

// HPS's rule for model and table names, [a-zA-Z0-9_-]{1,120}: they become
// parts of Redis keys (hps_et{<tag>/p<i>}v), stream keys (hps_upd{<tag>}),
// RocksDB column families and file names, so nothing else may pass.
bool IsValidName(const std::string& name) {
  if (name.empty() || name.size() > 120) return false;
  for (unsigned char ch : name) {
    if (!std::isalnum(ch) && ch != '_' && ch != '-') return false;
  }
  return true;
}

void CheckName(const std::string& name, const std::string& path) {
  if (!IsValidName(name))
    Fail(path, "name " + Quote(name) +
                   " must match [a-zA-Z0-9_-]{1,120} (1 to 120 ASCII letters, digits, '_' or '-'), as in HPS: "
                   "names become parts of database keys, stream keys and file names");
}

// --- secrets ------------------------------------------------------------------

constexpr char kEnvPrefix[] = "$env:";
constexpr char kRedactedPrefix[] = "$redacted:";

bool HasPrefix(const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; }

bool IsEnvName(const std::string& name) {
  if (name.empty() || std::isdigit(static_cast<unsigned char>(name[0]))) return false;
  for (unsigned char ch : name) {
    if (!std::isalnum(ch) && ch != '_') return false;
  }
  return true;
}

// The literal passwords this process has read, under random ids: canonical
// JSON (and so a SavedModel) carries "$redacted:<id>" instead of the secret.
// The id says nothing about the secret and means nothing in another process.
class SecretStore {
 public:
  static SecretStore& Global() {
    static SecretStore* store = new SecretStore();  // never destroyed
    return *store;
  }

  std::string IdOf(const std::string& secret) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = ids_.find(secret);
    if (it != ids_.end()) return it->second;
    std::string id;
    do {
      char text[17];
      std::snprintf(text, sizeof(text), "%016llx", static_cast<unsigned long long>(random_()));
      id = text;
    } while (secrets_.count(id));
    ids_[secret] = id;
    secrets_[id] = secret;
    return id;
  }

  bool Find(const std::string& id, std::string* secret) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = secrets_.find(id);
    if (it == secrets_.end()) return false;
    *secret = it->second;
    return true;
  }

 private:
  SecretStore() : random_(std::random_device()()) {
    random_.seed((static_cast<uint64_t>(std::random_device()()) << 32) ^ std::random_device()());
  }
  std::mutex mutex_;
  std::mt19937_64 random_;
  std::map<std::string, std::string> ids_;      // secret -> id
  std::map<std::string, std::string> secrets_;  // id -> secret
};

// Whether a config read resolves secret references (a server, storage or
// publisher is being created) or only keeps them (a config file is read to
// be shown or embedded).
enum class Secrets { kResolve, kKeepReferences };

[[noreturn]] void FailPrecondition(const std::string& path, const std::string& what) {
  throw HpsError(ErrorCode::kFailedPrecondition, "config " + path + ": " + what);
}

void CheckSecretReference(const std::string& value, const std::string& path) {
  if (HasPrefix(value, kEnvPrefix) && !IsEnvName(value.substr(sizeof(kEnvPrefix) - 1)))
    Fail(path, "\"$env:\" must be followed by the name of an environment variable, matching "
               "[A-Za-z_][A-Za-z0-9_]*");
}

// `*password` holds the value the config wrote; splits it into the secret
// (resolved when `used` and mode is kResolve) and its reference.
void SetUpSecret(std::string* password, std::string* ref, const std::string& path, bool used, Secrets mode,
                 std::vector<std::string>* warnings) {
  const std::string written = *password;
  ref->clear();
  if (HasPrefix(written, kEnvPrefix) || HasPrefix(written, kRedactedPrefix)) {
    CheckSecretReference(written, path);
    *ref = written;
    *password = used && mode == Secrets::kResolve ? ResolveSecret(written, path) : std::string();
    return;
  }
  if (!written.empty() && mode == Secrets::kKeepReferences && warnings != nullptr)
    warnings->push_back("config " + path +
                        ": holds a literal password; tf_hps keeps it out of the canonical config and of "
                        "exported SavedModels (they carry \"$redacted:<id>\", which only this process "
                        "resolves): write \"$env:NAME\" instead and set NAME where the model is served");
}

void CheckRange(double value, double lo, double hi, const std::string& path) {
  if (!(value >= lo && value <= hi))
    Fail(path, "value " + std::to_string(value) + " is outside [" + std::to_string(lo) + ", " +
                   std::to_string(hi) + "]");
}

void CheckPositive(int64_t value, const std::string& path) {
  if (value < 1) Fail(path, "must be at least 1, got " + std::to_string(value));
}

std::string ResolvePath(const std::string& path, const std::string& base_dir) {
  if (path.empty() || base_dir.empty()) return path;
  std::filesystem::path p(path);
  if (p.is_absolute()) return p.lexically_normal().string();
  return (std::filesystem::path(base_dir) / p).lexically_normal().string();
}

// A config file's relative table folder: in the file's folder if it is there,
// else (HPS's way) in the working directory if it is there, else the file's
// folder, noting both places for the loader's "does not exist" error.
std::string ResolveTableFolder(const std::string& written, const std::string& base_dir) {
  if (base_dir.empty() || std::filesystem::path(written).is_absolute()) return ResolvePath(written, base_dir);
  std::error_code ec;
  const std::string in_config_folder = ResolvePath(written, base_dir);
  if (std::filesystem::exists(in_config_folder, ec)) return in_config_folder;
  const std::filesystem::path cwd = std::filesystem::current_path(ec);
  if (!ec) {
    const std::string in_working_dir = (cwd / written).lexically_normal().string();
    if (std::filesystem::exists(in_working_dir, ec)) return in_working_dir;
    NoteTableFolderSearch(in_config_folder, "the config names '" + written + "': looked in the config file's folder, " +
                                                in_config_folder + ", then in the working directory, " +
                                                in_working_dir);
  }
  return in_config_folder;
}

// The certificate and key files of a section with TLS on resolve like the
// other paths; with TLS off they are left as written (never opened).
template <class Section>
void ResolveTlsPaths(Section& c, const std::string& base_dir) {
  if (!c.enable_tls) return;
  c.tls_ca_certificate = ResolvePath(c.tls_ca_certificate, base_dir);
  c.tls_client_certificate = ResolvePath(c.tls_client_certificate, base_dir);
  c.tls_client_key = ResolvePath(c.tls_client_key, base_dir);
}

void ValidateModel(ModelConfig& m, const std::string& at, const std::string& base_dir) {
  CheckName(m.model, at + ".model");
  const size_t n = m.sparse_files.size();
  if (n == 0) Fail(at + ".sparse_files", "must name at least one table folder");
  auto same_length = [&](size_t size, const char* key) {
    if (size != n)
      Fail(at + "." + key, "has " + std::to_string(size) + " entries but sparse_files has " +
                               std::to_string(n));
  };
  same_length(m.embedding_vecsize_per_table.size(), "embedding_vecsize_per_table");
  same_length(m.maxnum_catfeature_query_per_table_per_sample.size(),
              "maxnum_catfeature_query_per_table_per_sample");
  if (m.embedding_table_names.empty()) {
    for (size_t i = 0; i < n; ++i) m.embedding_table_names.push_back("sparse_embedding" + std::to_string(i));
  }
  same_length(m.embedding_table_names.size(), "embedding_table_names");
  std::set<std::string> table_names;
  for (size_t i = 0; i < n; ++i) {
    const std::string idx = "[" + std::to_string(i) + "]";
    CheckName(m.embedding_table_names[i], at + ".embedding_table_names" + idx);
    if (!table_names.insert(m.embedding_table_names[i]).second)
      Fail(at + ".embedding_table_names" + idx, "duplicate table name '" + m.embedding_table_names[i] + "'");
    CheckPositive(m.embedding_vecsize_per_table[i], at + ".embedding_vecsize_per_table" + idx);
    CheckPositive(m.maxnum_catfeature_query_per_table_per_sample[i],
                  at + ".maxnum_catfeature_query_per_table_per_sample" + idx);
    if (m.sparse_files[i].empty()) Fail(at + ".sparse_files" + idx, "empty path");
    m.sparse_files[i] = ResolveTableFolder(m.sparse_files[i], base_dir);
  }
  if (m.default_value_for_each_table.size() > n)
    Fail(at + ".default_value_for_each_table",
         "has " + std::to_string(m.default_value_for_each_table.size()) +
             " entries but sparse_files has " + std::to_string(n));
  m.default_value_for_each_table.resize(n, 0.0);
  if (m.deployed_device_list.empty()) Fail(at + ".deployed_device_list", "must not be empty");
  for (size_t i = 0; i < m.deployed_device_list.size(); ++i) {
    if (m.deployed_device_list[i] < 0)
      Fail(at + ".deployed_device_list[" + std::to_string(i) + "]", "device ids are non-negative");
  }
  CheckPositive(m.max_batch_size, at + ".max_batch_size");
  // Seconds a timer waits: beyond 1e9 (31 years) its clock arithmetic overflows.
  CheckRange(m.refresh_interval, -1e9, 1e9, at + ".refresh_interval");  // <= 0: no refresh
  CheckRange(m.refresh_delay, -1e9, 1e9, at + ".refresh_delay");
  CheckPositive(m.num_of_worker_buffer_in_pool, at + ".num_of_worker_buffer_in_pool");
  CheckPositive(m.num_of_refresher_buffer_in_pool, at + ".num_of_refresher_buffer_in_pool");
  CheckPositive(m.thread_pool_size, at + ".thread_pool_size");
  CheckRange(m.gpucacheper, 0.0, 1.0, at + ".gpucacheper");
  CheckRange(m.hit_rate_threshold, 0.0, 1e9, at + ".hit_rate_threshold");
  CheckRange(m.cache_refresh_percentage_per_iteration, 0.0, 1.0,
             at + ".cache_refresh_percentage_per_iteration");
  Canonicalize(&m.embedding_cache_type, at + ".embedding_cache_type",
               {{"dynamic", "dynamic"}, {"static", "static"}, {"uvm", "uvm"}, {"stochastic", "stochastic"}});
  if (m.use_static_table) m.embedding_cache_type = "static";
}

void ValidateVolatileDb(VolatileDbConfig& c) {
  Canonicalize(&c.type, "volatile_db.type",
               {{"hash_map", "hash_map"}, {"hashmap", "hash_map"}, {"hash", "hash_map"}, {"map", "hash_map"},
                {"parallel_hash_map", "parallel_hash_map"}, {"parallel_hashmap", "parallel_hash_map"},
                {"parallel_hash", "parallel_hash_map"}, {"parallel_map", "parallel_hash_map"},
                {"multi_process_hash_map", "multi_process_hash_map"},
                {"multi_process_hashmap", "multi_process_hash_map"},
                {"multi_process_hash", "multi_process_hash_map"},
                {"multi_process_map", "multi_process_hash_map"},
                {"redis_cluster", "redis_cluster"}, {"redis", "redis_cluster"},
                {"disabled", "disabled"}, {"disable", "disabled"}, {"none", "disabled"}});
  Canonicalize(&c.overflow_policy, "volatile_db.overflow_policy",
               {{"evict_random", "evict_random"}, {"random", "evict_random"},
                {"evict_least_used", "evict_least_used"}, {"least_used", "evict_least_used"},
                {"evict_oldest", "evict_oldest"}, {"oldest", "evict_oldest"}});
  CheckPositive(c.num_partitions, "volatile_db.num_partitions");
  CheckPositive(c.max_batch_size, "volatile_db.max_batch_size");
  CheckPositive(c.num_node_connections, "volatile_db.num_node_connections");
  CheckPositive(c.allocation_rate, "volatile_db.allocation_rate");
  CheckRange(c.overflow_resolution_target, 0.0, 1.0, "volatile_db.overflow_resolution_target");
  CheckRange(c.initial_cache_rate, 0.0, 1.0, "volatile_db.initial_cache_rate");
  if (c.overflow_margin == 0) Fail("volatile_db.overflow_margin", "must be at least 1");
}

void ValidatePersistentDb(PersistentDbConfig& c, const std::string& base_dir) {
  Canonicalize(&c.type, "persistent_db.type",
               {{"rocks_db", "rocks_db"}, {"rocksdb", "rocks_db"}, {"rocks", "rocks_db"},
                {"disabled", "disabled"}, {"disable", "disabled"}, {"none", "disabled"}});
  CheckPositive(c.num_threads, "persistent_db.num_threads");
  CheckPositive(c.max_batch_size, "persistent_db.max_batch_size");
  c.path = ResolvePath(c.path, base_dir);
}

void ValidateUpdateSource(UpdateSourceConfig& c) {
  Canonicalize(&c.type, "update_source.type",
               {{"null", "null"}, {"none", "null"}, {"disabled", "null"},
                {"kafka_message_queue", "kafka_message_queue"}, {"kafka", "kafka_message_queue"},
                {"kafka_mq", "kafka_message_queue"}, {"redis_stream", "redis_stream"},
                {"redis_streams", "redis_stream"}});
  CheckPositive(c.poll_timeout_ms, "update_source.poll_timeout_ms");
  CheckPositive(c.max_batch_size, "update_source.max_batch_size");
  CheckPositive(c.failure_backoff_ms, "update_source.failure_backoff_ms");
  if (c.max_stream_entries < 0)
    Fail("update_source.max_stream_entries", "must not be negative, got " + std::to_string(c.max_stream_entries));
}

// Reads one JSON object's known fields with `visit`, then reports the rest.
template <class VisitFn>
void ReadObject(const Json& object, const std::string& path, std::vector<std::string>* warnings, VisitFn&& visit) {
  JsonReader reader(object, path, warnings);
  visit(reader);
  reader.WarnUnknownKeys();
}

Json ParseJson(const std::string& json_text) {
  try {
    return Json::parse(json_text);
  } catch (const Json::parse_error& e) {
    // nlohmann quotes the bytes it stopped at, which need not be UTF-8.
    ThrowInvalidArgument("config is not valid JSON: " + Printable(e.what(), 400));
  }
}

}  // namespace

int ParameterServerConfig::FindModel(const std::string& name) const {
  for (size_t i = 0; i < models.size(); ++i) {
    if (models[i].model == name) return static_cast<int>(i);
  }
  return -1;
}

namespace {

ParameterServerConfig ParseConfigWith(const std::string& json_text, const std::string& base_dir,
                                      std::vector<std::string>* warnings, Secrets secrets) {
  const Json root = ParseJson(json_text);
  ParameterServerConfig config;
  JsonReader top(root, "", warnings);
  top("supportlonglong", config.supportlonglong, Need::kRequired);
  top("fuse_embedding_table", config.fuse_embedding_table);
  top("stats_log_interval_seconds", config.stats_log_interval_seconds);
  CheckRange(config.stats_log_interval_seconds, 0.0, 1e9, "stats_log_interval_seconds");

  const Json* models = top.Find("models");
  if (models == nullptr) Fail("models", "required key is missing");
  if (!models->is_array()) Fail("models", "expected an array" + Got(*models));
  if (models->empty()) Fail("models", "must hold at least one model");
  std::set<std::string> model_names;
  for (size_t i = 0; i < models->size(); ++i) {
    const std::string at = "models[" + std::to_string(i) + "]";
    ModelConfig model;
    ReadObject((*models)[i], at, warnings, [&](JsonReader& r) { VisitModel(r, model); });
    ValidateModel(model, at, base_dir);
    if (!model_names.insert(model.model).second)
      Fail(at + ".model", "duplicate model name '" + model.model + "'");
    config.models.push_back(std::move(model));
  }
  if (const Json* v = top.Find("volatile_db"))
    ReadObject(*v, "volatile_db", warnings, [&](JsonReader& r) { VisitVolatileDb(r, config.volatile_db); });
  ValidateVolatileDb(config.volatile_db);
  ResolveTlsPaths(config.volatile_db, base_dir);
  SetUpSecret(&config.volatile_db.password, &config.volatile_db.password_ref, "volatile_db.password",
              config.volatile_db.type == "redis_cluster", secrets, warnings);
  if (const Json* p = top.Find("persistent_db"))
    ReadObject(*p, "persistent_db", warnings, [&](JsonReader& r) { VisitPersistentDb(r, config.persistent_db); });
  ValidatePersistentDb(config.persistent_db, base_dir);
  if (const Json* u = top.Find("update_source"))
    ReadObject(*u, "update_source", warnings, [&](JsonReader& r) { VisitUpdateSource(r, config.update_source); });
  ValidateUpdateSource(config.update_source);
  ResolveTlsPaths(config.update_source, base_dir);
  SetUpSecret(&config.update_source.password, &config.update_source.password_ref, "update_source.password",
              config.update_source.type == "redis_stream", secrets, warnings);
  top.WarnUnknownKeys();
  return config;
}

}  // namespace

std::string ResolveSecret(const std::string& value, const std::string& json_path) {
  if (HasPrefix(value, kEnvPrefix)) {
    CheckSecretReference(value, json_path);
    const std::string name = value.substr(sizeof(kEnvPrefix) - 1);
    const char* secret = std::getenv(name.c_str());
    if (secret == nullptr)
      FailPrecondition(json_path, "environment variable '" + name + "' is not set (the config names it with \"" +
                                      value + "\"); set it where the parameter server runs");
    if (*secret == '\0') FailPrecondition(json_path, "environment variable '" + name + "' is empty");
    return secret;
  }
  if (HasPrefix(value, kRedactedPrefix)) {
    std::string secret;
    if (!SecretStore::Global().Find(value.substr(sizeof(kRedactedPrefix) - 1), &secret))
      FailPrecondition(json_path, Quote(value) +
                                      " stands for a literal password that only the process which read the "
                                      "config file knew: tf_hps never writes literal secrets into a canonical "
                                      "config or a SavedModel. Write \"$env:NAME\" as the password in the config "
                                      "file, set NAME where the model is served, and export again");
    return secret;
  }
  return value;
}

ParameterServerConfig ParseConfig(const std::string& json_text, const std::string& base_dir,
                                  std::vector<std::string>* warnings) {
  return ParseConfigWith(json_text, base_dir, warnings, Secrets::kResolve);
}

VolatileDbConfig ParseVolatileDbConfig(const std::string& json_text, const std::string& base_dir,
                                       std::vector<std::string>* warnings) {
  VolatileDbConfig config;
  ReadObject(ParseJson(json_text), "volatile_db", warnings, [&](JsonReader& r) { VisitVolatileDb(r, config); });
  ValidateVolatileDb(config);
  ResolveTlsPaths(config, base_dir);
  SetUpSecret(&config.password, &config.password_ref, "volatile_db.password", config.type == "redis_cluster",
              Secrets::kResolve, warnings);
  return config;
}

PersistentDbConfig ParsePersistentDbConfig(const std::string& json_text, const std::string& base_dir,
                                           std::vector<std::string>* warnings) {
  PersistentDbConfig config;
  ReadObject(ParseJson(json_text), "persistent_db", warnings, [&](JsonReader& r) { VisitPersistentDb(r, config); });
  ValidatePersistentDb(config, base_dir);
  return config;
}

ParameterServerConfig LoadConfigFile(const std::string& path, std::vector<std::string>* warnings) {
  std::error_code ec;
  if (path.empty()) ThrowNotFound("config file path is empty");
  if (std::filesystem::is_directory(path, ec))
    ThrowInvalidArgument("config file '" + path + "' is a directory, not a JSON file");
  std::ifstream in(path, std::ios::binary);
  if (!in) ThrowNotFound("config file '" + path + "' cannot be opened (does it exist?)");
  std::stringstream text;
  text << in.rdbuf();
  const std::string base_dir = std::filesystem::absolute(path, ec).parent_path().string();
  try {
    return ParseConfigWith(text.str(), base_dir, warnings, Secrets::kKeepReferences);
  } catch (const HpsError& e) {
    throw HpsError(e.code(), std::string(e.what()) + " (in '" + path + "')");
  }
}

std::string ToCanonicalJson(const ParameterServerConfig& in) {
  ParameterServerConfig config = in;  // the visitors take mutable references
  Json root;
  root["supportlonglong"] = config.supportlonglong;
  root["fuse_embedding_table"] = config.fuse_embedding_table;
  root["stats_log_interval_seconds"] = config.stats_log_interval_seconds;
  Json models = Json::array();
  for (ModelConfig& m : config.models) {
    Json model;
    JsonWriter writer(&model);
    VisitModel(writer, m);
    models.push_back(std::move(model));
  }
  root["models"] = std::move(models);
  Json vdb, pdb, updates;
  JsonWriter vdb_writer(&vdb), pdb_writer(&pdb), update_writer(&updates);
  VisitVolatileDb(vdb_writer, config.volatile_db);
  VisitPersistentDb(pdb_writer, config.persistent_db);
  VisitUpdateSource(update_writer, config.update_source);
  // Secrets: their reference, or a process-local id for a literal; never the value.
  auto secret_text = [](const std::string& password, const std::string& ref) {
    if (!ref.empty()) return ref;
    if (password.empty()) return std::string();
    return kRedactedPrefix + SecretStore::Global().IdOf(password);
  };
  vdb["password"] = secret_text(config.volatile_db.password, config.volatile_db.password_ref);
  updates["password"] = secret_text(config.update_source.password, config.update_source.password_ref);
  root["volatile_db"] = std::move(vdb);
  root["persistent_db"] = std::move(pdb);
  root["update_source"] = std::move(updates);
  return root.dump();
}

}  // namespace tf_hps
