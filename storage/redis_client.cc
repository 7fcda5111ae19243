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
//
// TLS. hiredis 0.14 has no TLS, so the client adds it underneath: a
// connection is opened by hiredis (TCP connect within the connect timeout,
// blocking socket) and, with enable_tls, OpenSSL then runs the handshake on
// the context's socket, with SO_RCVTIMEO / SO_SNDTIMEO set to the connect
// timeout (so a peer that does not speak TLS fails it in about that time),
// verifying the server's certificate against the configured CAs and its name
// against tls_server_name (also sent as SNI). From then on hiredis only
// formats commands and parses replies: redisAppendCommandArgv fills
// context->obuf (no I/O in 0.14), which is written with SSL_write and
// cleared; replies are read with SSL_read and fed to context->reader. The
// socket keeps the command timeout, so SSL_read / SSL_write time out exactly
// like hiredis's read / write, and their failures are recorded in the
// context (err, errstr) the way hiredis records its own: a timeout as
// REDIS_ERR_IO with strerror(EAGAIN), a closed connection as REDIS_ERR_EOF.
// Everything above (pooling, retries, redirections, error codes) is shared
// with plain connections, whose path is unchanged: hiredis does their I/O.
// The SSL_CTX (CAs, client certificate) is built once per client, so missing
// or bad files fail when the client is created, naming file and config key.
#include "storage/redis_client.h"

#include <arpa/inet.h>
#include <dlfcn.h>
// hiredis 0.14's sds.h lacks extern "C"; hiredis.h includes it, so it comes first.
extern "C" {
#include <hiredis/sds.h>
}
#include <hiredis/hiredis.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <thread>
#include <utility>

#include "base/error.h"

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

// --- TLS ---------------------------------------------------------------------

namespace {

// OpenSSL is loaded at run time, not linked: TensorFlow's
// libtensorflow_framework.so.2 exports its own BoringSSL under the same
// names (SSL_new, ERR_get_error, ...), unversioned, so a link-time reference
// would bind to whichever library comes first in the search order (the
// static linker already binds most of them to TensorFlow's), and libssl's
// own calls into libcrypto could too. dlopen with RTLD_DEEPBIND makes
// libssl.so.3 and libcrypto.so.3 resolve their symbols among themselves first,
// and dlsym on that handle gives us theirs.
#define TF_HPS_OPENSSL_FUNCTIONS(X) X(TLS_client_method) X(SSL_CTX_new) X(SSL_CTX_free) X(SSL_CTX_ctrl) X(SSL_CTX_set_verify) X(SSL_CTX_set_default_passwd_cb) X(SSL_CTX_set_default_verify_paths) X(SSL_CTX_load_verify_locations) X(SSL_CTX_use_certificate_chain_file) X(SSL_CTX_use_PrivateKey_file) X(SSL_CTX_check_private_key) X(SSL_new) X(SSL_free) X(SSL_set_fd) X(SSL_ctrl) X(SSL_set1_host) X(SSL_get0_param) X(SSL_connect) X(SSL_read) X(SSL_write) X(SSL_get_error) X(SSL_get_verify_result) X(ERR_get_error) X(ERR_clear_error) X(ERR_error_string_n) X(X509_verify_cert_error_string) X(X509_VERIFY_PARAM_set1_ip_asc)

struct OpenSsl {
#define TF_HPS_OPENSSL_MEMBER(name) decltype(&::name) name = nullptr;
  TF_HPS_OPENSSL_FUNCTIONS(TF_HPS_OPENSSL_MEMBER)
#undef TF_HPS_OPENSSL_MEMBER
};

const OpenSsl* LoadOpenSsl() {
  constexpr const char* kLibrary = "libssl.so.3";
  void* handle = dlopen(kLibrary, RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
  if (handle == nullptr) {
    const char* why = dlerror();
    throw HpsError(ErrorCode::kFailedPrecondition,
                   std::string("redis TLS needs OpenSSL 3 (") + kLibrary + "), which cannot be loaded (" +
                       (why != nullptr ? why : "unknown error") + "); install the Debian package libssl3");
  }
  auto* table = new OpenSsl();  // never freed, like the library
#define TF_HPS_OPENSSL_LOOKUP(name)                                                                          \
  table->name = reinterpret_cast<decltype(&::name)>(dlsym(handle, #name));                                   \
  if (table->name == nullptr)                                                                                \
    throw HpsError(ErrorCode::kFailedPrecondition,                                                           \
                   std::string("redis TLS: ") + kLibrary + " has no function " #name " (OpenSSL 3 is needed)");
  TF_HPS_OPENSSL_FUNCTIONS(TF_HPS_OPENSSL_LOOKUP)
#undef TF_HPS_OPENSSL_LOOKUP
  return table;
}

// The OpenSSL functions; the first call loads them (throws if it cannot).
const OpenSsl& Ossl() {
  static const OpenSsl* table = LoadOpenSsl();  // retried by the next call if it throws
  return *table;
}

}  // namespace

// One open connection: a hiredis context and, over TLS, the session on its socket.
struct RedisConnection {
  redisContext* context = nullptr;
  SSL* ssl = nullptr;  // null for a plain connection
};

namespace {

void CloseConnection(RedisConnection* connection) {
  if (connection == nullptr) return;
  // No close_notify: the peer may be gone, and Redis does not need it.
  if (connection->ssl != nullptr) Ossl().SSL_free(connection->ssl);
  if (connection->context != nullptr) redisFree(connection->context);
  delete connection;
}

// The oldest error in this thread's OpenSSL queue as text (and clears the queue).
std::string OpenSslErrorText() {
  const unsigned long code = Ossl().ERR_get_error();
  Ossl().ERR_clear_error();
  if (code == 0) return "no OpenSSL error recorded";
  char text[256];
  Ossl().ERR_error_string_n(code, text, sizeof(text));
  return text;
}

void SetContextError(redisContext* context, int type, const std::string& text) {
  context->err = type;
  std::snprintf(context->errstr, sizeof(context->errstr), "%s", text.c_str());
}

// Records why an SSL_read / SSL_write on a blocking socket failed, as hiredis
// records a failed read / write (see the design note).
void SetTlsIoError(RedisConnection* connection, int result, int saved_errno) {
  redisContext* context = connection->context;
  switch (Ossl().SSL_get_error(connection->ssl, result)) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:  // SO_RCVTIMEO / SO_SNDTIMEO ran out
      Ossl().ERR_clear_error();
      SetContextError(context, REDIS_ERR_IO, std::strerror(EAGAIN));
      return;
    case SSL_ERROR_ZERO_RETURN:
      Ossl().ERR_clear_error();
      SetContextError(context, REDIS_ERR_EOF, "Server closed the connection");
      return;
    case SSL_ERROR_SYSCALL:
      Ossl().ERR_clear_error();
      if (saved_errno == EAGAIN || saved_errno == EWOULDBLOCK)
        SetContextError(context, REDIS_ERR_IO, std::strerror(EAGAIN));
      else if (saved_errno == 0)
        SetContextError(context, REDIS_ERR_EOF, "Server closed the connection");
      else
        SetContextError(context, REDIS_ERR_IO, std::strerror(saved_errno));
      return;
    default: {
      std::string text = "TLS: " + OpenSslErrorText();
      if (text.find("unexpected eof") != std::string::npos) {
        SetContextError(context, REDIS_ERR_EOF, "Server closed the connection");
        return;
      }
      if (text.find("certificate required") != std::string::npos)
        text = "the server requires a client certificate: " + text;
      SetContextError(context, REDIS_ERR_IO, text);
    }
  }
}

// Writes the context's output buffer through TLS and empties it; false (with
// the context's error set) on failure.
bool TlsFlush(RedisConnection* connection) {
  redisContext* context = connection->context;
  const size_t length = sdslen(context->obuf);
  size_t done = 0;
  while (done < length) {
    const int chunk = static_cast<int>(std::min<size_t>(length - done, INT_MAX));
    Ossl().ERR_clear_error();
    errno = 0;
    const int written = Ossl().SSL_write(connection->ssl, context->obuf + done, chunk);
    if (written <= 0) {
      SetTlsIoError(connection, written, errno);
      return false;
    }
    done += static_cast<size_t>(written);
  }
  sdsfree(context->obuf);
  context->obuf = sdsempty();
  return true;
}

// redisGetReply for a TLS connection: flushes pending output, then reads
// until the reader holds a whole reply. REDIS_OK or REDIS_ERR, like hiredis.
int TlsGetReply(RedisConnection* connection, void** reply) {
  redisContext* context = connection->context;
  *reply = nullptr;
  if (redisGetReplyFromReader(context, reply) != REDIS_OK) return REDIS_ERR;
  if (*reply != nullptr) return REDIS_OK;
  if (sdslen(context->obuf) > 0 && !TlsFlush(connection)) return REDIS_ERR;
  char buffer[16 * 1024];
  while (*reply == nullptr) {
    Ossl().ERR_clear_error();
    errno = 0;
    const int got = Ossl().SSL_read(connection->ssl, buffer, sizeof(buffer));
    if (got <= 0) {
      SetTlsIoError(connection, got, errno);
      return REDIS_ERR;
    }
    if (redisReaderFeed(context->reader, buffer, static_cast<size_t>(got)) != REDIS_OK ||
        redisGetReplyFromReader(context, reply) != REDIS_OK) {
      if (context->err == 0) SetContextError(context, REDIS_ERR_PROTOCOL, context->reader->errstr);
      return REDIS_ERR;
    }
  }
  return REDIS_OK;
}

int GetReply(RedisConnection* connection, void** reply) {
  if (connection->ssl != nullptr) return TlsGetReply(connection, reply);
  return redisGetReply(connection->context, reply);
}

// Sends one command and reads its reply (redisCommandArgv); null on failure.
redisReply* RunCommand(RedisConnection* connection, int argc, const char** argv, const size_t* lens) {
  if (connection->ssl == nullptr) return static_cast<redisReply*>(redisCommandArgv(connection->context, argc, argv, lens));
  if (redisAppendCommandArgv(connection->context, argc, argv, lens) != REDIS_OK) return nullptr;
  void* reply = nullptr;
  if (TlsGetReply(connection, &reply) != REDIS_OK) return nullptr;
  return static_cast<redisReply*>(reply);
}

bool IsIpAddress(const std::string& host) {
  unsigned char buffer[sizeof(in6_addr)];
  return inet_pton(AF_INET, host.c_str(), buffer) == 1 || inet_pton(AF_INET6, host.c_str(), buffer) == 1;
}

// Checks that `path` names a readable file (or, where allowed, a folder);
// throws kNotFound naming the config key otherwise. True for a folder.
bool CheckReadable(const std::string& path, const std::string& key, bool folder_allowed) {
  std::error_code ec;
  if (folder_allowed && std::filesystem::is_directory(path, ec)) return true;
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr)
    throw HpsError(ErrorCode::kNotFound, key + ": cannot read '" + path + "' (" + std::strerror(errno) + ")");
  std::fclose(file);
  return false;
}

// A hint for the first exchange on a new connection that failed. A TLS-only
// server resets a plain connection, or answers it with a TLS alert record
// (type byte 0x15). A server that wants a client certificate it did not get
// (or does not trust) drops a TLS 1.3 connection after the client has
// finished its handshake, often before its alert can be read.
std::string FirstExchangeHint(const RedisConnection* connection, const RedisClientOptions& options) {
  const redisContext* context = connection->context;
  const bool alert = context->err == REDIS_ERR_PROTOCOL && std::strstr(context->errstr, "\"\\x15\"") != nullptr;
  const bool dropped = context->err == REDIS_ERR_EOF ||
                       (context->err == REDIS_ERR_IO && std::strcmp(context->errstr, std::strerror(ECONNRESET)) == 0);
  if (connection->ssl == nullptr) {
    if (alert) return "; the server answered with a TLS alert: it expects TLS (set enable_tls and the tls_* keys)";
    if (dropped) return "; if that port serves TLS only, set enable_tls and the tls_* keys";
    return "";
  }
  if (!dropped || std::strstr(context->errstr, "client certificate") != nullptr) return "";
  const std::string section = options.config_section + ".";
  if (options.tls_client_certificate.empty())
    return "; the server closed the connection after the TLS handshake: it may require a client certificate "
           "(set " + section + "tls_client_certificate and " + section + "tls_client_key)";
  return "; the server closed the connection after the TLS handshake: it may not accept the client certificate " +
         section + "tls_client_certificate ('" + options.tls_client_certificate + "')";
}

}  // namespace

// The client's TLS settings: one SSL_CTX shared by all its connections.
class RedisTls {
 public:
  explicit RedisTls(const RedisClientOptions& options)
      : section_(options.config_section),
        ca_(options.tls_ca_certificate),
        server_name_(options.tls_server_name),
        connect_timeout_ms_(options.connect_timeout_ms) {
    Ossl().ERR_clear_error();
    context_ = Ossl().SSL_CTX_new(Ossl().TLS_client_method());
    if (context_ == nullptr) throw HpsError(ErrorCode::kInternal, "redis TLS: SSL_CTX_new failed: " + OpenSslErrorText());
    try {
      Ossl().SSL_CTX_ctrl(context_, SSL_CTRL_SET_MIN_PROTO_VERSION, TLS1_2_VERSION, nullptr);
      Ossl().SSL_CTX_set_verify(context_, SSL_VERIFY_PEER, nullptr);
      Ossl().SSL_CTX_ctrl(context_, SSL_CTRL_MODE, SSL_MODE_AUTO_RETRY, nullptr);
      // Never prompt for a key's passphrase (an encrypted key fails instead).
      Ossl().SSL_CTX_set_default_passwd_cb(context_, [](char*, int, int, void*) { return 0; });
      LoadCa();
      LoadClientCertificate(options.tls_client_certificate, options.tls_client_key);
    } catch (...) {
      Ossl().SSL_CTX_free(context_);
      throw;
    }
  }
  ~RedisTls() { Ossl().SSL_CTX_free(context_); }
  RedisTls(const RedisTls&) = delete;
  RedisTls& operator=(const RedisTls&) = delete;

  // Runs the handshake on a connected context (its socket's timeouts set to
  // the connect timeout by the caller). Returns the session; throws
  // kInvalidArgument if the server's certificate does not verify, else
  // kUnavailable. Does not free the context.
  SSL* Handshake(redisContext* context, const std::string& address, const std::string& host) const {
    const std::string name = server_name_.empty() ? host : server_name_;
    Ossl().ERR_clear_error();
    SSL* ssl = Ossl().SSL_new(context_);
    if (ssl == nullptr) throw HpsError(ErrorCode::kInternal, "redis TLS: SSL_new failed: " + OpenSslErrorText());
    bool named = Ossl().SSL_set_fd(ssl, context->fd) == 1;
    if (IsIpAddress(name)) {
      named = named && Ossl().X509_VERIFY_PARAM_set1_ip_asc(Ossl().SSL_get0_param(ssl), name.c_str()) == 1;
    } else {
      // SNI carries host names only.
      named = named && Ossl().SSL_ctrl(ssl, SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name, const_cast<char*>(name.c_str())) == 1 && Ossl().SSL_set1_host(ssl, name.c_str()) == 1;
    }
    if (!named) {
      const std::string why = OpenSslErrorText();
      Ossl().SSL_free(ssl);
      ThrowInvalidArgument(Key("tls_server_name_identification") + ": cannot use '" + name + "' (" + why + ")");
    }
    errno = 0;
    const int result = Ossl().SSL_connect(ssl);
    if (result == 1) return ssl;
    const int saved_errno = errno;
    const int error = Ossl().SSL_get_error(ssl, result);
    const long verify = Ossl().SSL_get_verify_result(ssl);
    std::string why = OpenSslErrorText();
    Ossl().SSL_free(ssl);
    const std::string hint = "; is " + address + " a TLS port (tls-port), and does the server speak TLS?";
    if (verify != X509_V_OK) {
      std::string text = "redis node " + address + ": the server's TLS certificate does not verify (" +
                         Ossl().X509_verify_cert_error_string(verify) + "): ";
      if (verify == X509_V_ERR_HOSTNAME_MISMATCH || verify == X509_V_ERR_IP_ADDRESS_MISMATCH)
        text += "it is not issued for '" + name + "'; set " + Key("tls_server_name_identification") +
                " to a name in the certificate";
      else
        text += "check that " + Key("tls_ca_certificate") + " ('" + ca_ + "') holds the CA that signed it";
      ThrowInvalidArgument(text);
    }
    if (error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE ||
        (error == SSL_ERROR_SYSCALL && (saved_errno == EAGAIN || saved_errno == EWOULDBLOCK)))
      ThrowUnavailable(address, "TLS handshake: no answer within " + std::to_string(connect_timeout_ms_) +
                                    " ms (connect timeout)" + hint);
    if (error == SSL_ERROR_SYSCALL)
      why = saved_errno == 0 ? std::string("the server closed the connection") : std::strerror(saved_errno);
    if (why.find("alert") != std::string::npos && why.find("certificate") != std::string::npos)
      ThrowUnavailable(address, "TLS handshake failed (" + why + "); the server may require a client certificate: set " +
                                    Key("tls_client_certificate") + " and " + Key("tls_client_key"));
    ThrowUnavailable(address, "TLS handshake failed (" + why + ")" + hint);
  }

 private:
  std::string Key(const char* name) const { return section_ + "." + name; }

  void LoadCa() {
    if (ca_.empty()) {
      if (Ossl().SSL_CTX_set_default_verify_paths(context_) != 1)
        ThrowInvalidArgument(Key("tls_ca_certificate") + " is empty and the system's trust store cannot be loaded (" +
                             OpenSslErrorText() + ")");
      return;
    }
    const bool folder = CheckReadable(ca_, Key("tls_ca_certificate"), /*folder_allowed=*/true);
    if (Ossl().SSL_CTX_load_verify_locations(context_, folder ? nullptr : ca_.c_str(), folder ? ca_.c_str() : nullptr) != 1)
      ThrowInvalidArgument(Key("tls_ca_certificate") + ": '" + ca_ + "' holds no PEM certificate OpenSSL can load (" +
                           OpenSslErrorText() + ")");
  }

  void LoadClientCertificate(const std::string& certificate, const std::string& key) {
    if (certificate.empty()) return;
    CheckReadable(certificate, Key("tls_client_certificate"), false);
    if (key.empty())
      ThrowInvalidArgument(Key("tls_client_key") + " is empty but " + Key("tls_client_certificate") +
                           " is set: a client certificate needs its private key");
    CheckReadable(key, Key("tls_client_key"), false);
    if (Ossl().SSL_CTX_use_certificate_chain_file(context_, certificate.c_str()) != 1)
      ThrowInvalidArgument(Key("tls_client_certificate") + ": '" + certificate +
                           "' holds no PEM certificate OpenSSL can load (" + OpenSslErrorText() + ")");
    if (Ossl().SSL_CTX_use_PrivateKey_file(context_, key.c_str(), SSL_FILETYPE_PEM) != 1) {
      const std::string why = OpenSslErrorText();
      if (why.find("key values mismatch") != std::string::npos)
        ThrowInvalidArgument(Key("tls_client_key") + ": '" + key + "' is not the private key of " +
                             Key("tls_client_certificate") + " '" + certificate + "' (" + why + ")");
      ThrowInvalidArgument(Key("tls_client_key") + ": '" + key +
                           "' holds no unencrypted PEM private key OpenSSL can load (" + why + ")");
    }
    if (Ossl().SSL_CTX_check_private_key(context_) != 1)
      ThrowInvalidArgument(Key("tls_client_key") + ": '" + key + "' is not the private key of " +
                           Key("tls_client_certificate") + " '" + certificate + "' (" + OpenSslErrorText() + ")");
  }

  const std::string section_;
  const std::string ca_;
  const std::string server_name_;
  const int64_t connect_timeout_ms_;
  SSL_CTX* context_ = nullptr;
};

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
  RedisNode(std::string address, std::string host, int port, const RedisClientOptions* options, const RedisTls* tls)
      : address_(std::move(address)), host_(std::move(host)), port_(port), options_(options), tls_(tls) {}

  ~RedisNode() {
    for (RedisConnection* connection : idle_) CloseConnection(connection);
  }

  const std::string& address() const { return address_; }
  const std::string& host() const { return host_; }

  // Takes an idle connection (nullptr: not open yet), waiting while all are busy.
  RedisConnection* Checkout() {
    std::unique_lock<std::mutex> lock(mutex_);
    available_.wait(lock, [&] { return !idle_.empty() || leased_ + static_cast<int64_t>(idle_.size()) <
                                                             options_->connections_per_node; });
    ++leased_;
    if (idle_.empty()) return nullptr;
    RedisConnection* connection = idle_.back();
    idle_.pop_back();
    return connection;
  }

  // Gives a connection back; a broken one is closed here.
  void Return(RedisConnection* connection, bool healthy) {
    if (connection != nullptr && (!healthy || connection->context->err != 0)) {
      CloseConnection(connection);
      connection = nullptr;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      --leased_;
      // A closed connection frees its pool place; it is reopened on demand.
      if (connection != nullptr) idle_.push_back(connection);
    }
    available_.notify_one();
  }

  // Opens and authenticates a connection (with TLS: handshakes first). Throws
  // kUnavailable if the server cannot be reached in time, kInvalidArgument if
  // it refuses the credentials or its certificate does not verify.
  RedisConnection* Open() const {
    redisContext* context = redisConnectWithTimeout(host_.c_str(), port_, ToTimeval(options_->connect_timeout_ms));
    if (context == nullptr) ThrowUnavailable(address_, "cannot allocate a connection");
    if (context->err != 0) {
      const std::string why = context->errstr;
      redisFree(context);
      ThrowUnavailable(address_, "cannot connect (" + why + "; connect timeout " +
                                     std::to_string(options_->connect_timeout_ms) + " ms)");
    }
    auto* connection = new RedisConnection{context, nullptr};
    if (tls_ != nullptr) {
      redisSetTimeout(context, ToTimeval(options_->connect_timeout_ms));  // the handshake's limit
      try {
        connection->ssl = tls_->Handshake(context, address_, host_);
      } catch (...) {
        CloseConnection(connection);
        throw;
      }
    }
    redisSetTimeout(context, ToTimeval(options_->command_timeout_ms));
    redisEnableKeepAlive(context);
    if (!options_->password.empty()) Authenticate(connection);
    return connection;
  }

 private:
  void Authenticate(RedisConnection* connection) const {
    redisContext* context = connection->context;
    // "AUTH <password>" also works on servers older than 6 (no ACL users).
    std::vector<const char*> argv = {"AUTH"};
    std::vector<size_t> lens = {4};
    if (!options_->user_name.empty() && options_->user_name != "default") {
      argv.push_back(options_->user_name.data());
      lens.push_back(options_->user_name.size());
    }
    argv.push_back(options_->password.data());
    lens.push_back(options_->password.size());
    auto* raw = RunCommand(connection, static_cast<int>(argv.size()), argv.data(), lens.data());
    RedisReplyPtr reply(raw);
    if (reply == nullptr) {
      const std::string why = context->errstr;
      const std::string hint = FirstExchangeHint(connection, *options_);
      CloseConnection(connection);
      ThrowUnavailable(address_, "no answer to AUTH (" + why + ")" + hint);
    }
    if (RedisReplyIsError(*reply)) {
      const std::string why(RedisReplyText(*reply));
      CloseConnection(connection);
      ThrowInvalidArgument("redis node " + address_ + ": authentication as user '" + options_->user_name +
                           "' failed (" + why + "); check user_name and password in the config's volatile_db (or, for "
                           "the update streams, update_source)");
    }
  }

  const std::string address_;
  const std::string host_;
  const int port_;
  const RedisClientOptions* options_;
  const RedisTls* tls_;  // null without TLS

  std::mutex mutex_;
  std::condition_variable available_;
  std::vector<RedisConnection*> idle_;
  int64_t leased_ = 0;
};

namespace {

// A connection checked out of a node's pool for one exchange; closed on
// return unless the exchange completed (so no stale reply can be read later).
class Lease {
 public:
  explicit Lease(RedisNode* node) : node_(node), connection_(node->Checkout()) {}
  ~Lease() {
    if (node_ != nullptr) node_->Return(connection_, clean_);
  }
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  Lease(Lease&& other) noexcept
      : node_(other.node_), connection_(std::exchange(other.connection_, nullptr)), clean_(other.clean_) {
    other.node_ = nullptr;
  }

  RedisNode* node() const { return node_; }

  // The open connection (opening it if needed; throws like RedisNode::Open).
  RedisConnection* connection() {
    if (connection_ == nullptr) connection_ = node_->Open();
    return connection_;
  }

  // Closes the connection; the next connection() reopens it.
  void Reset() {
    CloseConnection(connection_);
    connection_ = nullptr;
  }

  void set_clean(bool clean) { clean_ = clean; }

 private:
  RedisNode* node_;
  RedisConnection* connection_;
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
bool SendItems(RedisConnection* connection, const std::vector<Item>& items) {
  redisContext* context = connection->context;
  const char* asking_argv[] = {"ASKING"};
  const size_t asking_len[] = {6};
  std::vector<const char*> argv;
  std::vector<size_t> lens;
  size_t pending = 0;
  auto flush = [&]() {
    if (connection->ssl != nullptr) {
      if (!TlsFlush(connection)) return false;
    } else {
      int done = 0;
      while (!done)
        if (redisBufferWrite(context, &done) != REDIS_OK) return false;
    }
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
bool ReceiveItems(RedisConnection* connection, const std::vector<Item>& items, std::vector<RedisReplyPtr>* replies,
                  const RedisClusterClient::ReplyConsumer* consume) {
  for (const Item& item : items) {
    void* raw = nullptr;
    if (item.asking) {
      if (GetReply(connection, &raw) != REDIS_OK) return false;
      freeReplyObject(raw);
    }
    if (GetReply(connection, &raw) != REDIS_OK) return false;
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
  RedisConnection* connection = lease->connection();
  if (!SendItems(connection, items) || !ReceiveItems(connection, items, replies, consume))
    ThrowUnavailable(lease->node()->address(), FailureText(connection->context, options.command_timeout_ms));
  lease->set_clean(true);
}

}  // namespace

// --- the cluster client -----------------------------------------------------

RedisClusterClient::RedisClusterClient(RedisClientOptions options)
    : options_(std::move(options)), slot_owner_(kRedisSlotCount, nullptr) {
  if (options_.seeds.empty()) ThrowInvalidArgument("volatile_db.address: no server given");
  if (options_.enable_tls) tls_ = std::make_unique<RedisTls>(options_);
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
    slot = std::make_unique<RedisNode>(address, host, port, &options_, tls_.get());
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
  throw HpsError(ErrorCode::kUnavailable,
                 "redis_cluster: no server in " + options_.config_section + ".address answered (" + errors + ")");
}

bool RedisClusterClient::LoadSlotsFrom(RedisNode* node, std::string* error) {
  Lease lease(node);
  RedisReplyPtr reply;
  try {
    RedisConnection* connection = lease.connection();
    if (connection->ssl == nullptr) {
      reply.reset(static_cast<redisReply*>(redisCommand(connection->context, "CLUSTER SLOTS")));
    } else {
      const char* argv[] = {"CLUSTER", "SLOTS"};
      const size_t lens[] = {7, 5};
      reply.reset(RunCommand(connection, 2, argv, lens));
    }
    if (reply == nullptr) {
      *error = "redis node " + node->address() + ": " + FailureText(connection->context, options_.command_timeout_ms) +
               FirstExchangeHint(connection, options_);
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
    sent[g] = SendItems(lease.connection(), group.second);
    ++g;
  }
  g = 0;
  for (auto& [address, group] : groups) {
    Lease& lease = leases[g];
    RedisConnection* connection = lease.connection();
    redisContext* context = connection->context;
    if (sent[g] && ReceiveItems(connection, group.second, replies, consume)) {
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
  RedisConnection* connection = lease.connection();
  redisContext* context = connection->context;
  if (SendItems(connection, items) && ReceiveItems(connection, items, &replies, nullptr)) {
    lease.set_clean(true);
  } else if (IsTimeout(context)) {
    ThrowUnavailable(node_address, FailureText(context, options_.command_timeout_ms));
  } else {
    RetryOnFreshConnection(&lease, items, &replies, options_, nullptr);
  }
  return replies;
}

}  // namespace tf_hps

