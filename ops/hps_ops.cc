// Registrations and shape functions of the tf_hps ops. Kernels live in
// hps_kernels.cc. Every op is stateful: its result depends on the parameter
// server's contents, so graphs must never constant-fold or merge it.
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

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
    .Attr("ps_config: string")
    .Attr("global_batch_size: int >= 1 = 1")
    .SetIsStateful()
    .SetShapeFn(::tensorflow::shape_inference::ScalarShape)
    .Doc(R"doc(
Creates (once per process and config) the parameter server of a canonical config and loads its tables.

ps_config: canonical config JSON, as produced by TfHpsParseConfig.
ps_handle: names the parameter server for TfHpsLookup.
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

}  // namespace tf_hps
