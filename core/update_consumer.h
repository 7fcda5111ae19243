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
  // no message published while they load is missed. A source that does not
  // answer, or a stream that fails, is not an error: each stream is set up
  // (from where the streams stood at this start) and polled on its own, with
  // a back-off after a failure and a counter (update_failures), so one bad
  // stream or unreachable node does not hold up the others. Throws HpsError
  // for a bad config.
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
  void PollStream(Stream& stream, bool* work);
  // Makes the stream's groups and sets its cursor: at the stream's end at
  // start-up, else where it stood when the process started. Throws.
  void SetUp(Stream& stream, bool at_start);
  // Counts and logs (once per outage) a failed poll; backs off.
  void Failed(Stream& stream, const std::string& what);
  // Reads and applies the group's new messages (after its own pending ones).
  void ReadGroup(Stream& stream, const std::string& group, DatabaseBackend* db, bool* pending_first, bool* work);
  // How far every group this process depends on has applied the stream.
  struct Horizon {
    StreamId bound{UINT64_MAX, UINT64_MAX};
    bool exclusive = false;  // bound itself is not applied yet
    bool Covers(const StreamId& id) const { return exclusive ? id < bound : id <= bound; }
  };
  Horizon AppliedHorizon(Stream& stream);
  // XINFO STREAM: length, entries ever added (-1 before Redis 7) and the
  // last entry's ID; all zero for a stream not there yet.
  struct StreamInfo {
    int64_t length = 0;
    int64_t entries_added = 0;
    StreamId last;
  };
  StreamInfo ReadStreamInfo(const Stream& stream);
  // Counts (updates_trimmed) and logs `lost` messages trimmed from the stream
  // (max_stream_entries) before the process's own reader got to them.
  void NoteTrimmed(Stream& stream, int64_t lost);
  void ApplyToProcess(Stream& stream, const StreamId& id, const UpdateMessage& message);
  // Throws HpsError(kInvalidArgument) unless the message names the stream's own model and table.
  static void CheckNamesTable(const Stream& stream, const UpdateMessage& message);
  void CreateGroup(const Stream& stream, const std::string& group, const char* start);

  const ParameterServer& server_;
  const UpdateSourceConfig config_;
  const Tiers tiers_;
  std::string node_;  // consumer name within the groups
  std::string persistent_group_;
  std::unique_ptr<RedisClusterClient> client_;  // null until the source answers
  int64_t connect_retry_at_ms_ = 0;             // steady clock
  int64_t start_ms_ = 0;                        // wall clock when the server started
  // A stream set up after the start begins this much before it, against clock skew with Redis.
  static constexpr int64_t kStartSlackMs = 1000;
  std::vector<std::unique_ptr<Stream>> streams_;

  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace tf_hps

#endif  // TF_HPS_CORE_UPDATE_CONSUMER_H_
