// A small Redis Cluster client on libhiredis 0.14 (synchronous contexts,
// binary-safe pipelining): slot routing, topology discovery, MOVED/ASK
// redirections and a connection pool per node. A standalone server (cluster
// support disabled) works too: it owns every slot. Optionally over TLS
// (OpenSSL; hiredis 0.14 has none): see the design note in redis_client.cc.
//
// Used by the redis_cluster volatile database (storage/redis_cluster_backend.h);
// it knows nothing about tables or the key layout.
#ifndef TF_HPS_STORAGE_REDIS_CLIENT_H_
#define TF_HPS_STORAGE_REDIS_CLIENT_H_

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <vector>

struct redisContext;
struct redisReply;

namespace tf_hps {

// Number of hash slots of a Redis Cluster.
inline constexpr int kRedisSlotCount = 16384;

// CRC16-XMODEM (polynomial 0x1021, initial value 0) of `data`, the checksum
// Redis Cluster hashes keys with.
uint16_t RedisCrc16(std::string_view data);

// The cluster slot of a key: CRC16 of its hash tag (the text between the first
// '{' and the next '}', if not empty), else of the whole key, mod 16384.
int RedisKeySlot(std::string_view key);

// One command: its arguments, stored back to back in one buffer (binary safe).
// By convention args[1] is the key that routes it (see RouteBy).
class RedisCommand {
 public:
  RedisCommand() = default;
  explicit RedisCommand(std::string_view name) { Add(name); }

  RedisCommand& Add(std::string_view arg);
  RedisCommand& Add(int64_t value);
  // Reserves room for `args` more arguments of about `bytes` bytes in total.
  void Reserve(size_t args, size_t bytes);

  size_t argc() const { return ends_.size(); }
  std::string_view arg(size_t i) const;
  // Routes the command by args[i] instead of args[1] (EVAL's first key, say).
  RedisCommand& RouteBy(size_t i) {
    route_arg_ = i;
    return *this;
  }
  // The routing key (args[1] unless RouteBy said otherwise); empty for a
  // command without one.
  std::string_view key() const { return argc() > route_arg_ ? arg(route_arg_) : std::string_view(); }

 private:
  std::string buffer_;
  std::vector<size_t> ends_;  // end offset of each argument in buffer_
  size_t route_arg_ = 1;
};

struct RedisReplyDeleter {
  void operator()(redisReply* reply) const;
};
using RedisReplyPtr = std::unique_ptr<redisReply, RedisReplyDeleter>;

// Text of an error or status reply ("" for other types).
std::string_view RedisReplyText(const redisReply& reply);
bool RedisReplyIsError(const redisReply& reply);

struct RedisClientOptions {
  std::vector<std::string> seeds;  // "host:port" each; tried in order
  std::string user_name = "default";
  std::string password;            // empty: no AUTH
  int64_t connections_per_node = 5;
  int64_t connect_timeout_ms = 1000;
  int64_t command_timeout_ms = 5000;

  // TLS. With enable_tls, every connection is a TCP connect followed by a TLS
  // (1.2 or newer) handshake that verifies the server's certificate, and all
  // its traffic (AUTH included) is encrypted.
  bool enable_tls = false;
  // PEM file (or folder of hashed PEM files) of the CAs trusted to sign the
  // servers' certificates; empty: the system's default trust store.
  std::string tls_ca_certificate;
  // PEM client certificate (chain) and its private key, for servers with
  // tls-auth-clients; an empty certificate means none (the key is then ignored).
  std::string tls_client_certificate;
  std::string tls_client_key;
  // Sent as SNI and verified against the server certificate's names; empty:
  // the node's host (name or IP address) from the address it was reached at.
  std::string tls_server_name;
  // The config section the settings came from ("volatile_db",
  // "update_source"), for error messages that name config keys.
  std::string config_section = "volatile_db";

  // Takes the connection settings every Redis section of the config shares
  // (volatile_db, update_source: address, user_name, password and the HPS
  // TLS keys); the section's name goes into error messages.
  template <class Section>
  void SetFromSection(const Section& section, const std::string& section_name);
};

// Parses "host:port[,host:port...]" (spaces ignored, port 6379 if omitted).
// Throws HpsError(kInvalidArgument) on a malformed entry.
std::vector<std::string> ParseRedisSeeds(const std::string& address);

template <class Section>
void RedisClientOptions::SetFromSection(const Section& section, const std::string& section_name) {
  seeds = ParseRedisSeeds(section.address);
  user_name = section.user_name.empty() ? "default" : section.user_name;
  password = section.password;
  enable_tls = section.enable_tls;
  tls_ca_certificate = section.tls_ca_certificate;
  tls_client_certificate = section.tls_client_certificate;
  tls_client_key = section.tls_client_key;
  tls_server_name = section.tls_server_name_identification;
  config_section = section_name;
}


class RedisNode;
class RedisTls;

// Routes commands to the cluster's masters. Thread-safe: concurrent callers
// use different pooled connections.
class RedisClusterClient {
 public:
  // Connects to the first seed that answers and reads the slot map. Throws
  // HpsError: kUnavailable if no seed answers in time (naming every seed
  // tried), kInvalidArgument if authentication fails. With TLS also:
  // kNotFound if a certificate or key file cannot be read, kInvalidArgument
  // if one holds nothing OpenSSL can load (both name the file and the config
  // key) or if a server's certificate does not verify.
  explicit RedisClusterClient(RedisClientOptions options);
  ~RedisClusterClient();

  RedisClusterClient(const RedisClusterClient&) = delete;
  RedisClusterClient& operator=(const RedisClusterClient&) = delete;

  // Sends each command to the master of its key's slot, all nodes' commands
  // pipelined before any reply is read, and returns the replies in command
  // order. Follows MOVED (refreshing the slot map) and ASK redirections up
  // to a fixed number of rounds. Error replies other than redirections are
  // returned as they are. Throws HpsError(kUnavailable) when a node cannot be
  // reached (after one reconnection) or does not answer within the timeout.
  //
  // With `consume`, each reply that is not an error is handed to it as soon
  // as it is read (consume(command index, reply)) and freed right after, and
  // its place in the result stays null: large answers are then processed
  // without holding every reply in memory at once. A command may be handed
  // over twice if its connection broke and the round was resent.
  using ReplyConsumer = std::function<void(size_t index, const redisReply& reply)>;
  std::vector<RedisReplyPtr> Execute(const std::vector<RedisCommand>& commands,
                                     const ReplyConsumer* consume = nullptr);

  // Runs commands on one node, pipelined, with no routing (e.g. SCAN).
  std::vector<RedisReplyPtr> ExecuteOn(const std::string& node_address,
                                       const std::vector<RedisCommand>& commands);

  // Addresses of the nodes that own slots (the masters), sorted.
  std::vector<std::string> Masters() const;

  // False for a standalone server (cluster support disabled).
  bool is_cluster() const;

  // Re-reads the slot map from any known node. Throws like the constructor.
  void RefreshTopology();

 private:
  struct Routed;

  RedisNode* NodeAt(const std::string& address);
  RedisNode* NodeOfSlot(int slot) const;
  // Reads CLUSTER SLOTS from `node`; false (with *error) if it cannot.
  bool LoadSlotsFrom(RedisNode* node, std::string* error);
  // Sends one round of routed commands; fills replies.
  void RunRound(const std::vector<const RedisCommand*>& commands, const std::vector<Routed>& routed,
                std::vector<RedisReplyPtr>* replies, const ReplyConsumer* consume);

  const RedisClientOptions options_;
  std::unique_ptr<RedisTls> tls_;  // null without TLS

  mutable std::mutex nodes_mutex_;  // guards nodes_ (nodes are never removed)
  std::map<std::string, std::unique_ptr<RedisNode>> nodes_;

  std::mutex refresh_mutex_;  // one topology refresh at a time
  mutable std::shared_mutex slots_mutex_;
  std::vector<RedisNode*> slot_owner_;  // (16384), nullptr for an unserved slot
  bool is_cluster_ = true;
};

}  // namespace tf_hps

#endif  // TF_HPS_STORAGE_REDIS_CLIENT_H_
