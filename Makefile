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
	rm -rf $(BUILD) $(LIB)
