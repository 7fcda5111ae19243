// HPS sparse model folders: one folder per embedding table, holding
//   key        N little-endian int64 keys, no header
//   emb_vector N x D float32 values, row-major; D comes from the config
// Both files are validated against each other and against D before any row
// is read, and rows are streamed in chunks so loading needs bounded memory.
#ifndef TF_HPS_CORE_TABLE_FILE_H_
#define TF_HPS_CORE_TABLE_FILE_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace tf_hps {

struct TableFolderInfo {
  std::string key_path;
  std::string vector_path;
  int64_t num_rows = 0;
  int64_t dim = 0;
};

// Checks that `folder` holds `key` and `emb_vector` files of consistent sizes
// for vectors of `dim` floats. Throws HpsError naming the file and sizes (and,
// for a folder that does not exist, where else it was looked for: below).
TableFolderInfo InspectTableFolder(const std::string& folder, int64_t dim);

// Calls on_chunk(keys (n), vectors (n, dim), n) for consecutive chunks of at
// most `chunk_rows` rows, in file order. Host memory only.
//
// With `keys_are_32_bit` (a config with supportlonglong false), file keys
// must fit 32 bits: those in [2^31, 2^32) are the unsigned spelling of
// negative int32 keys (how TensorFlow int32 keys reach HPS) and are passed
// on as those negative values; others outside int32 throw.
using TableChunkFn = std::function<void(const int64_t* keys, const float* vectors, int64_t n)>;
void ReadTableFolder(const TableFolderInfo& info, int64_t chunk_rows, bool keys_are_32_bit,
                     const TableChunkFn& on_chunk);

// The folder's keys (converted as ReadTableFolder does), sorted. Throws
// kInvalidArgument naming a key the file holds twice and both its rows: with
// two rows for one key, which one serves would depend on what each tier saw
// last. One pass over the key file; 8 bytes of memory per row.
std::vector<int64_t> DistinctTableKeys(const TableFolderInfo& info, bool keys_are_32_bit);

// Where a config file's relative table folder was looked for, when it was in
// none of the places (config.cc: the file's folder, then the working
// directory): InspectTableFolder's "does not exist" error for `folder` (the
// path the config resolved to) then ends with `note`. Process-wide.
void NoteTableFolderSearch(const std::string& folder, const std::string& note);

}  // namespace tf_hps

#endif  // TF_HPS_CORE_TABLE_FILE_H_
