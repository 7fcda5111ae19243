# tf_hps: build, demo and tests.
#   make demo   set up, build, and run the end-to-end demo on embedded defaults
#   make test   set up, build (g++ and Bazel), and run the whole test suite, then the serving
#               tests again with the served side on other float kernels (test-other-kernels)
#   make lib    build the op library tf_hps/_tf_hps_ops.so only
# Set-up is idempotent: Debian packages and .venv/ are installed only when missing.

SHELL := /bin/bash
MAKEFLAGS += --jobs=$(shell nproc)
PY := .venv/bin/python
BUILD := build
# Another Python's TensorFlow to build against (setup.py, building a wheel):
#   make libs PY=/path/to/python BUILD=build/wheel-...
# then nothing is set up: that Python must have TensorFlow already.
ifeq ($(origin PY),command line)
TF_FLAGS_DEPS :=
else
TF_FLAGS_DEPS := .venv/.requirements.stamp
endif
LIB := tf_hps/_tf_hps_ops.so
STORAGE_LIB := tf_hps/_tf_hps_storage.so

# The one source list, shared with Bazel (sources.bzl): $(call bzl_list,NAME).
bzl_list = $(shell sed -n '/^$(1) = \[/,/^]/s/^ *"\([^"]*\)",*$$/\1/p' sources.bzl)
CORE_SRCS := $(call bzl_list,HPS_CORE_SRCS)
OP_SRCS := $(call bzl_list,HPS_OP_SRCS)
CAPI_SRCS := $(call bzl_list,HPS_STORAGE_CAPI_SRCS)
HDRS := $(call bzl_list,HPS_CORE_HDRS) $(call bzl_list,HPS_OP_HDRS) $(call bzl_list,HPS_STORAGE_CAPI_HDRS)
LINKOPTS := $(call bzl_list,HPS_CORE_LINKOPTS)

# -ffp-contract=off: no product and sum fused into one FMA, so the combiners
# give TF's bits (ops/sparse_combine.h) whatever -march is added.
CXXFLAGS := -O2 -fPIC -ffp-contract=off -std=c++17 -Wall -Wno-sign-compare -Wno-deprecated-declarations -Wno-interference-size -I.

.PHONY: all setup lib libs demo test bazel clean

all: lib

$(BUILD)/.system.stamp: scripts/bootstrap.sh
	@scripts/bootstrap.sh system
	@mkdir -p $(BUILD) && touch $@

.venv/.requirements.stamp: requirements.txt requirements-dev.txt pyproject.toml scripts/bootstrap.sh | $(BUILD)/.system.stamp
	@scripts/bootstrap.sh venv

setup: $(BUILD)/.system.stamp .venv/.requirements.stamp

# TF's compile and link flags come from the installed wheel.
$(BUILD)/tf_flags.mk: $(TF_FLAGS_DEPS)
	@mkdir -p $(BUILD)
	@$(PY) -c 'import tensorflow as tf; \
	print("TF_CFLAGS :=", " ".join(tf.sysconfig.get_compile_flags())); \
	print("TF_LFLAGS :=", " ".join(tf.sysconfig.get_link_flags())); \
	print("TF_LIB :=", tf.sysconfig.get_lib()); \
	print("TF_VERSION :=", tf.__version__)' 2>/dev/null > $@.tmp && mv $@.tmp $@

-include $(BUILD)/tf_flags.mk

# The core is compiled with TF's flags (ABI and alignment) and shared by both libraries.
CORE_OBJS := $(CORE_SRCS:%.cc=$(BUILD)/obj/%.o)
OP_OBJS := $(OP_SRCS:%.cc=$(BUILD)/obj/%.o)
CAPI_OBJS := $(CAPI_SRCS:%.cc=$(BUILD)/obj/%.o)

$(BUILD)/obj/%.o: %.cc $(HDRS) $(BUILD)/tf_flags.mk
	@mkdir -p $(dir $@)
	@echo "  CXX $<"
	@g++ $(CXXFLAGS) $(TF_CFLAGS) -c $< -o $@

$(LIB): $(CORE_OBJS) $(OP_OBJS)
	@echo "  LD  $@"
	@g++ -shared $^ -o $@ $(TF_LFLAGS) $(LINKOPTS)

$(STORAGE_LIB): $(CORE_OBJS) $(CAPI_OBJS)
	@echo "  LD  $@"
	@g++ -shared $^ -o $@ $(LINKOPTS) -Wl,--no-undefined

# Which TensorFlow the op library was built against: tf_hps checks it at import (tf_hps/_ops.py).
BUILD_INFO := tf_hps/_build_info.json
$(BUILD_INFO): $(BUILD)/tf_flags.mk
	@echo '{"tensorflow": "$(TF_VERSION)"}' > $@

lib: setup libs
# The libraries alone, for a Python that has TensorFlow (setup.py builds wheels with it).
libs: $(LIB) $(STORAGE_LIB) $(BUILD_INFO)

$(BUILD)/saved_model_runner: serving/saved_model_runner.cc $(BUILD)/tf_flags.mk
	@echo "  CXX $<"
	@g++ -O2 -std=c++17 -Wno-deprecated-declarations -Wno-interference-size $< -o $@ $(TF_CFLAGS) \
	  -L$(TF_LIB) -Wl,--no-as-needed -l:libtensorflow_cc.so.2 -l:libtensorflow_framework.so.2 \
	  -Wl,--as-needed -Wl,-rpath,$(TF_LIB) -ldl

bazel: setup
	@scripts/bazel_build.sh

demo: lib
	@$(PY) -m tf_hps.demo

test: lib $(BUILD)/saved_model_runner bazel
	@$(PY) -m pytest tests
	@$(MAKE) --no-print-directory test-other-kernels

# The serving tests (marker `serving`) again, their serving child processes on other float kernels
# than the test process, as on another machine: oneDNN held to SSE4.1 (other kernels than on any
# AVX2 or AVX-512 machine), and oneDNN off (Eigen's kernels).
# Lookups must still agree bit for bit, float layers within float32 rounding (tf_hps/testing.py).
SERVING_CHILD_ENVS := ONEDNN_MAX_CPU_ISA=SSE41 TF_ENABLE_ONEDNN_OPTS=0
.PHONY: test-other-kernels
test-other-kernels: lib $(BUILD)/saved_model_runner
	@for env in $(SERVING_CHILD_ENVS); do \
	  echo "serving tests, child processes with $$env:"; \
	  TF_HPS_TEST_CHILD_ENV="$$env" $(PY) -m pytest -q -m serving tests || exit 1; \
	done

clean:
	rm -rf $(BUILD) tf_hps/_tf_hps_*.so $(BUILD_INFO)

# ---------------------------------------------------------------------------
# CUDA: the GPU embedding cache, the static GPU table and the GPU lookup
# pipeline (ops/cuda/), TF-free behind C ABIs, with the CUDA runtime linked
# statically. It builds without a GPU, and `make test`
# always builds it. nvcc is the one `scripts/bootstrap.sh cuda` names: $NVCC,
# nvcc on PATH, $CUDA_HOME/bin/nvcc, else a CUDA 13 toolkit that it installs
# from PyPI wheels into build/cuda.
#   make gpu   tf_hps/_tf_hps_gpu_cache.so, plus build/libhps_cache_host.so:
#              the CPU cache behind a matching C ABI, for tests and benchmarks
GPU_CACHE_LIB := tf_hps/_tf_hps_gpu_cache.so
CACHE_HOST_LIB := $(BUILD)/libhps_cache_host.so
GPU_CACHE_SRCS := $(call bzl_list,HPS_GPU_CACHE_SRCS)
GPU_CACHE_HDRS := $(call bzl_list,HPS_GPU_CACHE_HDRS) core/slab_set.h base/key_hash.h ops/sparse_combine.h
NVCC_FLAGS := -O3 -std=c++17 -Xcompiler -fPIC,-fvisibility=hidden -shared -I. \
	-gencode arch=compute_80,code=sm_80 -gencode 'arch=compute_90,code=[sm_90,compute_90]' \
	-cudart static -Xlinker --exclude-libs,ALL

.PHONY: gpu gpu-tf-free
gpu: $(GPU_CACHE_LIB) $(CACHE_HOST_LIB)
# What a GPU machine without TensorFlow builds (scripts/device_check.sh): the
# GPU cache and lookup pipeline, and the CPU cache behind the same C ABI.
gpu-tf-free: $(GPU_CACHE_LIB) $(CACHE_HOST_LIB)

$(GPU_CACHE_LIB): $(GPU_CACHE_SRCS) $(GPU_CACHE_HDRS) scripts/bootstrap.sh
	@nvcc="$$(scripts/bootstrap.sh cuda)" && echo "  NVCC $@ ($$nvcc)" && \
	  "$$nvcc" $(NVCC_FLAGS) $(GPU_CACHE_SRCS) -o $@

$(CACHE_HOST_LIB): tests/cache_host_shim.cc core/embedding_cache.cc core/embedding_cache.h core/slab_set.h \
		base/aligned_buffer.h base/key_hash.h base/position_dedup.h base/row_copy.h base/unique_keys.cc base/unique_keys.h
	@mkdir -p $(dir $@)
	@echo "  CXX $@"
	@g++ $(CXXFLAGS) -shared tests/cache_host_shim.cc core/embedding_cache.cc base/unique_keys.cc -o $@

test: gpu

# ---------------------------------------------------------------------------
# GPU kernels of the TF op (ops/cuda/hps_gpu_kernels.cc): plain C++ compiled by
# g++ against TF's GPU-build headers (-DGOOGLE_CUDA=1). It launches no CUDA
# work and links no CUDA runtime: the device work is _tf_hps_gpu_cache.so's
# (C ABI, ops/cuda/gpu_lookup_c_api.h). It links against _tf_hps_ops.so and
# finds both libraries next to itself ($ORIGIN), so it shares the op library's
# ParameterServerRegistry instead of loading a second copy.
# TF's headers name CUDA headers third_party/gpus/cuda/include/..., which the
# pip wheel lacks: build/tf_gpu_shim maps that path onto the toolkit's include
# folder, found from the nvcc that `scripts/bootstrap.sh cuda` names (the
# TOP its --dryrun prints, which sees through wrapper scripts).
# --no-as-needed keeps both libraries NEEDED, so a missing C ABI symbol fails
# at load time naming the symbol rather than the dependency going unnoticed.
#   make gpu   also builds tf_hps/_tf_hps_ops_gpu.so
GPU_OP_LIB := tf_hps/_tf_hps_ops_gpu.so
GPU_OP_SRCS := $(call bzl_list,HPS_GPU_OP_SRCS)
TF_GPU_SHIM := $(BUILD)/tf_gpu_shim

$(GPU_OP_LIB): $(GPU_OP_SRCS) $(HDRS) ops/cuda/gpu_lookup_c_api.h $(BUILD)/tf_flags.mk $(LIB) $(GPU_CACHE_LIB) \
		scripts/bootstrap.sh
	@nvcc="$$(scripts/bootstrap.sh cuda)" && \
	  top="$$("$$nvcc" --dryrun -x cu -c /dev/null 2>&1 | sed -n 's/^#\$$ TOP=//p')" && \
	  cuda_include="$$(cd "$${top:-$$(dirname "$$nvcc")/..}/include" && pwd -P)" && \
	  mkdir -p $(TF_GPU_SHIM)/third_party/gpus/cuda && \
	  ln -sfn "$$cuda_include" $(TF_GPU_SHIM)/third_party/gpus/cuda/include && \
	  echo "  CXX $@ (CUDA headers: $$cuda_include)" && \
	  g++ $(CXXFLAGS) -shared -DGOOGLE_CUDA=1 $(TF_CFLAGS) -I$(TF_GPU_SHIM) -I"$$cuda_include" $(GPU_OP_SRCS) \
	    -o $@ -Ltf_hps -Wl,--no-as-needed -l:$(notdir $(LIB)) -l:$(notdir $(GPU_CACHE_LIB)) -Wl,--as-needed \
	    -Wl,-rpath,'$$ORIGIN' $(TF_LFLAGS)

gpu: $(GPU_OP_LIB)

# ---------------------------------------------------------------------------
# Benchmarks (benchmarks/README.md):
#   make bench         the whole suite, at most 15 minutes on 2 cores: benchmarks/results/REPORT.md, *.json, *.png
#   make bench-quick   every part at small sizes (about a minute), into build/bench-quick/
# BENCH_ARGS passes options to benchmarks/suite.py, e.g. BENCH_ARGS="--out build/bench-full" or "--no-tfra".
.PHONY: bench bench-quick
bench: lib $(CACHE_HOST_LIB)
	@$(PY) benchmarks/suite.py $(BENCH_ARGS)

bench-quick: lib $(CACHE_HOST_LIB)
	@$(PY) benchmarks/suite.py --quick $(BENCH_ARGS)

# ---------------------------------------------------------------------------
# Sanitizers: the op library built with AddressSanitizer and
# UndefinedBehaviorSanitizer from the same sources (sources.bzl), into
# build/asan/, for tests/test_sanitizers.py, which runs a set of op tests
# with it (docs/reliability.md). `make test` builds it.
#   make asan   build/asan/_tf_hps_ops.so
# Objects go to build/asan/obj/, apart from the normal ones. The library
# links the sanitizer runtimes dynamically, so a process that loads it must
# start with libasan preloaded (LD_PRELOAD=$$(gcc -print-file-name=libasan.so)).
ASAN_DIR := $(BUILD)/asan
ASAN_LIB := $(ASAN_DIR)/_tf_hps_ops.so
ASAN_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -g -O1
# Under the sanitizers GCC warns of maybe-uninitialized members inside libstdc++'s <regex>: noise.
ASAN_EXTRA := -Wno-maybe-uninitialized
ASAN_OBJS := $(CORE_SRCS:%.cc=$(ASAN_DIR)/obj/%.o) $(OP_SRCS:%.cc=$(ASAN_DIR)/obj/%.o)
# The kernels include TF's headers, whose absl hash tables compare function
# pointers with 0 in constexpr code; GCC 12's null / nonnull-attribute checks
# make that "not a constant expression". Those three checks are left out of
# the op sources only; the TF-free core gets every check.
$(OP_SRCS:%.cc=$(ASAN_DIR)/obj/%.o): ASAN_EXTRA += -fno-sanitize=null,nonnull-attribute,returns-nonnull-attribute

$(ASAN_DIR)/obj/%.o: %.cc $(HDRS) $(BUILD)/tf_flags.mk
	@mkdir -p $(dir $@)
	@echo "  CXX $< (asan+ubsan)"
	@g++ $(CXXFLAGS) $(TF_CFLAGS) $(ASAN_FLAGS) $(ASAN_EXTRA) -c $< -o $@

$(ASAN_LIB): $(ASAN_OBJS)
	@echo "  LD  $@"
	@g++ -shared $(ASAN_FLAGS) $^ -o $@ $(TF_LFLAGS) $(LINKOPTS)

.PHONY: asan
asan: setup $(ASAN_LIB)

test: asan
