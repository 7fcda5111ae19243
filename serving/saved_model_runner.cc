// saved_model_runner: serves one SavedModel signature through TensorFlow's
// C++ loader (LoadSavedModel + Session::Run, the path TF Serving takes),
// with inputs and outputs as .npy files and no Python involved.
//
//   saved_model_runner [--op_library=PATH ...] --saved_model=DIR
//       [--signature=serving_default] --input=NAME=FILE.npy ...
//       --output_dir=DIR [--threads=N] [--iterations=M]
//
// The first Session::Run result is written to <output_dir>/<output_key>.npy.
// With --threads/--iterations, N threads then make M further calls each,
// concurrently, and every result must be bitwise equal to the first one.
//
// Exit status: 0 success; 1 model load/run failure or result mismatch;
// 2 bad command line, op library, input file, or input/signature mismatch.
// TensorFlow's own INFO logging is quieted with TF_CPP_MIN_LOG_LEVEL=1.

#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_set>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "tensorflow/cc/saved_model/loader.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/framework/types.h"
#include "tensorflow/core/public/session.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "the .npy reader and writer assume a little-endian host");

namespace {

using tensorflow::DataType;
using tensorflow::Tensor;

// The MetaGraph tag TF Serving loads (tag_constants.h is not in the pip wheel).
constexpr char kServeTag[] = "serve";

constexpr char kUsage[] =
    "usage: saved_model_runner [--op_library=PATH ...] --saved_model=DIR\n"
    "           [--signature=serving_default] --input=NAME=FILE.npy ...\n"
    "           --output_dir=DIR [--threads=N] [--iterations=M]\n";

// An error message together with the exit status it should produce.
struct Failure {
  int exit_code = 0;
  std::string message;
  bool failed() const { return exit_code != 0; }
};

Failure Fail(int exit_code, std::string message) {
  return {exit_code, std::move(message)};
}

// ------------------------------------------------------------------ .npy ---

// The element types understood in .npy files, keyed by numpy's dtype.descr.
struct NpyType {
  const char* descr;
  DataType dtype;
  size_t size;
};

constexpr NpyType kNpyTypes[] = {
    {"<f4", tensorflow::DT_FLOAT, 4}, {"<f8", tensorflow::DT_DOUBLE, 8},
    {"<f2", tensorflow::DT_HALF, 2},  {"<i4", tensorflow::DT_INT32, 4},
    {"<i8", tensorflow::DT_INT64, 8}, {"|i1", tensorflow::DT_INT8, 1},
    {"|u1", tensorflow::DT_UINT8, 1}, {"|b1", tensorflow::DT_BOOL, 1},
};

const NpyType* NpyTypeByDescr(const std::string& descr) {
  for (const auto& t : kNpyTypes)
    if (descr == t.descr) return &t;
  return nullptr;
}

const NpyType* NpyTypeByDtype(DataType dtype) {
  for (const auto& t : kNpyTypes)
    if (dtype == t.dtype) return &t;
  return nullptr;
}

constexpr char kNpyMagic[] = "\x93NUMPY";  // followed by major, minor version

// Returns the text following `'key':` in a .npy header dict, or "" if absent.
std::string NpyHeaderField(const std::string& header, const std::string& key) {
  for (const char quote : {'\'', '"'}) {
    const std::string token = std::string(1, quote) + key + quote;
    size_t pos = header.find(token);
    if (pos == std::string::npos) continue;
    pos = header.find(':', pos + token.size());
    if (pos == std::string::npos) return "";
    pos = header.find_first_not_of(' ', pos + 1);
    return pos == std::string::npos ? "" : header.substr(pos);
  }
  return "";
}

// Parses "(2, 3)", "(5,)" or "()" at the start of `text`.
bool ParseShape(const std::string& text, std::vector<int64_t>* dims) {
  if (text.empty() || text[0] != '(') return false;
  const size_t end = text.find(')');
  if (end == std::string::npos) return false;
  std::stringstream items(text.substr(1, end - 1));
  std::string item;
  while (std::getline(items, item, ',')) {
    const size_t first = item.find_first_not_of(' ');
    if (first == std::string::npos) continue;  // the trailing "5," case
    char* rest = nullptr;
    const long long value = std::strtoll(item.c_str() + first, &rest, 10);
    if (rest == item.c_str() + first || value < 0) return false;
    if (rest[std::strspn(rest, " L")] != '\0') return false;
    dims->push_back(value);
  }
  return true;
}

// Reads a C-order, little-endian .npy file (format version 1, 2 or 3).
Failure ReadNpy(const std::string& path, Tensor* out) {
  std::ifstream file(path, std::ios::binary);
  if (!file) return Fail(2, absl::StrCat("cannot open ", path));
  const std::string bytes((std::istreambuf_iterator<char>(file)),
                          std::istreambuf_iterator<char>());
  const auto bad = [&](const std::string& why) {
    return Fail(2, absl::StrCat(path, ": not a supported .npy file: ", why));
  };

  if (bytes.size() < 10 || bytes.compare(0, 6, kNpyMagic) != 0)
    return bad("missing \\x93NUMPY magic");
  const auto byte = [&](size_t i) { return static_cast<uint8_t>(bytes[i]); };
  const int major = byte(6);
  size_t header_len = 0, header_start = 0;
  if (major == 1) {
    header_len = byte(8) | (byte(9) << 8);
    header_start = 10;
  } else if ((major == 2 || major == 3) && bytes.size() >= 12) {
    header_len = byte(8) | (byte(9) << 8) | (byte(10) << 16) |
                 (static_cast<size_t>(byte(11)) << 24);
    header_start = 12;
  } else {
    return bad(absl::StrCat("format version ", major));
  }
  if (bytes.size() < header_start + header_len) return bad("truncated header");
  const std::string header = bytes.substr(header_start, header_len);

  // descr: a quoted string such as '<i8'.
  const std::string descr_field = NpyHeaderField(header, "descr");
  const size_t descr_end =
      descr_field.empty() ? std::string::npos : descr_field.find(descr_field[0], 1);
  if (descr_end == std::string::npos) return bad("no 'descr' in header");
  const std::string descr = descr_field.substr(1, descr_end - 1);
  const NpyType* type = NpyTypeByDescr(descr);
  if (type == nullptr)
    return bad(absl::StrCat("dtype '", descr,
                            "' (supported: <i4 <i8 <f4 <f8 <f2 |i1 |u1 |b1)"));

  if (NpyHeaderField(header, "fortran_order").rfind("False", 0) != 0)
    return bad("only C order (fortran_order False) is supported");

  std::vector<int64_t> dims;
  if (!ParseShape(NpyHeaderField(header, "shape"), &dims))
    return bad("cannot parse 'shape' in header");
  tensorflow::TensorShape shape;
  const absl::Status shape_status =
      tensorflow::TensorShape::BuildTensorShape(dims, &shape);
  if (!shape_status.ok()) return bad(std::string(shape_status.message()));

  const size_t data_start = header_start + header_len;
  uint64_t want = 0;
  if (__builtin_mul_overflow(static_cast<uint64_t>(shape.num_elements()), static_cast<uint64_t>(type->size), &want))
    return bad(absl::StrCat("shape ", shape.DebugString(), " holds more bytes than a file can"));
  if (bytes.size() - data_start != want)
    return bad(absl::StrCat("expected ", want, " data bytes for shape ",
                            shape.DebugString(), ", found ",
                            bytes.size() - data_start));

  *out = Tensor(type->dtype, shape);
  if (want > 0) std::memcpy(out->data(), bytes.data() + data_start, want);
  return {};
}

// Writes a tensor as a version 1.0 .npy file (version 2.0 for huge shapes).
Failure WriteNpy(const std::string& path, const Tensor& tensor) {
  const NpyType* type = NpyTypeByDtype(tensor.dtype());
  if (type == nullptr)
    return Fail(1, absl::StrCat("cannot write dtype ",
                                tensorflow::DataTypeString(tensor.dtype()),
                                " as .npy (", path, ")"));
  std::string shape = "(";
  for (int i = 0; i < tensor.dims(); ++i)
    absl::StrAppend(&shape, tensor.dim_size(i), tensor.dims() == 1 ? "," : "",
                    i + 1 < tensor.dims() ? ", " : "");
  shape += ")";
  std::string header = absl::StrCat("{'descr': '", type->descr,
                                    "', 'fortran_order': False, 'shape': ",
                                    shape, ", }");

  // The header is space-padded so that the data starts 64-byte aligned.
  const bool v2 = 10 + header.size() + 64 > 0xffff;
  const size_t prefix = v2 ? 12 : 10;
  header.append(63 - (prefix + header.size()) % 64, ' ');
  header += '\n';

  std::string head(kNpyMagic, 6);
  head += static_cast<char>(v2 ? 2 : 1);
  head += '\0';
  const size_t n = header.size();
  head += static_cast<char>(n & 0xff);
  head += static_cast<char>((n >> 8) & 0xff);
  if (v2) {
    head += static_cast<char>((n >> 16) & 0xff);
    head += static_cast<char>((n >> 24) & 0xff);
  }

  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  const absl::string_view data = tensor.tensor_data();
  file << head << header;
  file.write(data.data(), static_cast<std::streamsize>(data.size()));
  file.close();
  if (!file) return Fail(1, absl::StrCat("cannot write ", path));
  return {};
}

// ---------------------------------------------------------- command line ---

struct Options {
  std::vector<std::string> op_libraries;
  std::string saved_model;
  std::string signature = "serving_default";
  std::vector<std::pair<std::string, std::string>> inputs;  // key, .npy path
  std::string output_dir;
  int threads = 1;
  int iterations = 1;
};

bool ParseCount(const std::string& text, int max, int* out) {
  char* rest = nullptr;
  const long value = std::strtol(text.c_str(), &rest, 10);
  if (text.empty() || *rest != '\0' || value < 1 || value > max) return false;
  *out = static_cast<int>(value);
  return true;
}

Failure ParseArgs(int argc, char** argv, Options* opts) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const size_t eq = arg.find('=');
    const std::string flag = arg.substr(0, eq);
    const std::string value = eq == std::string::npos ? "" : arg.substr(eq + 1);
    if (eq == std::string::npos || value.empty())
      return Fail(2, absl::StrCat("expected --flag=value, got '", arg, "'"));

    if (flag == "--op_library") {
      opts->op_libraries.push_back(value);
    } else if (flag == "--saved_model") {
      opts->saved_model = value;
    } else if (flag == "--signature") {
      opts->signature = value;
    } else if (flag == "--output_dir") {
      opts->output_dir = value;
    } else if (flag == "--input") {
      const size_t sep = value.find('=');
      if (sep == 0 || sep == std::string::npos || sep + 1 == value.size())
        return Fail(2, absl::StrCat("--input wants NAME=FILE.npy, got '", value, "'"));
      const std::string key = value.substr(0, sep);
      for (const auto& [seen, unused] : opts->inputs)
        if (seen == key) return Fail(2, absl::StrCat("input '", key, "' given twice"));
      opts->inputs.emplace_back(key, value.substr(sep + 1));
    } else if (flag == "--threads") {
      if (!ParseCount(value, 1024, &opts->threads))
        return Fail(2, absl::StrCat("--threads wants 1..1024, got '", value, "'"));
    } else if (flag == "--iterations") {
      if (!ParseCount(value, 1 << 30, &opts->iterations))
        return Fail(2, absl::StrCat("--iterations wants a positive count, got '", value, "'"));
    } else {
      return Fail(2, absl::StrCat("unknown flag ", flag));
    }
  }
  if (opts->saved_model.empty()) return Fail(2, "--saved_model is required");
  if (opts->output_dir.empty()) return Fail(2, "--output_dir is required");
  return {};
}

// ------------------------------------------------------------- serving ---

std::string Keys(const std::map<std::string, std::string>& map) {
  std::string keys;
  for (const auto& entry : map) absl::StrAppend(&keys, keys.empty() ? "" : ", ", entry.first);
  return keys;
}

// Maps each input key of the signature to a feed of the matching .npy data.
Failure BuildFeeds(const Options& opts, const tensorflow::SignatureDef& sig,
                   std::vector<std::pair<std::string, Tensor>>* feeds) {
  std::map<std::string, std::string> expected;  // key -> tensor name
  for (const auto& [key, info] : sig.inputs()) {
    if (info.encoding_case() != tensorflow::TensorInfo::kName)
      return Fail(2, absl::StrCat("input '", key, "' is a composite or sparse tensor"));
    expected[key] = info.name();
  }
  for (const auto& [key, path] : opts.inputs) {
    if (!expected.count(key))
      return Fail(2, absl::StrCat("signature '", opts.signature, "' has no input '",
                                  key, "' (inputs: ", Keys(expected), ")"));
  }
  for (const auto& [key, name] : expected) {
    const auto given = std::find_if(opts.inputs.begin(), opts.inputs.end(),
                                    [&](const auto& in) { return in.first == key; });
    if (given == opts.inputs.end())
      return Fail(2, absl::StrCat("missing --input for '", key, "' (inputs: ",
                                  Keys(expected), ")"));
    Tensor tensor;
    if (Failure f = ReadNpy(given->second, &tensor); f.failed()) return f;

    const tensorflow::TensorInfo& info = sig.inputs().at(key);
    if (tensor.dtype() != info.dtype())
      return Fail(2, absl::StrCat("input '", key, "' wants ",
                                  tensorflow::DataTypeString(info.dtype()), ", ",
                                  given->second, " holds ",
                                  tensorflow::DataTypeString(tensor.dtype())));
    tensorflow::PartialTensorShape want;
    if (tensorflow::PartialTensorShape::BuildPartialTensorShape(info.tensor_shape(), &want)
            .ok() &&
        !want.IsCompatibleWith(tensor.shape()))
      return Fail(2, absl::StrCat("input '", key, "' wants shape ", want.DebugString(),
                                  ", ", given->second, " has ",
                                  tensor.shape().DebugString()));
    feeds->emplace_back(name, std::move(tensor));
  }
  return {};
}

bool SameTensor(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         a.tensor_data() == b.tensor_data();
}

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

int Run(const Options& opts) {
  const auto report = [](const Failure& f) {
    std::cerr << "saved_model_runner: " << f.message << "\n";
    return f.exit_code;
  };

  // Custom ops must be registered before the graph is imported.
  for (const auto& lib : opts.op_libraries) {
    if (dlopen(lib.c_str(), RTLD_NOW | RTLD_GLOBAL) == nullptr)
      return report(Fail(2, absl::StrCat("cannot load op library ", lib, ": ", dlerror())));
  }

  const auto load_start = std::chrono::steady_clock::now();
  tensorflow::SavedModelBundle bundle;
  const absl::Status load = tensorflow::LoadSavedModel(
      tensorflow::SessionOptions(), tensorflow::RunOptions(), opts.saved_model,
      std::unordered_set<std::string>{kServeTag}, &bundle);
  if (!load.ok())
    return report(Fail(1, absl::StrCat("cannot load SavedModel ", opts.saved_model,
                                       ": ", load.ToString())));
  const double load_s = SecondsSince(load_start);

  const auto& sigs = bundle.meta_graph_def.signature_def();
  if (!sigs.count(opts.signature)) {
    std::map<std::string, std::string> names;
    for (const auto& entry : sigs) names[entry.first] = "";
    return report(Fail(2, absl::StrCat("no signature '", opts.signature,
                                       "' (signatures: ", Keys(names), ")")));
  }
  const tensorflow::SignatureDef& sig = sigs.at(opts.signature);

  std::vector<std::pair<std::string, Tensor>> feeds;
  if (Failure f = BuildFeeds(opts, sig, &feeds); f.failed()) return report(f);

  std::map<std::string, std::string> outputs_by_key;  // sorted by key
  for (const auto& [key, info] : sig.outputs()) {
    if (info.encoding_case() != tensorflow::TensorInfo::kName)
      return report(Fail(1, absl::StrCat("output '", key, "' is a composite or sparse tensor")));
    outputs_by_key[key] = info.name();
  }
  std::vector<std::string> output_keys, output_names;
  for (const auto& [key, name] : outputs_by_key) {
    output_keys.push_back(key);
    output_names.push_back(name);
  }
  if (output_names.empty()) return report(Fail(1, "the signature has no outputs"));

  // The reference call; its outputs are the ones written out.
  const auto run_start = std::chrono::steady_clock::now();
  std::vector<Tensor> reference;
  const absl::Status first = bundle.session->Run(feeds, output_names, {}, &reference);
  if (!first.ok())
    return report(Fail(1, absl::StrCat("Session::Run failed: ", first.ToString())));

  std::error_code ec;
  std::filesystem::create_directories(opts.output_dir, ec);
  if (ec)
    return report(Fail(1, absl::StrCat("cannot create ", opts.output_dir, ": ", ec.message())));
  for (size_t i = 0; i < output_keys.size(); ++i) {
    std::string file = output_keys[i];
    std::replace(file.begin(), file.end(), '/', '_');
    const std::string path = (std::filesystem::path(opts.output_dir) / (file + ".npy")).string();
    if (Failure f = WriteNpy(path, reference[i]); f.failed()) return report(f);
    std::cout << output_keys[i] << ": " << tensorflow::DataTypeString(reference[i].dtype())
              << " " << reference[i].shape().DebugString() << " -> " << path << "\n";
  }

  // Optional concurrent phase: every result must equal the reference bitwise.
  std::atomic<int64_t> calls{1}, errors{0}, mismatches{0};
  std::mutex message_mu;
  std::string first_problem;
  const auto note = [&](const std::string& problem) {
    std::lock_guard<std::mutex> lock(message_mu);
    if (first_problem.empty()) first_problem = problem;
  };
  if (opts.threads > 1 || opts.iterations > 1) {
    std::vector<std::thread> workers;
    for (int t = 0; t < opts.threads; ++t) {
      workers.emplace_back([&] {
        for (int i = 0; i < opts.iterations; ++i) {
          std::vector<Tensor> outputs;
          const absl::Status s = bundle.session->Run(feeds, output_names, {}, &outputs);
          ++calls;
          if (!s.ok()) {
            ++errors;
            note(absl::StrCat("Session::Run failed: ", s.ToString()));
            continue;
          }
          for (size_t k = 0; k < reference.size(); ++k) {
            if (k >= outputs.size() || !SameTensor(outputs[k], reference[k])) {
              ++mismatches;
              note(absl::StrCat("output '", output_keys[k], "' differs from the first call"));
              break;
            }
          }
        }
      });
    }
    for (auto& worker : workers) worker.join();
  }
  const double run_s = SecondsSince(run_start);

  std::cout << "summary: calls=" << calls << " errors=" << errors
            << " mismatches=" << mismatches << " threads=" << opts.threads
            << " iterations=" << opts.iterations << " wall_s=" << run_s
            << " load_s=" << load_s << std::endl;
  if (!first_problem.empty()) return report(Fail(1, first_problem));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0) {
      std::cout << kUsage;
      return 0;
    }
  }
  Options opts;
  if (Failure f = ParseArgs(argc, argv, &opts); f.failed()) {
    std::cerr << "saved_model_runner: " << f.message << "\n" << kUsage;
    return f.exit_code;
  }
  return Run(opts);
}
