"""The one list of C++ sources of the tf_hps libraries.

Bazel (`BUILD`) loads this file, and the Makefile reads the quoted paths and
flags out of it, so both builds compile and link exactly the same things.
Keep one entry per line.
"""

# TF-free C++, in layers that include only downwards (tests/test_build.py
# checks): base/ (errors, log, key hash, dedup) <- storage/ (the database
# backends, taking their own options) <- core/ (configuration, table files,
# cache, lookup session, online updates).
HPS_CORE_SRCS = [
    "base/unique_keys.cc",
    "storage/factory.cc",
    "storage/hash_map_backend.cc",
    "storage/redis_client.cc",
    "storage/redis_cluster_backend.cc",
    "storage/rocksdb_backend.cc",
    "core/background_worker.cc",
    "core/config.cc",
    "core/embedding_cache.cc",
    "core/parameter_server.cc",
    "core/table_file.cc",
    "core/update_consumer.cc",
    "core/update_stream.cc",
]

HPS_CORE_HDRS = [
    "base/aligned_buffer.h",
    "base/error.h",
    "base/key_hash.h",
    "base/log.h",
    "base/position_dedup.h",
    "base/row_copy.h",
    "base/unique_keys.h",
    "storage/backend.h",
    "storage/factory.h",
    "storage/hash_map_backend.h",
    "storage/layout.h",
    "storage/options.h",
    "storage/redis_client.h",
    "storage/redis_cluster_backend.h",
    "storage/rocksdb_backend.h",
    "core/background_worker.h",
    "core/config.h",
    "core/embedding_cache.h",
    "core/parameter_server.h",
    "core/scratch.h",
    "core/slab_set.h",
    "core/table_file.h",
    "core/update_consumer.h",
    "core/update_stream.h",
]

# Libraries the core links against (Debian packages). OpenSSL (libssl-dev's
# headers, libssl.so.3 at run time) is deliberately not linked but dlopen'ed
# by storage/redis_client.cc: TensorFlow's libtensorflow_framework.so.2
# exports BoringSSL under the same symbol names, and a linked -lssl -lcrypto
# would bind to those (see the TLS note there). -ldl for that dlopen.
HPS_CORE_LINKOPTS = [
    "-lhiredis",
    "-lrocksdb",
    "-ldl",
]

# TensorFlow op registrations and CPU kernels: _tf_hps_ops.so = core + these.
HPS_OP_SRCS = [
    "ops/hps_ops.cc",
    "ops/hps_kernels.cc",
]

HPS_OP_HDRS = [
    "ops/hps_kernel_common.h",
    "ops/sparse_combine.h",
]

# The tools' C ABI (tf_hps/storage.py: backends, table files, config parser,
# update publisher), the top layer beside ops/: _tf_hps_storage.so = core + these (no TF).
HPS_STORAGE_CAPI_SRCS = [
    "tools/c_api.cc",
]

HPS_STORAGE_CAPI_HDRS = [
    "tools/c_api.h",
]

# The GPU embedding cache, static table and lookup pipeline, TF-free with C
# ABIs (nvcc, static CUDA runtime):
# _tf_hps_gpu_cache.so = these; make only (`make gpu`), no Bazel rule yet.
HPS_GPU_CACHE_SRCS = [
    "ops/cuda/gpu_cache.cu",
    "ops/cuda/gpu_cache_c_api.cc",
    "ops/cuda/gpu_combine.cu",
    "ops/cuda/gpu_static_table.cu",
    "ops/cuda/gpu_lookup.cu",
    "ops/cuda/gpu_lookup_c_api.cc",
]

HPS_GPU_CACHE_HDRS = [
    "ops/cuda/gpu_cache.h",
    "ops/cuda/gpu_cache_c_api.h",
    "ops/cuda/gpu_combine.h",
    "ops/cuda/gpu_static_table.h",
    "ops/cuda/gpu_lookup.h",
    "ops/cuda/gpu_lookup_c_api.h",
]

# TensorFlow GPU kernels of TfHpsLookup (g++ with TF's GPU headers, no CUDA
# runtime): _tf_hps_ops_gpu.so = these, linked against _tf_hps_ops.so and
# _tf_hps_gpu_cache.so; make only (`make gpu`), no Bazel rule yet.
HPS_GPU_OP_SRCS = [
    "ops/cuda/hps_gpu_kernels.cc",
]
