"""Macros for the C++ targets of tf_hps; the shared compile options live here."""

# Matches the make build. The -Wno flags silence warnings that come from the
# TF/Eigen headers only (deprecated tsl names, -Winterference-size).
# -ffp-contract=off: no product and sum fused into one FMA, so the combiners
# give TF's bits (ops/sparse_combine.h) whatever -march a build adds.
_COPTS = [
    "-O2",
    "-fPIC",
    "-ffp-contract=off",
    "-Wno-deprecated-declarations",
    "-Wno-interference-size",
]

def tf_hps_cc_binary(name, copts = [], **kwargs):
    """cc_binary with the shared tf_hps compile options."""
    native.cc_binary(name = name, copts = _COPTS + copts, **kwargs)

def tf_hps_cc_library(name, copts = [], **kwargs):
    """cc_library with the shared tf_hps compile options."""
    native.cc_library(name = name, copts = _COPTS + copts, **kwargs)
