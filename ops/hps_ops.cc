// Registrations and shape functions of the tf_hps ops. Kernels live in
// hps_kernels.cc. Every op is stateful: its result depends on the parameter
// server's contents, so graphs must never constant-fold or merge it.
#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "base/log.h"
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/port.h"

namespace tf_hps {

using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

REGISTER_OP("TfHpsParseConfig")
    .Input("config_file: string")
    .Output("canonical_config: string")
    .Output("warnings: string")
    .SetIsStateful()
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle unused;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 0, &unused));
      c->set_output(0, c->Scalar());
      c->set_output(1, c->Vector(InferenceContext::kUnknownDim));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Parses and validates an HPS JSON config file.

config_file: path of the JSON file; relative table paths resolve against its folder.
canonical_config: the config as self-contained JSON: every key, defaults filled in, absolute paths.
warnings: one message per ignored unknown key.
)doc");

REGISTER_OP("TfHpsInit")
    .Output("ps_handle: string")
    .Attr("ps_config: string = ''")
    .Attr("global_batch_size: int >= 1 = 1")
    .Attr("ps_config_file: string = ''")
    .Attr("model_name: string = ''")
    .Attr("traced_in: string = ''")
    .Attr("bind: bool = false")
    .SetIsStateful()
    .SetShapeFn(::tensorflow::shape_inference::ScalarShape)
    .Doc(R"doc(
Finds (or creates, once per process and config, loading its tables) the parameter server that serves
model_name, and outputs its handle. Which config serves (docs/config.md, "Which config serves a layer"):

- In the process that traced the op (traced_in is this process's token): the server hps.Init read
  from ps_config_file, if it did; else ps_config; else ps_config_file, read now; with neither
  (a layer without a config), the server hps.Init bound for model_name.
- In another process (a SavedModel served elsewhere): the server hps.Init bound for model_name,
  if it did; else ps_config; else ps_config_file, read now.
- Neither: FailedPrecondition. Two configs loaded by hps.Init that both name model_name:
  FailedPrecondition naming both files.

bind (hps.Init): creates the server of ps_config and binds it, for ps_config_file, to every model
it names.

ps_config: canonical config JSON, as produced by TfHpsParseConfig; may be empty.
ps_config_file: the config file the layer was given (absolute); may be empty.
model_name: the model the layer reads.
traced_in: the token (TfHpsProcessToken) of the process that traced the op.
ps_handle: names the parameter server for TfHpsLookup.
)doc");

REGISTER_OP("TfHpsProcessToken")
    .Output("token: string")
    .SetIsStateful()
    .SetShapeFn(::tensorflow::shape_inference::ScalarShape)
    .Doc(R"doc(
A random id of this process: TfHpsInit's traced_in, which tells a graph traced here from an export.
)doc");

REGISTER_OP("TfHpsLookup")
    .Input("keys: Tkeys")
    .Input("ps_handle: string")
    .Output("embeddings: float")
    .Attr("model_name: string")
    .Attr("table_id: int >= 0")
    .Attr("emb_vec_size: int >= 1")
    .Attr("Tkeys: {int32, int64}")
    .SetIsStateful()
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle unused, out;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 0, &unused));
      int64_t dim = 0;
      TF_RETURN_IF_ERROR(c->GetAttr("emb_vec_size", &dim));
      TF_RETURN_IF_ERROR(c->Concatenate(c->input(0), c->Vector(dim), &out));
      c->set_output(0, out);
      return absl::OkStatus();
    })
    .Doc(R"doc(
Looks up embedding rows: every key of any shape gets its table row (or the table's default).

keys: int32 or int64 keys, any shape.
embeddings: float32, keys.shape + [emb_vec_size].
)doc");

REGISTER_OP("TfHpsFusedLookup")
    .Input("keys: N * Tkeys")
    .Input("ps_handle: string")
    .Output("embeddings: N * float")
    .Attr("model_name: string")
    .Attr("table_ids: list(int) >= 1")
    .Attr("emb_vec_sizes: list(int) >= 1")
    .Attr("N: int >= 1")
    .Attr("Tkeys: {int32, int64}")
    .SetIsStateful()
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle unused, out;
      int64_t n = 0;
      TF_RETURN_IF_ERROR(c->GetAttr("N", &n));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(n), 0, &unused));
      std::vector<int64_t> table_ids, dims;
      TF_RETURN_IF_ERROR(c->GetAttr("table_ids", &table_ids));
      TF_RETURN_IF_ERROR(c->GetAttr("emb_vec_sizes", &dims));
      if (static_cast<int64_t>(table_ids.size()) != n || static_cast<int64_t>(dims.size()) != n)
        return absl::InvalidArgumentError("TfHpsFusedLookup: table_ids and emb_vec_sizes need one entry per keys "
                                          "tensor (" + std::to_string(n) + "), got " +
                                          std::to_string(table_ids.size()) + " and " + std::to_string(dims.size()));
      for (int64_t i = 0; i < n; ++i) {
        if (table_ids[i] < 0 || dims[i] < 1)
          return absl::InvalidArgumentError("TfHpsFusedLookup: table_ids must be >= 0 and emb_vec_sizes >= 1");
        TF_RETURN_IF_ERROR(c->Concatenate(c->input(i), c->Vector(dims[i]), &out));
        c->set_output(i, out);
      }
      return absl::OkStatus();
    })
    .Doc(R"doc(
Looks up embedding rows of several tables of one model in one op: keys[i] of any shape gets the rows
of table table_ids[i], as TfHpsLookup would. Where the config fuses the model's tables
(fuse_embedding_table), the L1 probes of all of them are one pass.

keys: int32 or int64 keys, any shape, one tensor per table.
embeddings: float32, keys[i].shape + [emb_vec_sizes[i]].
)doc");

// TfHpsSparseLookup and TfHpsWeightedSparseLookup: keys and segment_ids (nnz), num_rows and
// ps_handle scalars, output (num_rows, emb_vec_size).
absl::Status SparseLookupShape(InferenceContext* c) {
  ShapeHandle keys, segments, unused;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 1, &keys));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &segments));
  TF_RETURN_IF_ERROR(c->Merge(keys, segments, &keys));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 0, &unused));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 0, &unused));
  ::tensorflow::shape_inference::DimensionHandle rows;
  TF_RETURN_IF_ERROR(c->MakeDimForScalarInput(2, &rows));
  int64_t dim = 0;
  TF_RETURN_IF_ERROR(c->GetAttr("emb_vec_size", &dim));
  c->set_output(0, c->Matrix(rows, dim));
  return absl::OkStatus();
}

REGISTER_OP("TfHpsSparseLookup")
    .Input("keys: Tkeys")
    .Input("segment_ids: Tsegments")
    .Input("num_rows: int64")
    .Input("ps_handle: string")
    .Output("embeddings: dtype")
    .Attr("model_name: string")
    .Attr("table_id: int >= 0")
    .Attr("emb_vec_size: int >= 1")
    .Attr("combiner: {'sum', 'mean', 'sqrtn'} = 'mean'")
    .Attr("dtype: {float, half, bfloat16} = DT_FLOAT")
    .Attr("Tkeys: {int32, int64}")
    .Attr("Tsegments: {int32, int64} = DT_INT64")
    .SetIsStateful()
    .SetShapeFn(SparseLookupShape)
    .Doc(R"doc(
Looks up and combines the rows of a ragged batch of keys, like tf.nn.embedding_lookup_sparse
without weights, bit for bit.

Each distinct key is looked up once; output row r combines the rows of the keys whose
segment id is r, in their input order and in the order of TF's tf.sparse.segment_sum,
segment_mean and segment_sqrt_n kernels: sum, mean (sum / n) or sqrtn (sum / sqrt(n)) of
the row's n keys; a row with no keys is zeros. Rows are combined in float32 and converted
to dtype once. (With weights or max_norm: TfHpsWeightedSparseLookup.)

keys: int32 or int64 keys, (nnz).
segment_ids: the output row of each key, (nnz), in [0, num_rows); need not be sorted.
num_rows: number of output rows (a SparseTensor's dense_shape[0]), scalar >= 0.
embeddings: (num_rows, emb_vec_size) of dtype.
combiner: 'sum', 'mean' or 'sqrtn'.
)doc");

REGISTER_OP("TfHpsWeightedSparseLookup")
    .Input("keys: Tkeys")
    .Input("segment_ids: Tsegments")
    .Input("num_rows: int64")
    .Input("ps_handle: string")
    .Input("weights: float")
    .Input("divisor_weights: float")
    .Input("max_norm: float")
    .Output("embeddings: dtype")
    .Attr("model_name: string")
    .Attr("table_id: int >= 0")
    .Attr("emb_vec_size: int >= 1")
    .Attr("combiner: {'sum', 'mean', 'sqrtn'} = 'mean'")
    .Attr("weighted: bool")
    .Attr("clip: bool")
    .Attr("lanes: int = 8")
    .Attr("dtype: {float, half, bfloat16} = DT_FLOAT")
    .Attr("Tkeys: {int32, int64}")
    .Attr("Tsegments: {int32, int64} = DT_INT64")
    .SetIsStateful()
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle unused;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(4), 1, &unused));  // weights
      TF_RETURN_IF_ERROR(c->WithRank(c->input(5), 1, &unused));  // divisor_weights
      TF_RETURN_IF_ERROR(c->WithRank(c->input(6), 0, &unused));  // max_norm
      return SparseLookupShape(c);
    })
    .Doc(R"doc(
TfHpsSparseLookup with weights and/or max_norm, like tf.nn.embedding_lookup_sparse, bit for bit.

Each distinct key is looked up once and, with clip, clipped once as tf.clip_by_norm does.
Without weights, rows combine as in TfHpsSparseLookup. With weights, output row r is the
segment_sum of row * weight over its keys in input order, then for 'mean' divided by the sum of
divisor_weights and for 'sqrtn' by the square root of their sum (0 where the divisor is 0), in
the order of TF's Eigen reductions for a float packet width of `lanes` (ops/sparse_combine.h).

weights: a float32 weight per key (nnz) when weighted, else ignored (may be empty).
divisor_weights: per key, what 'mean' sums (the weights) or 'sqrtn' sums (the squared weights,
  as the caller's TF computes them); ignored for 'sum' and without weights.
max_norm: the clip norm (float32, already >= 0) when clip, else ignored.
lanes: the float packet width (4, 8 or 16) of the TensorFlow build whose bits to match.
)doc");

REGISTER_OP("TfHpsRefresh")
    .Output("rows_refreshed: int64")
    .Attr("model_name: string = ''")
    .SetIsStateful()
    .SetShapeFn(::tensorflow::shape_inference::ScalarShape)
    .Doc(R"doc(
Re-reads every row cached in L1 from the databases, in every parameter server of this process.

model_name: only this model's tables; empty for all.
rows_refreshed: rows re-read and written into the caches.
)doc");

REGISTER_OP("TfHpsStats")
    .Output("stats: string")
    .SetIsStateful()
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->Vector(InferenceContext::kUnknownDim));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Counters of every table of every parameter server in this process.

stats: one JSON object per parameter server, {"<table tag>": {"lookups": n, ...}}.
)doc");

namespace {

// One library to load (TF Serving, a C++ loader, tf.load_op_library): when this library loads into a
// TensorFlow built with CUDA on a machine with a CUDA driver, it loads the GPU kernels of its ops
// itself, from _tf_hps_ops_gpu.so beside it (which links against this library, found the same way).
// TF_HPS_GPU_KERNELS=0 never loads them, =1 loads them whenever the file is there. A library that
// will not load only warns: the CPU kernels serve every lookup. Defined last in this file, so the
// ops above are registered by then.
struct GpuKernelLoader {
  GpuKernelLoader() {
    const char* setting = std::getenv("TF_HPS_GPU_KERNELS");
    const std::string mode = setting == nullptr ? "" : setting;
    if (mode == "0") return;
    if (mode != "1") {
      if (!::tensorflow::IsGoogleCudaEnabled()) return;  // tensorflow-cpu
      void* driver = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
      if (driver == nullptr) return;  // no CUDA driver: no GPU to run them on
      dlclose(driver);
    }
    Dl_info self;
    if (dladdr(reinterpret_cast<void*>(&Marker), &self) == 0 || self.dli_fname == nullptr) return;
    std::string path = self.dli_fname;
    path = path.substr(0, path.find_last_of('/') + 1) + "_tf_hps_ops_gpu.so";
    if (access(path.c_str(), R_OK) != 0) return;  // built without `make gpu`
    if (dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL) == nullptr) {
      const char* why = dlerror();
      Log(LogLevel::kWarning, "could not load the GPU kernels from " + path + " (" + (why ? why : "unknown") +
                                  "); lookups run on the CPU kernels (TF_HPS_GPU_KERNELS=0 skips them)");
    }
  }
  static void Marker() {}
};

const GpuKernelLoader gpu_kernel_loader;

}  // namespace

}  // namespace tf_hps
