"""The one list of C++ sources of the op library.

Bazel (`BUILD`) loads this file, and the Makefile reads the quoted paths out of
it, so both builds compile exactly the same files.
"""

# TF-free C++: configuration, table files, storage backends, lookup session.
HPS_CORE_SRCS = [
    "core/config.cc",
    "core/table_file.cc",
    "core/embedding_cache.cc",
    "core/parameter_server.cc",
    "storage/hash_map_backend.cc",
]

HPS_CORE_HDRS = [
    "core/config.h",
    "core/error.h",
    "core/key_hash.h",
    "core/log.h",
    "core/table_file.h",
    "core/embedding_cache.h",
    "core/parameter_server.h",
    "storage/backend.h",
    "storage/hash_map_backend.h",
]

# TensorFlow op registrations and CPU kernels.
HPS_OP_SRCS = [
    "ops/hps_ops.cc",
    "ops/hps_kernels.cc",
]

HPS_OP_HDRS = []
