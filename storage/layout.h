// Where each backend keeps a table: the one place that names Redis keys and
// RocksDB column families (documented in docs/storage.md).
//
// A table is identified by its tag, TableTag(model, table) =
// "hps_et.<model>.<table>". Keys are int64; rows are `dim` float32 values.
//
// Redis. A table is split into `num_partitions` partitions by
// PartitionOf(key, num_partitions). Partition p of table T is stored as
//   hash "hps_et{T/p<p>}v": field = the key's 8 bytes (int64, little-endian),
//                           value = the row's dim*4 bytes (float32, little-endian);
//   hash "hps_et{T/p<p>}t": field = the same key bytes, value = access metadata
//                           for the overflow policy (see the Redis backend).
// The {...} hash tag puts both hashes of a partition in one cluster slot, so a
// partition lives on one node and its commands can be pipelined together.
//
// Online updates travel in one Redis stream per table, UpdateStreamKey(T).
//
// RocksDB. One column family per table, named by its tag; key = the key's 8
// bytes (int64, little-endian), value = the row's dim*4 bytes.
#ifndef TF_HPS_STORAGE_LAYOUT_H_
#define TF_HPS_STORAGE_LAYOUT_H_

#include <cstdint>
#include <string>

#include "base/key_hash.h"

namespace tf_hps {

inline std::string TableTag(const std::string& model, const std::string& table) {
  return "hps_et." + model + "." + table;
}

// The partition of a key, in [0, num_partitions). Must never change for data
// already written.
inline int64_t PartitionOf(int64_t key, int64_t num_partitions) {
  return static_cast<int64_t>(MixKey(static_cast<uint64_t>(key)) % static_cast<uint64_t>(num_partitions));
}

inline std::string RedisValueHash(const std::string& tag, int64_t partition) {
  return "hps_et{" + tag + "/p" + std::to_string(partition) + "}v";
}

inline std::string RedisMetaHash(const std::string& tag, int64_t partition) {
  return "hps_et{" + tag + "/p" + std::to_string(partition) + "}t";
}

inline std::string RocksDbColumnFamily(const std::string& tag) { return tag; }

// Redis, online updates: hash "hps_et{T/p<p>}u" holds, for each key of
// partition p updated through a stream, the stream position (UpdateVersion)
// of the row stored, so that updates applied out of order by several
// processes never replace a newer row with an older one.
inline std::string RedisVersionHash(const std::string& tag, int64_t partition) {
  return "hps_et{" + tag + "/p" + std::to_string(partition) + "}u";
}

// The Redis stream that carries online updates of table T: "hps_upd{T}"
// (format: docs/updates.md).
inline std::string UpdateStreamKey(const std::string& tag) { return "hps_upd{" + tag + "}"; }

}  // namespace tf_hps

#endif  // TF_HPS_STORAGE_LAYOUT_H_
