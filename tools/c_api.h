/* A small C ABI over the storage backends, for tools and tests that talk to
 * a database without TensorFlow (Python ctypes: tf_hps/storage.py).
 *
 * Every call that can fail takes an error buffer and returns a negative
 * value on failure: -(1 + code), code being the tf_hps::ErrorCode, with a
 * NUL-terminated message in err. Buffers are host memory; keys are (n)
 * int64, values (n, dim) float32 row-major. */
#ifndef TF_HPS_TOOLS_C_API_H_
#define TF_HPS_TOOLS_C_API_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct HpsStorage HpsStorage;

/* kind: "volatile_db" or "persistent_db"; config_json: that section's JSON
 * object, with HPS keys (e.g. {"type": "rocks_db", "path": "/data/rdb"}).
 * Returns NULL on failure (code in *code if code is not NULL). */
HpsStorage* hps_storage_open(const char* kind, const char* config_json, int* code, char* err, size_t err_len);
void hps_storage_close(HpsStorage* storage);

int64_t hps_storage_insert(HpsStorage* storage, const char* table, int64_t n, const int64_t* keys,
                           const float* values, int64_t dim, char* err, size_t err_len);
/* As hps_storage_insert, but a key an online update wrote keeps its row (and, with only_absent, a key
 * that has a row keeps it): DatabaseBackend::InsertUnlessUpdated. Returns n. */
int64_t hps_storage_insert_unless_updated(HpsStorage* storage, const char* table, int64_t n, const int64_t* keys,
                                          const float* values, int64_t dim, int only_absent, char* err,
                                          size_t err_len);
/* Writes the rows of an online update whose stream position is `version`
 * (text that sorts in stream order): a shared backend keeps each key's row of
 * the highest version (DatabaseBackend::ApplyUpdate). Returns n. */
int64_t hps_storage_apply_update(HpsStorage* storage, const char* table, int64_t n, const int64_t* keys,
                                 const float* values, int64_t dim, const char* version, char* err, size_t err_len);
/* found: (n) bytes set to 1 for each key found, whose row is written to values; rows of keys not found
 * are zeroed. Returns the count found. */
int64_t hps_storage_fetch(HpsStorage* storage, const char* table, int64_t n, const int64_t* keys, float* values,
                          int64_t dim, uint8_t* found, char* err, size_t err_len);
int64_t hps_storage_size(HpsStorage* storage, const char* table, char* err, size_t err_len);
int64_t hps_storage_evict(HpsStorage* storage, const char* table, int64_t n, const int64_t* keys, char* err,
                          size_t err_len);
int64_t hps_storage_drop_table(HpsStorage* storage, const char* table, char* err, size_t err_len);
/* Writes the table tags, one per line, into out; returns the bytes needed
 * (call again with a larger buffer if that is more than out_len). */
int64_t hps_storage_list_tables(HpsStorage* storage, char* out, size_t out_len, char* err, size_t err_len);

/* Progress of a long call: rows done of rows total. */
typedef void (*hps_progress_fn)(int64_t done, int64_t total, void* user);

/* Loads an HPS table folder (key, emb_vector) into `table`, in chunks.
 * keys_are_32_bit: the config's supportlonglong is false. Returns the rows loaded. */
int64_t hps_storage_ingest(HpsStorage* storage, const char* table, const char* folder, int64_t dim,
                           int keys_are_32_bit, hps_progress_fn progress, void* user, char* err, size_t err_len);

/* Compares `table` with an HPS table folder row by row: counts the file's keys
 * the table lacks (*missing) and rows that differ in any bit (*mismatched).
 * Returns the rows checked. */
int64_t hps_storage_verify(HpsStorage* storage, const char* table, const char* folder, int64_t dim,
                           int keys_are_32_bit, int64_t* missing, int64_t* mismatched, hps_progress_fn progress,
                           void* user, char* err, size_t err_len);

/* The Redis Cluster slot (0..16383) of a key: CRC16 of its hash tag, or of
 * the whole key when it has none. */
int hps_redis_key_slot(const char* key, size_t len);

/* Parses an HPS config file and writes its canonical JSON (every key,
 * defaults filled in, absolute paths) into out; unknown keys are logged as
 * warnings. Returns the bytes needed, as hps_storage_list_tables does. */
int64_t hps_config_load(const char* path, char* out, size_t out_len, char* err, size_t err_len);

/* Online updates (docs/updates.md): a publisher of rows to the update
 * streams of a config whose update_source is "redis_stream". Not thread-safe:
 * one per thread. */
typedef struct HpsUpdatePublisher HpsUpdatePublisher;
/* config_json: a whole config (canonical or as written); max_pending_bytes:
 * rows queued before publish sends them itself (back-pressure). */
HpsUpdatePublisher* hps_publisher_open(const char* config_json, int64_t max_pending_bytes, int* code, char* err,
                                       size_t err_len);
void hps_publisher_close(HpsUpdatePublisher* publisher);
/* Queues rows (n) of a table (by its name in embedding_table_names); returns n. */
int64_t hps_publisher_publish(HpsUpdatePublisher* publisher, const char* model, const char* table, int64_t n,
                              const int64_t* keys, const float* vectors, int64_t dim, char* err, size_t err_len);
/* Sends what is queued; returns the number of messages sent so far. */
int64_t hps_publisher_flush(HpsUpdatePublisher* publisher, char* err, size_t err_len);

#ifdef __cplusplus
}
#endif

#endif /* TF_HPS_TOOLS_C_API_H_ */
