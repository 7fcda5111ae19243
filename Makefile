# tf_hps: build, demo and tests.
#   make demo   set up, build, and run the end-to-end demo on embedded defaults
#   make test   set up, build (g++ and Bazel), and run the whole test suite
#   make lib    build the op library tf_hps/_tf_hps_ops.so only
# Set-up is idempotent: Debian packages and .venv/ are installed only when missing.

SHELL := /bin/bash
MAKEFLAGS += --jobs=$(shell nproc)
PY := .venv/bin/python
BUILD := build
LIB := tf_hps/_tf_hps_ops.so
STORAGE_LIB := tf_hps/_tf_hps_storage.so

# The one source list, shared with Bazel (sources.bzl): $(call bzl_list,NAME).
bzl_list = $(shell sed -n '/^$(1) = \[/,/^]/s/^ *"\([^"]*\)",*$$/\1/p' sources.bzl)
CORE_SRCS := $(call bzl_list,HPS_CORE_SRCS)
OP_SRCS := $(call bzl_list,HPS_OP_SRCS)
CAPI_SRCS := $(call bzl_list,HPS_STORAGE_CAPI_SRCS)
HDRS := $(call bzl_list,HPS_CORE_HDRS) $(call bzl_list,HPS_OP_HDRS) $(call bzl_list,HPS_STORAGE_CAPI_HDRS)
LINKOPTS := $(call bzl_list,HPS_CORE_LINKOPTS)

CXXFLAGS := -O2 -fPIC -std=c++17 -Wall -Wno-sign-compare -Wno-deprecated-declarations -Wno-interference-size -I.

.PHONY: all setup lib demo test bazel clean

all: lib

$(BUILD)/.system.stamp: scripts/bootstrap.sh
	@scripts/bootstrap.sh system
	@mkdir -p $(BUILD) && touch $@

.venv/.requirements.stamp: requirements.txt requirements-dev.txt pyproject.toml scripts/bootstrap.sh | $(BUILD)/.system.stamp
	@scripts/bootstrap.sh venv

setup: $(BUILD)/.system.stamp .venv/.requirements.stamp

# TF's compile and link flags come from the installed wheel.
$(BUILD)/tf_flags.mk: .venv/.requirements.stamp
	@mkdir -p $(BUILD)
	@$(PY) -c 'import tensorflow as tf; \
	print("TF_CFLAGS :=", " ".join(tf.sysconfig.get_compile_flags())); \
	print("TF_LFLAGS :=", " ".join(tf.sysconfig.get_link_flags())); \
	print("TF_LIB :=", tf.sysconfig.get_lib())' 2>/dev/null > $@.tmp && mv $@.tmp $@

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

lib: setup $(LIB) $(STORAGE_LIB)

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

clean:
	rm -rf $(BUILD) tf_hps/_tf_hps_*.so

# ---------------------------------------------------------------------------
# CUDA: the GPU embedding cache (ops/cuda/), TF-free behind a C ABI, with the
# CUDA runtime linked statically. It builds without a GPU, and `make test`
# always builds it. nvcc is the one `scripts/bootstrap.sh cuda` names: $NVCC,
# nvcc on PATH, $CUDA_HOME/bin/nvcc, else a CUDA 13 toolkit that it installs
# from PyPI wheels into build/cuda.
#   make gpu   tf_hps/_tf_hps_gpu_cache.so, plus build/libhps_cache_host.so:
#              the CPU cache behind a matching C ABI, for tests and benchmarks
GPU_CACHE_LIB := tf_hps/_tf_hps_gpu_cache.so
CACHE_HOST_LIB := $(BUILD)/libhps_cache_host.so
GPU_CACHE_SRCS := $(call bzl_list,HPS_GPU_CACHE_SRCS)
GPU_CACHE_HDRS := $(call bzl_list,HPS_GPU_CACHE_HDRS) core/slab_set.h core/key_hash.h
NVCC_FLAGS := -O3 -std=c++17 -Xcompiler -fPIC,-fvisibility=hidden -shared -I. \
	-gencode arch=compute_80,code=sm_80 -gencode 'arch=compute_90,code=[sm_90,compute_90]' \
	-cudart static -Xlinker --exclude-libs,ALL

.PHONY: gpu
gpu: $(GPU_CACHE_LIB) $(CACHE_HOST_LIB)

$(GPU_CACHE_LIB): $(GPU_CACHE_SRCS) $(GPU_CACHE_HDRS) scripts/bootstrap.sh
	@nvcc="$$(scripts/bootstrap.sh cuda)" && echo "  NVCC $@ ($$nvcc)" && \
	  "$$nvcc" $(NVCC_FLAGS) $(GPU_CACHE_SRCS) -o $@

$(CACHE_HOST_LIB): tests/cache_host_shim.cc core/embedding_cache.cc core/embedding_cache.h core/slab_set.h \
		core/key_hash.h
	@mkdir -p $(dir $@)
	@echo "  CXX $@"
	@g++ $(CXXFLAGS) -shared tests/cache_host_shim.cc core/embedding_cache.cc -o $@

test: gpu
