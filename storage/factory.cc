#include "storage/factory.h"

#include "base/error.h"
#include "storage/hash_map_backend.h"
#include "storage/redis_cluster_backend.h"
#include "storage/rocksdb_backend.h"

namespace tf_hps {

std::unique_ptr<DatabaseBackend> MakeVolatileBackend(const VolatileDbConfig& config, bool start_if_unreachable) {
  if (config.type == "hash_map" || config.type == "parallel_hash_map")
    return std::make_unique<HashMapBackend>(config);
  if (config.type == "redis_cluster") return std::make_unique<RedisClusterBackend>(config, start_if_unreachable);
  if (config.type == "disabled") return nullptr;
  throw HpsError(ErrorCode::kUnimplemented,
                 "volatile_db.type '" + config.type + "' is not available in this build");
}

std::unique_ptr<DatabaseBackend> MakePersistentBackend(const PersistentDbConfig& config) {
  if (config.type == "rocks_db") return std::make_unique<RocksDbBackend>(config);
  if (config.type == "disabled") return nullptr;
  throw HpsError(ErrorCode::kUnimplemented,
                 "persistent_db.type '" + config.type + "' is not available in this build");
}

}  // namespace tf_hps
