#include "core/update_consumer.h"

#include <hiredis/hiredis.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <regex>

#include "base/error.h"
#include "base/log.h"
#include "core/parameter_server.h"
#include "storage/backend.h"
#include "storage/layout.h"
#include "storage/redis_client.h"

namespace tf_hps {
namespace {

constexpr const char* kSharedGroup = "hps.volatile";
constexpr int64_t kReadCount = 64;             // messages per read
constexpr int64_t kClaimIdleMs = 30000;        // a message unacknowledged this long belonged to a lost process
constexpr int64_t kClaimEveryPolls = 200;

bool Matches(const std::vector<std::string>& filters, const std::string& tag) {
  for (const std::string& filter : filters) {
    try {
      if (std::regex_search(tag, std::regex(filter))) return true;
    } catch (const std::regex_error&) {
      ThrowInvalidArgument("update_filters: '" + filter + "' is not a valid regular expression");
    }
  }
  return false;
}

std::string HostName() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0 || name[0] == '\0') return "localhost";
  return name;
}

int64_t SteadyMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string_view Text(const redisReply& reply) { return std::string_view(reply.str, reply.len); }

// One stream entry of a reply: its ID and (field, value) pairs, pointing
// into the reply.
struct Entry {
  StreamId id;
  std::vector<std::pair<std::string_view, std::string_view>> fields;
};

// The entries of an XREAD / XREADGROUP reply for one stream (or of the
// entry list of XAUTOCLAIM). Entries whose fields are nil (deleted while
// pending) come back with no fields.
std::vector<Entry> EntriesOf(const redisReply* list) {
  std::vector<Entry> entries;
  if (list == nullptr || list->type != REDIS_REPLY_ARRAY) return entries;
  for (size_t i = 0; i < list->elements; ++i) {
    const redisReply* entry = list->element[i];
    if (entry->type != REDIS_REPLY_ARRAY || entry->elements < 2) continue;
    Entry e;
    e.id = StreamId::Parse(Text(*entry->element[0]));
    const redisReply* fields = entry->element[1];
    if (fields->type == REDIS_REPLY_ARRAY)
      for (size_t f = 0; f + 1 < fields->elements; f += 2)
        e.fields.emplace_back(Text(*fields->element[f]), Text(*fields->element[f + 1]));
    entries.push_back(std::move(e));
  }
  return entries;
}

// KEYS: the stream. ARGV: COUNT, the cursor. XREAD, and with what it read, in the same
// atomic step, the stream's length, entries-added (-1 before Redis 7) and last ID: how many
// entries were trimmed before the cursor reached them. {} when nothing is new.
constexpr const char* kReadWithCountsScript = R"lua(
local read = redis.call('XREAD', 'COUNT', ARGV[1], 'STREAMS', KEYS[1], ARGV[2])
if not read then return {} end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local length, added, last = 0, -1, '0-0'
for i = 1, #info, 2 do
  if info[i] == 'length' then length = info[i + 1] end
  if info[i] == 'entries-added' then added = info[i + 1] end
  if info[i] == 'last-generated-id' then last = info[i + 1] end
end
return {length, added, last, read}
)lua";

// The entries of a read of one stream: [[stream, [entries...]]] or nil.
std::vector<Entry> ReadEntries(const redisReply& reply) {
  if (reply.type != REDIS_REPLY_ARRAY || reply.elements == 0) return {};
  const redisReply* stream = reply.element[0];
  if (stream->type != REDIS_REPLY_ARRAY || stream->elements < 2) return {};
  return EntriesOf(stream->element[1]);
}

RedisReplyPtr RunOne(RedisClusterClient& client, RedisCommand command) {
  std::vector<RedisCommand> commands;
  commands.push_back(std::move(command));
  std::vector<RedisReplyPtr> replies = client.Execute(commands);
  if (replies.empty() || replies[0] == nullptr)
    throw HpsError(ErrorCode::kInternal, "update_source: no reply to " + std::string(commands[0].arg(0)));
  return std::move(replies[0]);
}

[[noreturn]] void ThrowReplyError(const RedisCommand& command, const redisReply& reply) {
  throw HpsError(ErrorCode::kInternal, "update_source: " + std::string(command.arg(0)) + " " +
                                           std::string(command.key()) + " failed: " + std::string(Text(reply)));
}

}  // namespace

struct UpdateConsumer::Stream {
  const EmbeddingTable* table = nullptr;
  std::string key;
  bool shared_group = false;      // writes the shared VDB through kSharedGroup
  bool persistent_group = false;  // writes the PDB through persistent_group_
  bool local_vdb = false;         // writes the process-local VDB
  StreamId cursor;                // of the process's own reader
  bool shared_pending_first = true;
  bool persistent_pending_first = true;
  int64_t polls = 0;
  // Stream position (Redis's entries-added count) of the entry at cursor, -1 while unknown: with
  // the stream's length it tells how many entries were trimmed before the process read them.
  int64_t position = -1;
  bool ready = false;         // groups made and cursor set (SetUp)
  bool failing = false;       // its last poll failed: logged once, retried after a back-off
  int64_t retry_at_ms = 0;    // steady clock
};

UpdateConsumer::UpdateConsumer(const ParameterServer& server, const UpdateSourceConfig& config, Tiers tiers,
                               const std::vector<const EmbeddingTable*>& tables)
    : server_(server), config_(config), tiers_(std::move(tiers)) {
  node_ = config_.node_id.empty() ? HostName() : config_.node_id;
  persistent_group_ = "hps.persistent." + node_ + ":" + tiers_.persistent_path;
  start_ms_ = NowMs();
  for (const EmbeddingTable* table : tables) {
    auto stream = std::make_unique<Stream>();
    stream->table = table;
    stream->key = UpdateStreamKey(table->tag);
    const bool vdb = tiers_.volatile_db && Matches(tiers_.volatile_filters, table->tag);
    stream->shared_group = vdb && tiers_.volatile_db_shared;
    stream->local_vdb = vdb && !tiers_.volatile_db_shared;
    stream->persistent_group = tiers_.persistent_db && Matches(tiers_.persistent_filters, table->tag);
    if (!vdb && !stream->persistent_group) continue;  // no tier takes this table's updates
    streams_.push_back(std::move(stream));
  }
  // Set every stream up now, so that no message published while the tables load is missed. A source
  // that does not answer, or one stream that fails, does not stop the server: they are set up later.
  try {
    client_ = std::make_unique<RedisClusterClient>(UpdateSourceClientOptions(config_));
  } catch (const HpsError& e) {
    if (e.code() != ErrorCode::kUnavailable) throw;
    Log(LogLevel::kWarning, std::string("online updates: starting without the update_source: ") + e.what() +
                                "; retrying every " + std::to_string(config_.failure_backoff_ms) + " ms");
    connect_retry_at_ms_ = SteadyMs() + config_.failure_backoff_ms;
  }
  if (client_) {
    for (auto& stream : streams_) {
      try {
        SetUp(*stream, /*at_start=*/true);
      } catch (const std::exception& e) {
        Failed(*stream, e.what());
      }
    }
  }
  Log(LogLevel::kInfo, "online updates: reading " + std::to_string(streams_.size()) + " stream(s) from " +
                           config_.address + " as node '" + node_ + "'");
}

void UpdateConsumer::SetUp(Stream& s, bool at_start) {
  // Groups first: a group made now starts at the stream's end, which the process's own reader then
  // starts at or after. Set up after the start (the source was down then), both start where the
  // stream stood when the process started, so the messages published since reach it.
  const StreamId started{static_cast<uint64_t>(std::max<int64_t>(0, start_ms_ - kStartSlackMs)), 0};
  const std::string group_start = at_start ? "$" : started.ToString();
  if (s.shared_group) CreateGroup(s, kSharedGroup, group_start.c_str());
  if (s.persistent_group) CreateGroup(s, persistent_group_, group_start.c_str());
  s.position = -1;
  if (at_start) {
    const StreamInfo info = ReadStreamInfo(s);
    s.cursor = info.last;
    s.position = info.entries_added;  // -1 before Redis 7
  } else {
    s.cursor = started.seq > 0 || started.ms == 0 ? StreamId{} : StreamId{started.ms - 1, UINT64_MAX};
  }
  if (s.shared_group || s.persistent_group) {
    // Messages published before this start that a group has yet to apply
    // reach the databases later, so the caches must see them too: start
    // where the groups stand.
    const Horizon horizon = AppliedHorizon(s);
    if (horizon.exclusive) {
      const StreamId& p = horizon.bound;
      const StreamId before = p.seq > 0 ? StreamId{p.ms, p.seq - 1} : StreamId{p.ms - 1, UINT64_MAX};
      if (before < s.cursor) s.cursor = before, s.position = -1;
    } else if (horizon.bound < s.cursor) {
      s.cursor = horizon.bound;
      s.position = -1;
    }
  }
  s.ready = true;
}

void UpdateConsumer::Failed(Stream& s, const std::string& what) {
  s.table->stats.update_failures.fetch_add(1, std::memory_order_relaxed);
  s.retry_at_ms = SteadyMs() + config_.failure_backoff_ms;
  // Messages delivered to this consumer before the failure may be
  // unacknowledged: read the groups' pending entries first again.
  s.shared_pending_first = s.persistent_pending_first = true;
  if (!s.failing)
    Log(LogLevel::kWarning, "online updates of " + s.table->tag + " paused: " + what + "; retrying every " +
                                std::to_string(config_.failure_backoff_ms) + " ms (the other tables' go on)");
  s.failing = true;
}

UpdateConsumer::~UpdateConsumer() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void UpdateConsumer::Start() {
  if (!streams_.empty()) thread_ = std::thread([this] { Run(); });
}

void UpdateConsumer::CreateGroup(const Stream& stream, const std::string& group, const char* start) {
  RedisCommand create("XGROUP");
  // XGROUP's key is its third argument.
  create.Add("CREATE").Add(stream.key).Add(group).Add(start).Add("MKSTREAM").RouteBy(2);
  RedisReplyPtr reply = RunOne(*client_, create);
  if (RedisReplyIsError(*reply) && Text(*reply).rfind("BUSYGROUP", 0) != 0) ThrowReplyError(create, *reply);
}

void UpdateConsumer::Run() {
  const auto idle = std::chrono::milliseconds(std::clamp<int64_t>(config_.poll_timeout_ms / 10, 1, 100));
  while (true) {
    const bool work = PollOnce();
    std::unique_lock<std::mutex> lock(mutex_);
    if (stop_) return;
    if (!work) wake_.wait_for(lock, idle, [this] { return stop_; });
    if (stop_) return;
  }
}

bool UpdateConsumer::PollOnce() {
  if (!client_) {  // the source did not answer at start-up
    if (SteadyMs() < connect_retry_at_ms_) return false;
    try {
      client_ = std::make_unique<RedisClusterClient>(UpdateSourceClientOptions(config_));
      Log(LogLevel::kInfo, "online updates: " + config_.address + " answers");
    } catch (const std::exception& e) {
      connect_retry_at_ms_ = SteadyMs() + config_.failure_backoff_ms;
      return false;
    }
  }
  bool work = false;
  for (auto& stream_ptr : streams_) {
    Stream& s = *stream_ptr;
    if (s.failing && SteadyMs() < s.retry_at_ms) continue;
    try {
      if (!s.ready) SetUp(s, /*at_start=*/false);
      PollStream(s, &work);
      if (s.failing) Log(LogLevel::kInfo, "online updates of " + s.table->tag + " go on");
      s.failing = false;
    } catch (const std::exception& e) {
      Failed(s, e.what());
    }
  }
  return work;
}

void UpdateConsumer::PollStream(Stream& s, bool* work) {
  ++s.polls;
  if (s.shared_group) ReadGroup(s, kSharedGroup, tiers_.volatile_db, &s.shared_pending_first, work);
  if (s.persistent_group) ReadGroup(s, persistent_group_, tiers_.persistent_db, &s.persistent_pending_first, work);

  RedisCommand read("EVAL");
  read.Add(kReadWithCountsScript).Add(int64_t{1}).Add(s.key).Add(kReadCount).Add(s.cursor.ToString()).RouteBy(3);
  RedisReplyPtr reply = RunOne(*client_, read);
  if (RedisReplyIsError(*reply)) ThrowReplyError(read, *reply);
  if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 4) return;  // nothing new
  const int64_t length = reply->element[0]->integer;
  const int64_t entries_added = reply->element[1]->integer;  // -1 before Redis 7
  const StreamId last_id = StreamId::Parse(Text(*reply->element[2]));
  const std::vector<Entry> entries = ReadEntries(*reply->element[3]);
  if (entries.empty()) return;
  if (entries_added < 0) {
    s.position = -1;
  } else {
    // Trimming removes the oldest entries (nothing here deletes others), so the first one left is
    // number entries_added - length + 1; the entries after the cursor up to it were never read here.
    const int64_t first_left = entries_added - length + 1;
    if (s.position >= 0 && s.position + 1 < first_left) {
      NoteTrimmed(s, first_left - 1 - s.position);
      s.position = first_left - 1;  // the batch starts at the first entry left
    }
    // Unknown (set up from a time, not at the stream's end): known again once a batch ends the stream.
    if (s.position < 0 && entries.back().id == last_id)
      s.position = entries_added - static_cast<int64_t>(entries.size());
  }
  // Apply only what the databases behind the cache hold already.
  const Horizon horizon = s.shared_group || s.persistent_group ? AppliedHorizon(s) : Horizon{};
  for (const Entry& e : entries) {
    if (!horizon.Covers(e.id)) break;
    try {
      ApplyToProcess(s, e.id, DecodeUpdate(e.fields));
    } catch (const HpsError& error) {
      if (error.code() != ErrorCode::kInvalidArgument) throw;
      s.table->stats.updates_rejected.fetch_add(1, std::memory_order_relaxed);
      Log(LogLevel::kWarning, "online updates: " + s.key + " entry " + e.id.ToString() + " skipped: " + error.what());
    }
    s.cursor = e.id;
    if (s.position >= 0) ++s.position;
    *work = true;
  }
}

UpdateConsumer::StreamInfo UpdateConsumer::ReadStreamInfo(const Stream& s) {
  StreamInfo info;
  RedisCommand command("XINFO");
  command.Add("STREAM").Add(s.key).RouteBy(2);
  RedisReplyPtr reply = RunOne(*client_, command);
  if (RedisReplyIsError(*reply)) {
    if (Text(*reply).find("no such key") != std::string_view::npos) return info;  // no message yet
    ThrowReplyError(command, *reply);
  }
  bool has_entries_added = false;
  for (size_t f = 0; reply->type == REDIS_REPLY_ARRAY && f + 1 < reply->elements; f += 2) {
    const std::string_view field = Text(*reply->element[f]);
    const redisReply* value = reply->element[f + 1];
    if (field == "length") info.length = value->integer;
    if (field == "entries-added") info.entries_added = value->integer, has_entries_added = true;
    if (field == "last-entry" && value->type == REDIS_REPLY_ARRAY && value->elements >= 1)
      info.last = StreamId::Parse(Text(*value->element[0]));
  }
  if (!has_entries_added) info.entries_added = -1;
  return info;
}

void UpdateConsumer::NoteTrimmed(Stream& s, int64_t lost) {
  s.table->stats.updates_trimmed.fetch_add(lost, std::memory_order_relaxed);
  Log(LogLevel::kWarning, "online updates: " + std::to_string(lost) + " message(s) of " + s.key +
                              " were trimmed from the stream before this process read them "
                              "(update_source.max_stream_entries " + std::to_string(config_.max_stream_entries) +
                              " is below what it had yet to read): their rows miss this process's caches until "
                              "they are next updated or refreshed; counted in updates_trimmed");
}

void UpdateConsumer::ReadGroup(Stream& s, const std::string& group, DatabaseBackend* db, bool* pending_first,
                               bool* work) {
  std::vector<Entry> entries;
  RedisReplyPtr reply;
  if (s.polls % kClaimEveryPolls == 0) {
    // Messages another process took and never acknowledged (it died).
    RedisCommand claim("XAUTOCLAIM");
    claim.Add(s.key).Add(group).Add(node_).Add(kClaimIdleMs).Add("0-0").Add("COUNT").Add(kReadCount);
    reply = RunOne(*client_, claim);
    if (RedisReplyIsError(*reply)) ThrowReplyError(claim, *reply);
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements >= 2) entries = EntriesOf(reply->element[1]);
  }
  if (entries.empty()) {
    RedisCommand read("XREADGROUP");
    read.Add("GROUP").Add(group).Add(node_).Add("COUNT").Add(kReadCount).Add("STREAMS").Add(s.key);
    read.Add(*pending_first ? "0" : ">").RouteBy(7);
    reply = RunOne(*client_, read);
    if (RedisReplyIsError(*reply)) {
      if (Text(*reply).rfind("NOGROUP", 0) == 0) {
        // Redis lost the stream (restarted without persistence): what it gets
        // from now on is new.
        CreateGroup(s, group, "0");
        return;
      }
      ThrowReplyError(read, *reply);
    }
    entries = ReadEntries(*reply);
    // Once the process's own pending messages are done, it reads new ones.
    if (*pending_first && entries.empty()) *pending_first = false;
  }
  if (entries.empty()) return;
  RedisCommand ack("XACK");
  ack.Add(s.key).Add(group);
  for (const Entry& e : entries) {
    ack.Add(e.id.ToString());
    if (e.fields.empty()) continue;  // deleted from the stream (trimmed) while pending
    try {
      const UpdateMessage message = DecodeUpdate(e.fields);
      CheckNamesTable(s, message);
      if (message.dim != s.table->dim)
        ThrowInvalidArgument("rows have dimension " + std::to_string(message.dim) + ", the table " +
                             std::to_string(s.table->dim));
      db->ApplyUpdate(s.table->tag, message.count(), message.keys.data(), message.vectors.data(), message.dim,
                      e.id.Version());
    } catch (const HpsError& error) {
      if (error.code() != ErrorCode::kInvalidArgument) throw;  // not acknowledged: retried
      Log(LogLevel::kWarning, "online updates: " + s.key + " entry " + e.id.ToString() + " skipped: " + error.what());
    }
  }
  RedisReplyPtr acked = RunOne(*client_, ack);
  if (RedisReplyIsError(*acked)) ThrowReplyError(ack, *acked);
  *work = true;
}

UpdateConsumer::Horizon UpdateConsumer::AppliedHorizon(Stream& s) {
  // Entries up to a group's last delivered one, except those still pending,
  // are applied: the bound is the smallest pending entry, exclusive, else
  // the last delivered one.
  Horizon horizon;
  RedisCommand info("XINFO");
  info.Add("GROUPS").Add(s.key).RouteBy(2);
  RedisReplyPtr reply = RunOne(*client_, info);
  if (RedisReplyIsError(*reply)) ThrowReplyError(info, *reply);
  for (size_t g = 0; reply->type == REDIS_REPLY_ARRAY && g < reply->elements; ++g) {
    const redisReply* fields = reply->element[g];
    std::string name;
    int64_t pending = 0;
    StreamId delivered;
    for (size_t f = 0; f + 1 < fields->elements; f += 2) {
      const std::string_view field = Text(*fields->element[f]);
      const redisReply* value = fields->element[f + 1];
      if (field == "name") name = std::string(Text(*value));
      if (field == "pending") pending = value->integer;
      if (field == "last-delivered-id") delivered = StreamId::Parse(Text(*value));
    }
    const bool used = (name == kSharedGroup && s.shared_group) || (name == persistent_group_ && s.persistent_group);
    if (!used) continue;
    StreamId bound = delivered;
    bool bound_exclusive = false;
    if (pending > 0) {
      RedisCommand summary("XPENDING");
      summary.Add(s.key).Add(name);
      RedisReplyPtr p = RunOne(*client_, summary);
      if (RedisReplyIsError(*p)) ThrowReplyError(summary, *p);
      if (p->type == REDIS_REPLY_ARRAY && p->elements >= 2 && p->element[1]->type == REDIS_REPLY_STRING) {
        bound = StreamId::Parse(Text(*p->element[1]));
        bound_exclusive = true;
      }
    }
    // The smaller bound wins; at equal IDs the exclusive one is smaller.
    if (bound < horizon.bound || (bound == horizon.bound && bound_exclusive)) horizon = {bound, bound_exclusive};
  }
  return horizon;
}

void UpdateConsumer::CheckNamesTable(const Stream& s, const UpdateMessage& message) {
  if (message.model != s.table->model || message.table != s.table->name)
    ThrowInvalidArgument("the message names model '" + message.model + "', table '" + message.table + "', but " +
                         s.key + " carries " + s.table->tag + "'s updates");
}

void UpdateConsumer::ApplyToProcess(Stream& s, const StreamId& id, const UpdateMessage& message) {
  CheckNamesTable(s, message);
  const EmbeddingTable& table = *s.table;
  if (message.dim != table.dim)
    ThrowInvalidArgument("rows have dimension " + std::to_string(message.dim) + ", the table " +
                         std::to_string(table.dim));
  server_.ApplyUpdate(table, message.keys.data(), message.count(), message.vectors.data(), [&] {
    if (s.local_vdb)
      tiers_.volatile_db->Insert(table.tag, message.count(), message.keys.data(), message.vectors.data(),
                                 message.dim);
  });
  table.stats.update_lag_ms.store(std::max<int64_t>(0, NowMs() - static_cast<int64_t>(id.ms)),
                                  std::memory_order_relaxed);
}

}  // namespace tf_hps
