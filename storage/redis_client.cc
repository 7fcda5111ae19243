// Design note: Redis Cluster routing on a synchronous client.
//
// Slots. Every key maps to one of 16384 slots (CRC16-XMODEM of the key's hash
// tag, or of the whole key, mod 16384). The client keeps a slot -> master
// table read with CLUSTER SLOTS from the first seed that answers; a server
// with cluster support disabled answers that command with an error and is
// then taken as the owner of every slot.
//
// Pipelining. Execute() groups the commands by the master of their slot,
// checks out one pooled connection per master (in address order, so two
// callers can never each hold a connection the other waits for), appends and
// flushes every group's commands, and only then reads the replies group by
// group. All masters thus work at the same time, and a call costs about one
// round trip per redirection round, not one per command.
//
// Redirections. A reply "MOVED <slot> <host:port>" means the slot table is
// stale: the table is re-read and the command resent to the named node. A
// reply "ASK <slot> <host:port>" means the slot is being migrated and this
// key already moved: the command is resent to the named node preceded by
// ASKING, and the table is left alone. TRYAGAIN / CLUSTERDOWN (a migration
// or failover in progress) wait a little and resend. After kMaxRounds rounds
// the call gives up with kUnavailable.
//
// Failures. A connection that fails (I/O error, server closed it) is
// reopened once and its whole group resent: every command the backend sends
// is idempotent apart from HINCRBY on access counters, where a double count is
// harmless. A timeout is not retried, so a call fails within about one
// command timeout. Errors name the node address.
#include "storage/redis_client.h"

#include <hiredis/hiredis.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>
#include <utility>

#include "core/error.h"

namespace tf_hps {

namespace {

constexpr int kMaxRounds = 8;                       // redirection / retry rounds per call
constexpr size_t kFlushBytes = size_t{4} << 20;     // flush the output buffer every 4 MiB

// CRC16-XMODEM lookup table, built at compile time.
struct Crc16Table {
  uint16_t entries[256];
  constexpr Crc16Table() : entries() {
    for (int byte = 0; byte < 256; ++byte) {
      uint16_t crc = static_cast<uint16_t>(byte << 8);
      for (int bit = 0; bit < 8; ++bit)
        crc = static_cast<uint16_t>((crc & 0x8000) ? (crc << 1) ^ 0x1021 : crc << 1);
      entries[byte] = crc;
    }
  }
};
constexpr Crc16Table kCrc16Table;

[[noreturn]] void ThrowUnavailable(const std::string& address, const std::string& why) {
  throw HpsError(ErrorCode::kUnavailable, "redis node " + address + ": " + why);
}

bool StartsWith(std::string_view text, std::string_view prefix) {
  return text.substr(0, prefix.size()) == prefix;
}

// Splits "host:port"; false if malformed.
bool SplitHostPort(const std::string& address, std::string* host, int* port) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == address.size()) return false;
  const std::string port_text = address.substr(colon + 1);
  if (port_text.find_first_not_of("0123456789") != std::string::npos || port_text.size() > 5) return false;
  const int value = std::stoi(port_text);
  if (value < 1 || value > 65535) return false;
  *host = address.substr(0, colon);
  *port = value;
  return true;
}

timeval ToTimeval(int64_t ms) {
  timeval tv;
  tv.tv_sec = static_cast<time_t>(ms / 1000);
  tv.tv_usec = static_cast<suseconds_t>((ms % 1000) * 1000);
  return tv;
}

bool IsTimeout(const redisContext* context) {
  return context->err == REDIS_ERR_IO && std::strcmp(context->errstr, std::strerror(EAGAIN)) == 0;
}

}  // namespace

// --- keys and slots ---------------------------------------------------------

uint16_t RedisCrc16(std::string_view data) {
  uint16_t crc = 0;
  for (unsigned char byte : data)
    crc = static_cast<uint16_t>((crc << 8) ^ kCrc16Table.entries[((crc >> 8) ^ byte) & 0xFF]);
  return crc;
}

int RedisKeySlot(std::string_view key) {
  const size_t open = key.find('{');
  if (open != std::string_view::npos) {
    const size_t close = key.find('}', open + 1);
    if (close != std::string_view::npos && close > open + 1) key = key.substr(open + 1, close - open - 1);
  }
  return RedisCrc16(key) % kRedisSlotCount;
}

std::vector<std::string> ParseRedisSeeds(const std::string& address) {
  std::vector<std::string> seeds;
  size_t begin = 0;
  while (begin <= address.size()) {
    size_t end = address.find(',', begin);
    if (end == std::string::npos) end = address.size();
    std::string entry;
    for (size_t i = begin; i < end; ++i)
      if (address[i] != ' ' && address[i] != '\t') entry += address[i];
    begin = end + 1;
    if (entry.empty()) continue;
    if (entry.find(':') == std::string::npos) entry += ":6379";
    std::string host;
    int port = 0;
    if (!SplitHostPort(entry, &host, &port))
      ThrowInvalidArgument("volatile_db.address: '" + entry + "' is not host:port");
    seeds.push_back(host + ":" + std::to_string(port));
  }
  if (seeds.empty()) ThrowInvalidArgument("volatile_db.address: no server given (want host:port[,host:port...])");
  return seeds;
}

// --- commands and replies ---------------------------------------------------

RedisCommand& RedisCommand::Add(std::string_view arg) {
  buffer_.append(arg.data(), arg.size());
  ends_.push_back(buffer_.size());
  return *this;
}

RedisCommand& RedisCommand::Add(int64_t value) { return Add(std::to_string(value)); }

void RedisCommand::Reserve(size_t args, size_t bytes) {
  ends_.reserve(ends_.size() + args);
  buffer_.reserve(buffer_.size() + bytes);
}

std::string_view RedisCommand::arg(size_t i) const {
  const size_t begin = i == 0 ? 0 : ends_[i - 1];
  return std::string_view(buffer_.data() + begin, ends_[i] - begin);
}

void RedisReplyDeleter::operator()(redisReply* reply) const {
  if (reply != nullptr) freeReplyObject(reply);
}

std::string_view RedisReplyText(const redisReply& reply) {
  if (reply.type != REDIS_REPLY_ERROR && reply.type != REDIS_REPLY_STATUS) return {};
  return std::string_view(reply.str, reply.len);
}

bool RedisReplyIsError(const redisReply& reply) { return reply.type == REDIS_REPLY_ERROR; }

// --- nodes and their connection pools ---------------------------------------

// One server and its pool of at most `connections_per_node` connections,
// opened lazily and reopened after a failure.
class RedisNode {
 public:
  RedisNode(std::string address, std::string host, int port, const RedisClientOptions* options)
      : address_(std::move(address)), host_(std::move(host)), port_(port), options_(options) {}

  ~RedisNode() {
    for (redisContext* context : idle_)
      if (context != nullptr) redisFree(context);
  }

  const std::string& address() const { return address_; }
  const std::string& host() const { return host_; }

  // Takes an idle connection (nullptr: not open yet), waiting while all are busy.
  redisContext* Checkout() {
    std::unique_lock<std::mutex> lock(mutex_);
    available_.wait(lock, [&] { return !idle_.empty() || leased_ + static_cast<int64_t>(idle_.size()) <
                                                             options_->connections_per_node; });
    ++leased_;
    if (idle_.empty()) return nullptr;
    redisContext* context = idle_.back();
    idle_.pop_back();
    return context;
  }

  // Gives a connection back; a broken one is closed here.
  void Return(redisContext* context, bool healthy) {
    if (context != nullptr && (!healthy || context->err != 0)) {
      redisFree(context);
      context = nullptr;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      --leased_;
      // A closed connection frees its pool place; it is reopened on demand.
      if (context != nullptr) idle_.push_back(context);
    }
    available_.notify_one();
  }

  // Opens and authenticates a connection. Throws kUnavailable if the server
  // cannot be reached in time, kInvalidArgument if it refuses the credentials.
  redisContext* Open() const {
    redisContext* context = redisConnectWithTimeout(host_.c_str(), port_, ToTimeval(options_->connect_timeout_ms));
    if (context == nullptr) ThrowUnavailable(address_, "cannot allocate a connection");
    if (context->err != 0) {
      const std::string why = context->errstr;
      redisFree(context);
      ThrowUnavailable(address_, "cannot connect (" + why + "; connect timeout " +
                                     std::to_string(options_->connect_timeout_ms) + " ms)");
    }
    redisSetTimeout(context, ToTimeval(options_->command_timeout_ms));
    redisEnableKeepAlive(context);
    if (!options_->password.empty()) Authenticate(context);
    return context;
  }

 private:
  void Authenticate(redisContext* context) const {
    // "AUTH <password>" also works on servers older than 6 (no ACL users).
    std::vector<const char*> argv = {"AUTH"};
    std::vector<size_t> lens = {4};
    if (!options_->user_name.empty() && options_->user_name != "default") {
      argv.push_back(options_->user_name.data());
      lens.push_back(options_->user_name.size());
    }
    argv.push_back(options_->password.data());
    lens.push_back(options_->password.size());
    auto* raw = static_cast<redisReply*>(
        redisCommandArgv(context, static_cast<int>(argv.size()), argv.data(), lens.data()));
    RedisReplyPtr reply(raw);
    if (reply == nullptr) {
      const std::string why = context->errstr;
      redisFree(context);
      ThrowUnavailable(address_, "no answer to AUTH (" + why + ")");
    }
    if (RedisReplyIsError(*reply)) {
      const std::string why(RedisReplyText(*reply));
      redisFree(context);
      ThrowInvalidArgument("redis node " + address_ + ": authentication as user '" + options_->user_name +
                           "' failed (" + why + "); check user_name and password in the config's volatile_db (or, for "
                           "the update streams, update_source)");
    }
  }

  const std::string address_;
  const std::string host_;
  const int port_;
  const RedisClientOptions* options_;

  std::mutex mutex_;
  std::condition_variable available_;
  std::vector<redisContext*> idle_;
  int64_t leased_ = 0;
};

namespace {

// A connection checked out of a node's pool for one exchange; closed on
// return unless the exchange completed (so no stale reply can be read later).
class Lease {
 public:
  explicit Lease(RedisNode* node) : node_(node), context_(node->Checkout()) {}
  ~Lease() {
    if (node_ != nullptr) node_->Return(context_, clean_);
  }
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  Lease(Lease&& other) noexcept
      : node_(other.node_), context_(std::exchange(other.context_, nullptr)), clean_(other.clean_) {
    other.node_ = nullptr;
  }

  RedisNode* node() const { return node_; }

  // The open connection (opening it if needed; throws like RedisNode::Open).
  redisContext* context() {
    if (context_ == nullptr) context_ = node_->Open();
    return context_;
  }

  // Closes the connection; the next context() reopens it.
  void Reset() {
    if (context_ != nullptr) redisFree(context_);
    context_ = nullptr;
  }

  void set_clean(bool clean) { clean_ = clean; }

 private:
  RedisNode* node_;
  redisContext* context_;
  bool clean_ = true;
};

}  // namespace

// One command of a round: which command, where to, and whether it needs ASKING.
struct RedisClusterClient::Routed {
  size_t index;
  RedisNode* node;
  bool asking;
};

namespace {

struct Item {
  const RedisCommand* command;
  size_t index;  // where its reply goes
  bool asking;
};

// Appends and flushes every item; false on an I/O error.
bool SendItems(redisContext* context, const std::vector<Item>& items) {
  const char* asking_argv[] = {"ASKING"};
  const size_t asking_len[] = {6};
  std::vector<const char*> argv;
  std::vector<size_t> lens;
  size_t pending = 0;
  auto flush = [&]() {
    int done = 0;
    while (!done)
      if (redisBufferWrite(context, &done) != REDIS_OK) return false;
    pending = 0;
    return true;
  };
  for (const Item& item : items) {
    if (item.asking && redisAppendCommandArgv(context, 1, asking_argv, asking_len) != REDIS_OK) return false;
    const RedisCommand& command = *item.command;
    argv.resize(command.argc());
    lens.resize(command.argc());
    for (size_t i = 0; i < command.argc(); ++i) {
      const std::string_view arg = command.arg(i);
      argv[i] = arg.data();
      lens[i] = arg.size();
      pending += arg.size();
    }
    if (redisAppendCommandArgv(context, static_cast<int>(argv.size()), argv.data(), lens.data()) != REDIS_OK)
      return false;
    if (pending >= kFlushBytes && !flush()) return false;
  }
  return flush();
}

// Reads one reply per item (discarding ASKING's); false on an I/O error.
bool ReceiveItems(redisContext* context, const std::vector<Item>& items, std::vector<RedisReplyPtr>* replies,
                  const RedisClusterClient::ReplyConsumer* consume) {
  for (const Item& item : items) {
    void* raw = nullptr;
    if (item.asking) {
      if (redisGetReply(context, &raw) != REDIS_OK) return false;
      freeReplyObject(raw);
    }
    if (redisGetReply(context, &raw) != REDIS_OK) return false;
    RedisReplyPtr reply(static_cast<redisReply*>(raw));
    if (consume != nullptr && !RedisReplyIsError(*reply)) {
      (*replies)[item.index].reset();  // drop an earlier round's redirection
      (*consume)(item.index, *reply);  // freed on leaving this scope
    } else {
      (*replies)[item.index] = std::move(reply);
    }
  }
  return true;
}

// Why a connection failed, for the error message.
std::string FailureText(const redisContext* context, int64_t timeout_ms) {
  if (IsTimeout(context)) return "no answer within " + std::to_string(timeout_ms) + " ms";
  return std::string("connection failed (") + context->errstr + ")";
}

// Resends the items on a fresh connection after a failure; throws if that fails too.
void RetryOnFreshConnection(Lease* lease, const std::vector<Item>& items, std::vector<RedisReplyPtr>* replies,
                            const RedisClientOptions& options, const RedisClusterClient::ReplyConsumer* consume) {
  lease->set_clean(false);
  lease->Reset();
  redisContext* context = lease->context();
  if (!SendItems(context, items) || !ReceiveItems(context, items, replies, consume))
    ThrowUnavailable(lease->node()->address(), FailureText(context, options.command_timeout_ms));
  lease->set_clean(true);
}

}  // namespace

// --- the cluster client -----------------------------------------------------

RedisClusterClient::RedisClusterClient(RedisClientOptions options)
    : options_(std::move(options)), slot_owner_(kRedisSlotCount, nullptr) {
  if (options_.seeds.empty()) ThrowInvalidArgument("volatile_db.address: no server given");
  RefreshTopology();
}

RedisClusterClient::~RedisClusterClient() = default;

RedisNode* RedisClusterClient::NodeAt(const std::string& address) {
  std::lock_guard<std::mutex> lock(nodes_mutex_);
  auto& slot = nodes_[address];
  if (!slot) {
    std::string host;
    int port = 0;
    if (!SplitHostPort(address, &host, &port))
      throw HpsError(ErrorCode::kInternal, "redis: cannot parse node address '" + address + "'");
    slot = std::make_unique<RedisNode>(address, host, port, &options_);
  }
  return slot.get();
}

RedisNode* RedisClusterClient::NodeOfSlot(int slot) const {
  std::shared_lock<std::shared_mutex> lock(slots_mutex_);
  return slot_owner_[slot];
}

bool RedisClusterClient::is_cluster() const {
  std::shared_lock<std::shared_mutex> lock(slots_mutex_);
  return is_cluster_;
}

std::vector<std::string> RedisClusterClient::Masters() const {
  std::shared_lock<std::shared_mutex> lock(slots_mutex_);
  std::vector<std::string> masters;
  for (const RedisNode* node : slot_owner_)
    if (node != nullptr) masters.push_back(node->address());
  std::sort(masters.begin(), masters.end());
  masters.erase(std::unique(masters.begin(), masters.end()), masters.end());
  return masters;
}

void RedisClusterClient::RefreshTopology() {
  std::lock_guard<std::mutex> lock(refresh_mutex_);
  // Known masters first (they know the newest map), then the seeds in order.
  std::vector<std::string> candidates = Masters();
  for (const std::string& seed : options_.seeds)
    if (std::find(candidates.begin(), candidates.end(), seed) == candidates.end()) candidates.push_back(seed);
  std::string errors;
  for (const std::string& address : candidates) {
    std::string error;
    if (LoadSlotsFrom(NodeAt(address), &error)) return;
    errors += (errors.empty() ? "" : "; ") + error;
  }
  throw HpsError(ErrorCode::kUnavailable, "redis_cluster: no server in volatile_db.address answered (" + errors + ")");
}

bool RedisClusterClient::LoadSlotsFrom(RedisNode* node, std::string* error) {
  Lease lease(node);
  RedisReplyPtr reply;
  try {
    redisContext* context = lease.context();
    reply.reset(static_cast<redisReply*>(redisCommand(context, "CLUSTER SLOTS")));
    if (reply == nullptr) {
      *error = "redis node " + node->address() + ": " + FailureText(context, options_.command_timeout_ms);
      lease.set_clean(false);
      return false;
    }
  } catch (const HpsError& e) {
    if (e.code() != ErrorCode::kUnavailable) throw;
    *error = e.what();
    return false;
  }
  std::vector<RedisNode*> owners(kRedisSlotCount, nullptr);
  bool is_cluster = true;
  if (RedisReplyIsError(*reply)) {
    const std::string_view text = RedisReplyText(*reply);
    if (StartsWith(text, "NOAUTH"))
      ThrowInvalidArgument("redis node " + node->address() + " requires a password (" + std::string(text) +
                           "); set password in the config's volatile_db (or, for the update streams, update_source)");
    if (text.find("cluster support disabled") == std::string_view::npos) {
      *error = "redis node " + node->address() + ": CLUSTER SLOTS failed (" + std::string(text) + ")";
      return false;
    }
    // A standalone server owns every slot.
    std::fill(owners.begin(), owners.end(), node);
    is_cluster = false;
  } else if (reply->type == REDIS_REPLY_ARRAY) {
    for (size_t i = 0; i < reply->elements; ++i) {
      const redisReply* range = reply->element[i];
      if (range->type != REDIS_REPLY_ARRAY || range->elements < 3 || range->element[2]->type != REDIS_REPLY_ARRAY ||
          range->element[2]->elements < 2)
        continue;
      const redisReply* master = range->element[2];
      std::string host = master->element[0]->type == REDIS_REPLY_STRING
                             ? std::string(master->element[0]->str, master->element[0]->len)
                             : std::string();
      // An empty or unknown endpoint means "the address you reached me at".
      if (host.empty() || host == "?") host = node->host();
      const std::string address = host + ":" + std::to_string(master->element[1]->integer);
      RedisNode* owner = NodeAt(address);
      const int64_t first = std::max<int64_t>(0, range->element[0]->integer);
      const int64_t last = std::min<int64_t>(kRedisSlotCount - 1, range->element[1]->integer);
      for (int64_t slot = first; slot <= last; ++slot) owners[slot] = owner;
    }
  } else {
    *error = "redis node " + node->address() + ": unexpected answer to CLUSTER SLOTS";
    return false;
  }
  std::unique_lock<std::shared_mutex> lock(slots_mutex_);
  slot_owner_.swap(owners);
  is_cluster_ = is_cluster;
  return true;
}

void RedisClusterClient::RunRound(const std::vector<const RedisCommand*>& commands,
                                  const std::vector<Routed>& routed, std::vector<RedisReplyPtr>* replies,
                                  const ReplyConsumer* consume) {
  // Group by node, in address order (the order connections are taken in).
  std::map<std::string, std::pair<RedisNode*, std::vector<Item>>> groups;
  for (const Routed& r : routed) {
    auto& group = groups[r.node->address()];
    group.first = r.node;
    group.second.push_back(Item{commands[r.index], r.index, r.asking});
  }
  std::vector<Lease> leases;
  leases.reserve(groups.size());
  for (auto& [address, group] : groups) leases.emplace_back(group.first);

  // Send everything first, so that all nodes work at once.
  std::vector<bool> sent(groups.size(), false);
  size_t g = 0;
  for (auto& [address, group] : groups) {
    Lease& lease = leases[g];
    lease.set_clean(false);
    sent[g] = SendItems(lease.context(), group.second);
    ++g;
  }
  g = 0;
  for (auto& [address, group] : groups) {
    Lease& lease = leases[g];
    redisContext* context = lease.context();
    if (sent[g] && ReceiveItems(context, group.second, replies, consume)) {
      lease.set_clean(true);
    } else if (IsTimeout(context)) {
      ThrowUnavailable(address, FailureText(context, options_.command_timeout_ms));
    } else {
      RetryOnFreshConnection(&lease, group.second, replies, options_, consume);
    }
    ++g;
  }
}

std::vector<RedisReplyPtr> RedisClusterClient::Execute(const std::vector<RedisCommand>& commands,
                                                       const ReplyConsumer* consume) {
  std::vector<RedisReplyPtr> replies(commands.size());
  if (commands.empty()) return replies;
  std::vector<const RedisCommand*> pointers(commands.size());
  std::vector<int> slots(commands.size());
  for (size_t i = 0; i < commands.size(); ++i) {
    pointers[i] = &commands[i];
    slots[i] = RedisKeySlot(commands[i].key());
  }

  std::vector<Routed> routed;
  auto route_by_slot = [&](const std::vector<size_t>& indices) {
    routed.clear();
    std::shared_lock<std::shared_mutex> lock(slots_mutex_);
    for (size_t index : indices) {
      RedisNode* node = slot_owner_[slots[index]];
      if (node == nullptr) return slots[index];
      routed.push_back(Routed{index, node, false});
    }
    return -1;
  };
  std::vector<size_t> all(commands.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;
  if (int unserved = route_by_slot(all); unserved >= 0) {
    RefreshTopology();
    if ((unserved = route_by_slot(all)) >= 0)
      throw HpsError(ErrorCode::kUnavailable,
                     "redis_cluster: slot " + std::to_string(unserved) + " is not served by any node");
  }

  std::string last_redirect;
  for (int round = 0; round < kMaxRounds; ++round) {
    RunRound(pointers, routed, &replies, consume);

    std::vector<Routed> next;
    bool moved = false;
    bool busy = false;
    for (const Routed& r : routed) {
      if (!replies[r.index]) continue;  // handed to `consume`
      const redisReply& reply = *replies[r.index];
      if (!RedisReplyIsError(reply)) continue;
      const std::string_view text = RedisReplyText(reply);
      const bool is_moved = StartsWith(text, "MOVED ");
      if (is_moved || StartsWith(text, "ASK ")) {
        // "MOVED <slot> <host:port>" / "ASK <slot> <host:port>": go where told.
        const size_t space = text.rfind(' ');
        next.push_back(Routed{r.index, NodeAt(std::string(text.substr(space + 1))), !is_moved});
        moved |= is_moved;
        last_redirect = std::string(text);
      } else if (StartsWith(text, "TRYAGAIN") || StartsWith(text, "CLUSTERDOWN")) {
        // Resent to the slot's owner as known after this round (nullptr: look up below).
        next.push_back(Routed{r.index, nullptr, false});
        busy = true;
        last_redirect = std::string(text);
      }
    }
    if (next.empty()) return replies;
    if (moved) RefreshTopology();
    if (busy) std::this_thread::sleep_for(std::chrono::milliseconds(20 * (round + 1)));
    for (Routed& r : next) {
      if (r.node != nullptr) continue;
      r.node = NodeOfSlot(slots[r.index]);
      if (r.node == nullptr)
        throw HpsError(ErrorCode::kUnavailable, "redis_cluster: slot " + std::to_string(slots[r.index]) +
                                                    " is not served by any node (" + last_redirect + ")");
    }
    routed = std::move(next);
  }
  throw HpsError(ErrorCode::kUnavailable, "redis_cluster: still redirected after " + std::to_string(kMaxRounds) +
                                              " rounds (last: " + last_redirect + ")");
}

std::vector<RedisReplyPtr> RedisClusterClient::ExecuteOn(const std::string& node_address,
                                                         const std::vector<RedisCommand>& commands) {
  std::vector<RedisReplyPtr> replies(commands.size());
  if (commands.empty()) return replies;
  std::vector<Item> items;
  items.reserve(commands.size());
  for (size_t i = 0; i < commands.size(); ++i) items.push_back(Item{&commands[i], i, false});
  Lease lease(NodeAt(node_address));
  lease.set_clean(false);
  redisContext* context = lease.context();
  if (SendItems(context, items) && ReceiveItems(context, items, &replies, nullptr)) {
    lease.set_clean(true);
  } else if (IsTimeout(context)) {
    ThrowUnavailable(node_address, FailureText(context, options_.command_timeout_ms));
  } else {
    RetryOnFreshConnection(&lease, items, &replies, options_, nullptr);
  }
  return replies;
}

}  // namespace tf_hps

