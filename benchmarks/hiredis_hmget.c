/* Raw C hiredis baseline for benchmarks/storage_tiers.py: pipelined HMGET of a
 * table stored in the Redis layout of storage/layout.h.
 *
 *   hiredis_hmget --nodes 127.0.0.1:7000[,...] --partition-nodes 0,1,2,...
 *                 --tag hps_et.bench.d16 --dim 16 --keys keys.bin
 *                 [--repeats 7] [--min-time 0.02] [--dump values.bin]
 *
 * keys.bin holds the batch as raw int64 little-endian. --partition-nodes gives,
 * for each of the table's partitions, the index in --nodes of the server that
 * owns its slot (one entry per partition; all 0 for a standalone server).
 *
 * One fetch of the batch does what the C++ backend's fetch does, with nothing
 * around it: find the batch's distinct keys (an open-addressing table of the
 * mixed keys), mix each distinct key (base/key_hash.h) to find its partition,
 * group them by partition, append one HMGET "hps_et{<tag>/p<p>}v" <8-byte
 * keys...> per non-empty partition with redisAppendCommandArgv, flush every
 * node's output buffer, then read the replies in order with redisGetReply and
 * copy each row into the places of its key in a (batch, dim) float32 array;
 * rows not found are zeroed. Only this loop is timed.
 *
 * After one warm-up fetch (written to --dump if given), prints one JSON line:
 * {"hiredis": "<version>", "keys": n, "inner": fetches per repeat,
 *  "times_s": [seconds per fetch, one per repeat]}.
 */
#define _POSIX_C_SOURCE 200809L

#include <hiredis/hiredis.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_NODES 64

static void die(const char* what) {
  fprintf(stderr, "hiredis_hmget: %s\n", what);
  exit(1);
}

/* The 64-bit key mix of base/key_hash.h (MixKey). */
static uint64_t rotr(uint64_t x, int r) { return (x >> r) | (x << (64 - r)); }

static uint64_t mix_key(uint64_t v) {
  v ^= rotr(v, 25) ^ rotr(v, 50);
  v *= 0xA24BAED4963EE407ULL;
  v ^= rotr(v, 24) ^ rotr(v, 49);
  v *= 0x9FB21C651E98DF25ULL;
  return v ^ (v >> 28);
}

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

typedef struct {
  int num_nodes;
  redisContext* nodes[MAX_NODES];
  int64_t num_partitions;
  int* partition_node; /* (num_partitions) index into nodes */
  char** hash_names;   /* (num_partitions) "hps_et{<tag>/p<p>}v" */
  size_t* hash_lens;   /* (num_partitions) */
  int64_t dim;
  /* Scratch, sized for the batch once. */
  int64_t slot_mask;     /* capacity - 1 of the distinct-key table (a power of two >= 2n) */
  int64_t* slot;         /* (capacity) 1 + index into distinct, 0 = empty */
  int64_t* distinct;     /* (n) the batch's distinct keys, in first-seen order */
  int64_t* inverse;      /* (n) index into distinct of each position */
  float* distinct_values; /* (n, dim) */
  uint8_t* distinct_found; /* (n) */
  int64_t* begin;        /* (num_partitions + 1) start of each partition in order */
  int64_t* next;         /* (num_partitions) */
  int64_t* order;        /* (n) batch positions grouped by partition */
  int64_t* partition;    /* (n) partition of each position */
  const char** argv;     /* (n + 2 * num_partitions) */
  size_t* argvlen;       /* (n + 2 * num_partitions) */
} Fetcher;

/* One fetch of n distinct keys into values (n, dim) float32; sets found (n). Returns hits. */
static int64_t fetch_distinct(Fetcher* f, int64_t n, const int64_t* keys, float* values, uint8_t* found) {
  const int64_t P = f->num_partitions;
  const size_t row_bytes = (size_t)f->dim * sizeof(float);
  memset(f->begin, 0, (size_t)(P + 1) * sizeof(int64_t));
  for (int64_t i = 0; i < n; ++i) {
    f->partition[i] = (int64_t)(mix_key((uint64_t)keys[i]) % (uint64_t)P);
    ++f->begin[f->partition[i] + 1];
  }
  for (int64_t p = 0; p < P; ++p) f->begin[p + 1] += f->begin[p];
  memcpy(f->next, f->begin, (size_t)P * sizeof(int64_t));
  for (int64_t i = 0; i < n; ++i) f->order[f->next[f->partition[i]]++] = i;

  /* Append one HMGET per non-empty partition; fields point at the keys' own bytes. */
  size_t arg = 0;
  for (int64_t p = 0; p < P; ++p) {
    const int64_t count = f->begin[p + 1] - f->begin[p];
    if (count == 0) continue;
    const char** argv = f->argv + arg;
    size_t* argvlen = f->argvlen + arg;
    argv[0] = "HMGET";
    argvlen[0] = 5;
    argv[1] = f->hash_names[p];
    argvlen[1] = f->hash_lens[p];
    for (int64_t j = 0; j < count; ++j) {
      argv[2 + j] = (const char*)(keys + f->order[f->begin[p] + j]);
      argvlen[2 + j] = 8;
    }
    if (redisAppendCommandArgv(f->nodes[f->partition_node[p]], (int)(count + 2), argv, argvlen) != REDIS_OK)
      die("redisAppendCommandArgv failed");
    arg += (size_t)(count + 2);
  }
  /* Send everything to every node before reading any reply, so the nodes work at the same time. */
  for (int k = 0; k < f->num_nodes; ++k) {
    int done = 0;
    while (!done)
      if (redisBufferWrite(f->nodes[k], &done) != REDIS_OK) die("redisBufferWrite failed");
  }

  int64_t hits = 0;
  for (int64_t p = 0; p < P; ++p) {
    const int64_t count = f->begin[p + 1] - f->begin[p];
    if (count == 0) continue;
    redisReply* reply = NULL;
    if (redisGetReply(f->nodes[f->partition_node[p]], (void**)&reply) != REDIS_OK || reply == NULL)
      die("redisGetReply failed");
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != (size_t)count) die("unexpected HMGET reply");
    for (int64_t j = 0; j < count; ++j) {
      const int64_t i = f->order[f->begin[p] + j];
      const redisReply* element = reply->element[j];
      if (element->type == REDIS_REPLY_STRING && element->len == row_bytes) {
        memcpy(values + i * f->dim, element->str, row_bytes);
        found[i] = 1;
        ++hits;
      } else {
        memset(values + i * f->dim, 0, row_bytes);
        found[i] = 0;
      }
    }
    freeReplyObject(reply);
  }
  return hits;
}

/* One fetch of n keys, repeats included, into values (n, dim); sets found (n). Returns the
 * distinct keys found. */
static int64_t fetch(Fetcher* f, int64_t n, const int64_t* keys, float* values, uint8_t* found) {
  memset(f->slot, 0, (size_t)(f->slot_mask + 1) * sizeof(int64_t));
  int64_t u = 0;
  for (int64_t i = 0; i < n; ++i) {
    int64_t s = (int64_t)(mix_key((uint64_t)keys[i]) & (uint64_t)f->slot_mask);
    while (f->slot[s] != 0 && f->distinct[f->slot[s] - 1] != keys[i]) s = (s + 1) & f->slot_mask;
    if (f->slot[s] == 0) {
      f->distinct[u] = keys[i];
      f->slot[s] = ++u;
    }
    f->inverse[i] = f->slot[s] - 1;
  }
  const int64_t hits = fetch_distinct(f, u, f->distinct, f->distinct_values, f->distinct_found);
  const size_t row_bytes = (size_t)f->dim * sizeof(float);
  for (int64_t i = 0; i < n; ++i) {
    memcpy(values + i * f->dim, f->distinct_values + f->inverse[i] * f->dim, row_bytes);
    found[i] = f->distinct_found[f->inverse[i]];
  }
  return hits;
}

int main(int argc, char** argv) {
  const char *nodes_arg = NULL, *partition_nodes_arg = NULL, *tag = NULL, *keys_path = NULL, *dump_path = NULL;
  int64_t dim = 0;
  int repeats = 7;
  double min_time = 0.02;
  for (int a = 1; a + 1 < argc; a += 2) {
    if (!strcmp(argv[a], "--nodes")) nodes_arg = argv[a + 1];
    else if (!strcmp(argv[a], "--partition-nodes")) partition_nodes_arg = argv[a + 1];
    else if (!strcmp(argv[a], "--tag")) tag = argv[a + 1];
    else if (!strcmp(argv[a], "--dim")) dim = strtoll(argv[a + 1], NULL, 10);
    else if (!strcmp(argv[a], "--keys")) keys_path = argv[a + 1];
    else if (!strcmp(argv[a], "--repeats")) repeats = atoi(argv[a + 1]);
    else if (!strcmp(argv[a], "--min-time")) min_time = atof(argv[a + 1]);
    else if (!strcmp(argv[a], "--dump")) dump_path = argv[a + 1];
    else die("unknown option (see the comment at the top of hiredis_hmget.c)");
  }
  if (!nodes_arg || !partition_nodes_arg || !tag || !keys_path || dim < 1 || repeats < 1)
    die("need --nodes, --partition-nodes, --tag, --dim >= 1 and --keys");

  Fetcher f;
  memset(&f, 0, sizeof f);
  f.dim = dim;

  /* Nodes. */
  char* nodes = strdup(nodes_arg);
  for (char* save = NULL, *item = strtok_r(nodes, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
    if (f.num_nodes == MAX_NODES) die("too many nodes");
    char* colon = strrchr(item, ':');
    if (!colon) die("a node must be host:port");
    *colon = '\0';
    redisContext* c = redisConnect(item, atoi(colon + 1));
    if (c == NULL || c->err) die("cannot connect to a node");
    f.nodes[f.num_nodes++] = c;
  }

  /* Partitions and their hash names. */
  f.num_partitions = 1;
  for (const char* s = partition_nodes_arg; *s; ++s) f.num_partitions += (*s == ',');
  f.partition_node = calloc((size_t)f.num_partitions, sizeof(int));
  f.hash_names = calloc((size_t)f.num_partitions, sizeof(char*));
  f.hash_lens = calloc((size_t)f.num_partitions, sizeof(size_t));
  const char* s = partition_nodes_arg;
  for (int64_t p = 0; p < f.num_partitions; ++p) {
    char* end;
    f.partition_node[p] = (int)strtol(s, &end, 10);
    if (f.partition_node[p] < 0 || f.partition_node[p] >= f.num_nodes) die("--partition-nodes names a missing node");
    s = *end ? end + 1 : end;
    const size_t len = strlen(tag) + 48;
    f.hash_names[p] = malloc(len);
    f.hash_lens[p] = (size_t)snprintf(f.hash_names[p], len, "hps_et{%s/p%lld}v", tag, (long long)p);
  }

  /* Keys. */
  FILE* in = fopen(keys_path, "rb");
  if (!in) die("cannot open --keys");
  fseek(in, 0, SEEK_END);
  const int64_t n = ftell(in) / (int64_t)sizeof(int64_t);
  fseek(in, 0, SEEK_SET);
  int64_t* keys = malloc((size_t)n * sizeof(int64_t));
  if (n < 1 || fread(keys, sizeof(int64_t), (size_t)n, in) != (size_t)n) die("cannot read --keys");
  fclose(in);

  f.begin = malloc((size_t)(f.num_partitions + 1) * sizeof(int64_t));
  f.next = malloc((size_t)f.num_partitions * sizeof(int64_t));
  f.order = malloc((size_t)n * sizeof(int64_t));
  f.partition = malloc((size_t)n * sizeof(int64_t));
  f.argv = malloc((size_t)(n + 2 * f.num_partitions) * sizeof(char*));
  f.argvlen = malloc((size_t)(n + 2 * f.num_partitions) * sizeof(size_t));
  int64_t capacity = 1;
  while (capacity < 2 * n) capacity *= 2;
  f.slot_mask = capacity - 1;
  f.slot = malloc((size_t)capacity * sizeof(int64_t));
  f.distinct = malloc((size_t)n * sizeof(int64_t));
  f.inverse = malloc((size_t)n * sizeof(int64_t));
  f.distinct_values = malloc((size_t)n * (size_t)dim * sizeof(float));
  f.distinct_found = malloc((size_t)n);
  float* values = malloc((size_t)n * (size_t)dim * sizeof(float));
  uint8_t* found = malloc((size_t)n);

  /* Warm-up fetch, also the one checked by the caller, then calibrate: a
   * repeat runs enough fetches to last at least min_time seconds. */
  double start = now_s();
  fetch(&f, n, keys, values, found);
  const double once = now_s() - start;
  if (dump_path) {
    FILE* out = fopen(dump_path, "wb");
    if (!out || fwrite(values, sizeof(float), (size_t)(n * dim), out) != (size_t)(n * dim) ||
        fwrite(found, 1, (size_t)n, out) != (size_t)n || fclose(out) != 0)
      die("cannot write --dump");
  }
  start = now_s();
  fetch(&f, n, keys, values, found);
  const double second = now_s() - start;
  const double single = second < once ? second : once;
  int inner = single > 0 ? (int)(min_time / single) + 1 : 1;
  if (inner < 1) inner = 1;

  double* times = malloc((size_t)repeats * sizeof(double));
  for (int r = 0; r < repeats; ++r) {
    start = now_s();
    for (int k = 0; k < inner; ++k) fetch(&f, n, keys, values, found);
    times[r] = (now_s() - start) / inner;
  }

  printf("{\"hiredis\": \"%d.%d.%d\", \"keys\": %lld, \"inner\": %d, \"times_s\": [", HIREDIS_MAJOR, HIREDIS_MINOR,
         HIREDIS_PATCH, (long long)n, inner);
  for (int r = 0; r < repeats; ++r) printf("%s%.9f", r ? ", " : "", times[r]);
  printf("]}\n");

  for (int k = 0; k < f.num_nodes; ++k) redisFree(f.nodes[k]);
  return 0;
}
