#include "tools/c_api.h"

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "base/error.h"
#include "base/log.h"
#include "core/config.h"
#include "core/table_file.h"
#include "core/update_stream.h"
#include "storage/factory.h"
#include "storage/redis_client.h"

struct HpsStorage {
  std::unique_ptr<tf_hps::DatabaseBackend> backend;
};

struct HpsUpdatePublisher {
  std::unique_ptr<tf_hps::UpdatePublisher> publisher;
};

namespace {

constexpr int64_t kChunkRows = 1 << 16;

void CopyMessage(const std::string& message, char* err, size_t err_len) {
  if (err == nullptr || err_len == 0) return;
  std::strncpy(err, message.c_str(), err_len - 1);
  err[err_len - 1] = '\0';
}

// Runs fn; on an exception writes its message and returns -(1 + code).
template <class Fn>
int64_t Guarded(char* err, size_t err_len, Fn&& fn) {
  try {
    return fn();
  } catch (const tf_hps::HpsError& e) {
    CopyMessage(e.what(), err, err_len);
    return -1 - static_cast<int64_t>(e.code());
  } catch (const std::bad_alloc&) {
    CopyMessage("out of memory", err, err_len);
    return -1 - static_cast<int64_t>(tf_hps::ErrorCode::kResourceExhausted);
  } catch (const std::exception& e) {
    CopyMessage(e.what(), err, err_len);
    return -1 - static_cast<int64_t>(tf_hps::ErrorCode::kInternal);
  }
}

tf_hps::DatabaseBackend& Backend(HpsStorage* storage) {
  if (storage == nullptr || !storage->backend)
    throw tf_hps::HpsError(tf_hps::ErrorCode::kFailedPrecondition, "storage handle is closed");
  return *storage->backend;
}

}  // namespace

extern "C" {

HpsStorage* hps_storage_open(const char* kind, const char* config_json, int* code, char* err, size_t err_len) {
  auto storage = std::make_unique<HpsStorage>();
  const int64_t rc = Guarded(err, err_len, [&]() -> int64_t {
    std::vector<std::string> warnings;
    const std::string which = kind ? kind : "";
    if (which == "volatile_db") {
      storage->backend = tf_hps::MakeVolatileBackend(tf_hps::ParseVolatileDbConfig(config_json, "", &warnings));
    } else if (which == "persistent_db") {
      storage->backend = tf_hps::MakePersistentBackend(tf_hps::ParsePersistentDbConfig(config_json, "", &warnings));
    } else {
      tf_hps::ThrowInvalidArgument("kind must be 'volatile_db' or 'persistent_db', got '" + which + "'");
    }
    for (const auto& w : warnings) tf_hps::Log(tf_hps::LogLevel::kWarning, w);
    if (!storage->backend) tf_hps::ThrowInvalidArgument(which + " is disabled in this config");
    return 0;
  });
  if (code != nullptr) *code = static_cast<int>(rc < 0 ? -1 - rc : 0);
  return rc < 0 ? nullptr : storage.release();
}

void hps_storage_close(HpsStorage* storage) { delete storage; }

int64_t hps_storage_insert(HpsStorage* storage, const char* table, int64_t n, const int64_t* keys,
                           const float* values, int64_t dim, char* err, size_t err_len) {
  return Guarded(err, err_len, [&]() -> int64_t {
    Backend(storage).Insert(table, n, keys, values, dim);
    return n;
  });
}

int64_t hps_storage_insert_unless_updated(HpsStorage* storage, const char* table, int64_t n, const int64_t* keys,
                                          const float* values, int64_t dim, int only_absent, char* err,
                                          size_t err_len) {
  return Guarded(err, err_len, [&]() -> int64_t {
    Backend(storage).InsertUnlessUpdated(table, n, keys, values, dim, only_absent != 0);
    return n;
  });
}

int64_t hps_storage_apply_update(HpsStorage* storage, const char* table, int64_t n, const int64_t* keys,
                                 const float* values, int64_t dim, const char* version, char* err, size_t err_len) {
  return Guarded(err, err_len, [&]() -> int64_t {
    Backend(storage).ApplyUpdate(table, n, keys, values, dim, version);
    return n;
  });
}

int64_t hps_storage_fetch(HpsStorage* storage, const char* table, int64_t n, const int64_t* keys, float* values,
                          int64_t dim, uint8_t* found, char* err, size_t err_len) {
  return Guarded(err, err_len, [&]() -> int64_t {
    std::vector<int64_t> missing;
    const int64_t hits = Backend(storage).Fetch(table, n, keys, values, dim, &missing);
    std::memset(found, 1, n);
    for (int64_t i : missing) {
      found[i] = 0;
      std::memset(values + i * dim, 0, dim * sizeof(float));
    }
    return hits;
  });
}

int64_t hps_storage_size(HpsStorage* storage, const char* table, char* err, size_t err_len) {
  return Guarded(err, err_len, [&]() -> int64_t { return Backend(storage).Size(table); });
}

int64_t hps_storage_evict(HpsStorage* storage, const char* table, int64_t n, const int64_t* keys, char* err,
                          size_t err_len) {
  return Guarded(err, err_len, [&]() -> int64_t { return Backend(storage).Evict(table, n, keys); });
}

int64_t hps_storage_drop_table(HpsStorage* storage, const char* table, char* err, size_t err_len) {
  return Guarded(err, err_len, [&]() -> int64_t {
    Backend(storage).EvictTable(table);
    return 0;
  });
}

int64_t hps_storage_list_tables(HpsStorage* storage, char* out, size_t out_len, char* err, size_t err_len) {
  return Guarded(err, err_len, [&]() -> int64_t {
    std::string text;
    for (const std::string& t : Backend(storage).ListTables()) text += t + "\n";
    if (out != nullptr && out_len > text.size()) std::memcpy(out, text.c_str(), text.size() + 1);
    return static_cast<int64_t>(text.size() + 1);
  });
}

int64_t hps_storage_ingest(HpsStorage* storage, const char* table, const char* folder, int64_t dim,
                           int keys_are_32_bit, hps_progress_fn progress, void* user, char* err, size_t err_len) {
  return Guarded(err, err_len, [&]() -> int64_t {
    tf_hps::DatabaseBackend& backend = Backend(storage);
    const tf_hps::TableFolderInfo info = tf_hps::InspectTableFolder(folder, dim);
    // As a serving process's start-up load (ParameterServer::LoadTable): a key twice in the files is
    // refused before anything is written; a shared Redis keeps the rows online updates wrote; a
    // RocksDB table ends up holding the files' keys alone.
    const std::vector<int64_t> keys_in_files = tf_hps::DistinctTableKeys(info, keys_are_32_bit != 0);
    const bool retain = backend.HasTable(table);
    int64_t done = 0;
    tf_hps::ReadTableFolder(info, kChunkRows, keys_are_32_bit != 0,
                            [&](const int64_t* keys, const float* values, int64_t n) {
                              backend.InsertUnlessUpdated(table, n, keys, values, dim, /*only_absent=*/false);
                              done += n;
                              if (progress) progress(done, info.num_rows, user);
                            });
    if (retain)
      backend.RetainOnly(table, static_cast<int64_t>(keys_in_files.size()), keys_in_files.data());
    return done;
  });
}

int64_t hps_storage_verify(HpsStorage* storage, const char* table, const char* folder, int64_t dim,
                           int keys_are_32_bit, int64_t* missing, int64_t* mismatched, hps_progress_fn progress,
                           void* user, char* err, size_t err_len) {
  return Guarded(err, err_len, [&]() -> int64_t {
    tf_hps::DatabaseBackend& backend = Backend(storage);
    const tf_hps::TableFolderInfo info = tf_hps::InspectTableFolder(folder, dim);
    int64_t done = 0;
    *missing = 0;
    *mismatched = 0;
    std::vector<float> stored;
    std::vector<int64_t> absent;
    tf_hps::ReadTableFolder(info, kChunkRows, keys_are_32_bit != 0,
                            [&](const int64_t* keys, const float* values, int64_t n) {
                              stored.assign(n * dim, 0.0f);
                              absent.clear();
                              backend.Fetch(table, n, keys, stored.data(), dim, &absent);
                              *missing += static_cast<int64_t>(absent.size());
                              size_t a = 0;
                              for (int64_t i = 0; i < n; ++i) {
                                if (a < absent.size() && absent[a] == i) {
                                  ++a;
                                  continue;
                                }
                                if (std::memcmp(&stored[i * dim], values + i * dim, dim * sizeof(float)) != 0)
                                  ++*mismatched;
                              }
                              done += n;
                              if (progress) progress(done, info.num_rows, user);
                            });
    return done;
  });
}

int hps_redis_key_slot(const char* key, size_t len) { return tf_hps::RedisKeySlot(std::string_view(key, len)); }

int64_t hps_config_load(const char* path, char* out, size_t out_len, char* err, size_t err_len) {
  return Guarded(err, err_len, [&]() -> int64_t {
    std::vector<std::string> warnings;
    const std::string text = tf_hps::ToCanonicalJson(tf_hps::LoadConfigFile(path ? path : "", &warnings));
    for (const auto& w : warnings) tf_hps::Log(tf_hps::LogLevel::kWarning, w);
    if (out != nullptr && out_len > text.size()) std::memcpy(out, text.c_str(), text.size() + 1);
    return static_cast<int64_t>(text.size() + 1);
  });
}


HpsUpdatePublisher* hps_publisher_open(const char* config_json, int64_t max_pending_bytes, int* code, char* err,
                                       size_t err_len) {
  std::unique_ptr<HpsUpdatePublisher> handle(new HpsUpdatePublisher);
  const int64_t status = Guarded(err, err_len, [&]() -> int64_t {
    std::vector<std::string> warnings;
    handle->publisher = std::make_unique<tf_hps::UpdatePublisher>(
        tf_hps::ParseConfig(config_json, "/", &warnings), max_pending_bytes);
    return 0;
  });
  if (code != nullptr) *code = status < 0 ? static_cast<int>(-1 - status) : 0;
  return status < 0 ? nullptr : handle.release();
}

void hps_publisher_close(HpsUpdatePublisher* publisher) { delete publisher; }

int64_t hps_publisher_publish(HpsUpdatePublisher* publisher, const char* model, const char* table, int64_t n,
                              const int64_t* keys, const float* vectors, int64_t dim, char* err, size_t err_len) {
  return Guarded(err, err_len, [&]() -> int64_t {
    publisher->publisher->Publish(model, table, n, keys, vectors, dim);
    return n;
  });
}

int64_t hps_publisher_flush(HpsUpdatePublisher* publisher, char* err, size_t err_len) {
  return Guarded(err, err_len, [&]() -> int64_t {
    publisher->publisher->Flush();
    return publisher->publisher->messages_published();
  });
}

}  // extern "C"
