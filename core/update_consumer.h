// The serving side of online updates: one background thread per parameter
// server that reads the tables' update streams (core/update_stream.h) and
// applies them to the databases and the L1 caches.
//
// Who writes what, for each table whose tag matches a tier's update_filters:
//  - a shared Redis VDB: consumer group "hps.volatile"; each message goes to
//    one of the serving processes, which writes it (DatabaseBackend::
//    ApplyUpdate keeps the newest row per key whatever the order) and
//    acknowledges it. A restarted process first re-reads its own
//    unacknowledged messages.
//  - a writable RocksDB PDB: consumer group "hps.persistent.<node>:<path>",
//    so each node's database resumes from its last acknowledged message after
//    a restart of the process or of Redis (with Redis persistence on).
//  - the process's own hash-map VDB and its L1 caches: read without a group,
//    from the stream's end as it was when the server started (both were
//    loaded from the table files then), or from where the groups above stood
//    if they had messages left to apply. A message is applied here only once
//    those groups have applied it, so a cache never holds a row older than
//    the databases behind it (ParameterServer::ApplyUpdate).
#ifndef TF_HPS_CORE_UPDATE_CONSUMER_H_
#define TF_HPS_CORE_UPDATE_CONSUMER_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/config.h"
#include "core/update_stream.h"

namespace tf_hps {

class DatabaseBackend;
class ParameterServer;
class RedisClusterClient;
struct EmbeddingTable;

class UpdateConsumer {
 public:
  struct Tiers {
    DatabaseBackend* volatile_db = nullptr;  // null: none
    bool volatile_db_shared = false;         // Redis (else a process-local hash map)
    std::vector<std::string> volatile_filters;
    DatabaseBackend* persistent_db = nullptr;  // null: none or read-only
    std::string persistent_path;
    std::vector<std::string> persistent_filters;
  };

  // Connects to the update source and notes where each stream ends now;
  // creates the consumer groups. Call before the tables are loaded, so that
  // no message published while they load is missed. Throws HpsError.
  UpdateConsumer(const ParameterServer& server, const UpdateSourceConfig& config, Tiers tiers,
                 const std::vector<const EmbeddingTable*>& tables);
  ~UpdateConsumer();

  // Starts the background thread.
  void Start();

 private:
  struct Stream;

  void Run();
  // One pass over every stream; returns whether any message was applied.
  bool PollOnce();
  // Reads and applies the group's new messages (after its own pending ones).
  void ReadGroup(Stream& stream, const std::string& group, DatabaseBackend* db, bool* pending_first, bool* work);
  // How far every group this process depends on has applied the stream.
  struct Horizon {
    StreamId bound{UINT64_MAX, UINT64_MAX};
    bool exclusive = false;  // bound itself is not applied yet
    bool Covers(const StreamId& id) const { return exclusive ? id < bound : id <= bound; }
  };
  Horizon AppliedHorizon(Stream& stream);
  void ApplyToProcess(Stream& stream, const StreamId& id, const UpdateMessage& message);
  void CreateGroup(const Stream& stream, const std::string& group, const char* start);

  const ParameterServer& server_;
  const UpdateSourceConfig config_;
  const Tiers tiers_;
  std::string node_;  // consumer name within the groups
  std::string persistent_group_;
  std::unique_ptr<RedisClusterClient> client_;
  std::vector<std::unique_ptr<Stream>> streams_;

  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace tf_hps

#endif  // TF_HPS_CORE_UPDATE_CONSUMER_H_
