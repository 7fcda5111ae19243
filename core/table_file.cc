#include "core/table_file.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "base/error.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "table files are little-endian; this host is not");

namespace tf_hps {
namespace {

namespace fs = std::filesystem;

int64_t FileSize(const fs::path& path, const std::string& folder) {
  std::error_code ec;
  if (!fs::exists(path, ec))
    ThrowNotFound("table folder '" + folder + "' has no '" + path.filename().string() + "' file");
  if (!fs::is_regular_file(path, ec))
    ThrowInvalidArgument("table file '" + path.string() + "' is not a regular file");
  const auto size = fs::file_size(path, ec);
  if (ec) ThrowNotFound("cannot read size of table file '" + path.string() + "': " + ec.message());
  return static_cast<int64_t>(size);
}

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};
using File = std::unique_ptr<std::FILE, FileCloser>;

File Open(const std::string& path) {
  File f(std::fopen(path.c_str(), "rb"));
  if (!f) ThrowNotFound("cannot open table file '" + path + "'");
  return f;
}

void ReadExactly(std::FILE* f, void* out, size_t bytes, const std::string& path) {
  if (bytes != 0 && std::fread(out, 1, bytes, f) != bytes)
    throw HpsError(ErrorCode::kInternal, "short read from table file '" + path + "' (changed while loading?)");
}

std::mutex search_notes_mutex;
std::map<std::string, std::string>& SearchNotes() {
  static auto* notes = new std::map<std::string, std::string>();  // never destroyed
  return *notes;
}

std::string SearchNote(const std::string& folder) {
  std::lock_guard<std::mutex> lock(search_notes_mutex);
  auto it = SearchNotes().find(folder);
  return it == SearchNotes().end() ? std::string() : it->second;
}

}  // namespace

void NoteTableFolderSearch(const std::string& folder, const std::string& note) {
  std::lock_guard<std::mutex> lock(search_notes_mutex);
  SearchNotes()[folder] = note;
}

TableFolderInfo InspectTableFolder(const std::string& folder, int64_t dim) {
  std::error_code ec;
  if (!fs::exists(folder, ec)) {
    const std::string note = SearchNote(folder);
    ThrowNotFound("table folder '" + folder + "' does not exist" + (note.empty() ? "" : " (" + note + ")"));
  }
  if (!fs::is_directory(folder, ec))
    ThrowInvalidArgument("table folder '" + folder +
                         "' is a file, not a folder (sparse_files names one folder per table, holding 'key' "
                         "and 'emb_vector')");
  TableFolderInfo info;
  info.key_path = (fs::path(folder) / "key").string();
  info.vector_path = (fs::path(folder) / "emb_vector").string();
  info.dim = dim;
  const int64_t key_bytes = FileSize(info.key_path, folder);
  const int64_t vector_bytes = FileSize(info.vector_path, folder);
  if (key_bytes == 0) ThrowInvalidArgument("table file '" + info.key_path + "' is empty");
  if (key_bytes % 8 != 0)
    ThrowInvalidArgument("table file '" + info.key_path + "' has " + std::to_string(key_bytes) +
                         " bytes, not a multiple of 8 (int64 keys)");
  info.num_rows = key_bytes / 8;
  int64_t expected = 0;
  if (dim < 1 || __builtin_mul_overflow(info.num_rows, dim, &expected) ||
      __builtin_mul_overflow(expected, int64_t{4}, &expected))
    ThrowInvalidArgument("table folder '" + folder + "': " + std::to_string(info.num_rows) + " keys of dimension " +
                         std::to_string(dim) + " are more floats than a file can hold (embedding_vecsize_per_table "
                         "may be wrong)");
  if (vector_bytes != expected) {
    std::string hint;
    if (vector_bytes % (info.num_rows * 4) == 0)
      hint = "; it holds vectors of " + std::to_string(vector_bytes / (info.num_rows * 4)) +
             " floats, so embedding_vecsize_per_table may be wrong";
    ThrowInvalidArgument("table file '" + info.vector_path + "' has " + std::to_string(vector_bytes) +
                         " bytes, but " + std::to_string(info.num_rows) + " keys of dimension " +
                         std::to_string(dim) + " need " + std::to_string(expected) + hint);
  }
  return info;
}

namespace {

// File keys as the tiers store them: a 32-bit table's as int32 values (see ReadTableFolder).
void ConvertKeys(const TableFolderInfo& info, bool keys_are_32_bit, int64_t first_row, int64_t n, int64_t* keys) {
  if (!keys_are_32_bit) return;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t k = keys[i];
    if (k < INT32_MIN || k > static_cast<int64_t>(UINT32_MAX))
      ThrowInvalidArgument("table file '" + info.key_path + "': key " + std::to_string(k) + " at row " +
                           std::to_string(first_row + i) + " does not fit 32 bits, but supportlonglong is false");
    keys[i] = static_cast<int32_t>(static_cast<uint32_t>(k));
  }
}

constexpr int64_t kKeyChunkRows = 1 << 20;

}  // namespace

void ReadTableFolder(const TableFolderInfo& info, int64_t chunk_rows, bool keys_are_32_bit,
                     const TableChunkFn& on_chunk) {
  File keys_file = Open(info.key_path);
  File vectors_file = Open(info.vector_path);
  std::vector<int64_t> keys;
  std::vector<float> vectors;
  for (int64_t done = 0; done < info.num_rows;) {
    const int64_t n = std::min(chunk_rows, info.num_rows - done);
    keys.resize(n);
    vectors.resize(n * info.dim);
    ReadExactly(keys_file.get(), keys.data(), n * sizeof(int64_t), info.key_path);
    ReadExactly(vectors_file.get(), vectors.data(), n * info.dim * sizeof(float), info.vector_path);
    ConvertKeys(info, keys_are_32_bit, done, n, keys.data());
    on_chunk(keys.data(), vectors.data(), n);
    done += n;
  }
}

std::vector<int64_t> DistinctTableKeys(const TableFolderInfo& info, bool keys_are_32_bit) {
  std::vector<int64_t> keys(static_cast<size_t>(info.num_rows));
  {
    File keys_file = Open(info.key_path);
    for (int64_t done = 0; done < info.num_rows;) {
      const int64_t n = std::min(kKeyChunkRows, info.num_rows - done);
      ReadExactly(keys_file.get(), keys.data() + done, n * sizeof(int64_t), info.key_path);
      ConvertKeys(info, keys_are_32_bit, done, n, keys.data() + done);
      done += n;
    }
  }
  std::sort(keys.begin(), keys.end());
  const auto twice = std::adjacent_find(keys.begin(), keys.end());
  if (twice == keys.end()) return keys;
  // Name the rows: a second pass over the file, on the error path only.
  const int64_t key = *twice;
  std::vector<int64_t> rows, as_written;
  File keys_file = Open(info.key_path);
  std::vector<int64_t> chunk;
  for (int64_t done = 0; done < info.num_rows && rows.size() < 2;) {
    const int64_t n = std::min(kKeyChunkRows, info.num_rows - done);
    chunk.resize(n);
    ReadExactly(keys_file.get(), chunk.data(), n * sizeof(int64_t), info.key_path);
    std::vector<int64_t> raw(chunk);
    ConvertKeys(info, keys_are_32_bit, done, n, chunk.data());
    for (int64_t i = 0; i < n && rows.size() < 2; ++i) {
      if (chunk[i] != key) continue;
      rows.push_back(done + i);
      as_written.push_back(raw[i]);
    }
    done += n;
  }
  std::string message = "table file '" + info.key_path + "': key " + std::to_string(key) + " is at row " +
                        std::to_string(rows.at(0)) + " and again at row " + std::to_string(rows.at(1));
  if (as_written[0] != as_written[1])
    message += " (the file holds " + std::to_string(as_written[0]) + " and " + std::to_string(as_written[1]) +
               ", one 32-bit key, as supportlonglong is false)";
  ThrowInvalidArgument(message + "; which row would serve is undefined: keep one row per key "
                                 "(hps.save_table refuses duplicates)");
}

}  // namespace tf_hps
