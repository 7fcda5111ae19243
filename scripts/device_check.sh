#!/usr/bin/env bash
# The GPU check, in one command, for a machine with CUDA, Python 3 with numpy and pytest, and no
# TensorFlow (benchmarks/README.md, "Device check"):
#
#   scripts/device_check.sh [OUT]        (OUT: where the figures go; default $OUT, else build/device_check)
#
# 1. builds the TF-free GPU libraries (make gpu-tf-free: the GPU cache and lookup pipeline, and the
#    CPU cache behind the same C ABI);
# 2. runs every GPU test: the GPU cache against the CPU cache on long random operation sequences,
#    the static table, the lookup pipeline with its host fetch callback, updates and refreshes
#    against queries, concurrent queries, the sparse lookup's combine against the CPU kernel's
#    order (tests/test_gpu_cache.py, tests/test_gpu_lookup.py);
# 3. runs benchmarks/gpu_cache.py and benchmarks/gpu_lookup.py;
# 4. prints one Markdown summary (also OUT/summary.md), with the GPU's name, and exits non-zero if
#    the build or a test failed.
# Without a CUDA device it builds, runs the tests that need none, and names what it did not run.
# Each step has a time limit; the whole runs in under 6 minutes on one H200.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-build/device_check}}"
mkdir -p "$out"
py="${PYTHON:-python3}"
summary="$out/summary.md"
status=0
rows=()
not_run=()

now() { date +%s; }
row() { rows+=("| $1 | $2 | $3 |"); }

# --- 1. build ---------------------------------------------------------------------------------------
start=$(now)
# PY on the command line: make sets nothing up and asks no TensorFlow for flags (these libraries need none).
build_failed=0
if timeout 120 make --no-print-directory gpu-tf-free PY="$py" >"$out/build.log" 2>&1; then
  row "build (make gpu-tf-free)" "ok" "$(( $(now) - start ))"
else
  row "build (make gpu-tf-free)" "**failed** (tail of $out/build.log below)" "$(( $(now) - start ))"
  status=1
  build_failed=1
fi

gpu_lib=tf_hps/_tf_hps_gpu_cache.so
devices=0
gpu_name="none"
if [ -f "$gpu_lib" ]; then
  devices=$("$py" -c "import ctypes; print(ctypes.CDLL('$gpu_lib').hps_gpu_cache_device_count())" 2>/dev/null || echo 0)
  if [ "$devices" -gt 0 ]; then
    gpu_name=$("$py" - "$gpu_lib" <<'EOF'
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
name = ctypes.create_string_buffer(256)
lib.hps_gpu_device_name.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
print(name.value.decode() if lib.hps_gpu_device_name(name, 256) == 0 else "unnamed")
EOF
)
  fi
fi

# --- 2. tests -----------------------------------------------------------------------------------------
start=$(now)
if [ "$status" -eq 0 ]; then
  # --noconftest: tests/conftest.py imports tf_hps for the TensorFlow tests; these need none of it.
  timeout 120 "$py" -m pytest -q -rs --noconftest -p no:cacheprovider tests/test_gpu_cache.py tests/test_gpu_lookup.py \
    >"$out/tests.log" 2>&1
  rc=$?
  result=$(grep -E '^(=+ )?[0-9]+ (passed|failed|skipped|error)' "$out/tests.log" | tail -1 | sed 's/=//g; s/^ *//; s/ *$//')
  if [ "$rc" -eq 0 ]; then
    row "tests (test_gpu_cache.py, test_gpu_lookup.py)" "${result:-ok}" "$(( $(now) - start ))"
  else
    row "tests (test_gpu_cache.py, test_gpu_lookup.py)" "**${result:-failed (exit $rc)}** (see $out/tests.log)" \
      "$(( $(now) - start ))"
    status=1
  fi
  skipped=$(grep -oE '[0-9]+ skipped' <<<"$result" | grep -oE '[0-9]+' || true)
  if [ -n "$skipped" ]; then
    not_run+=("$skipped tests, skipped: $(grep '^SKIPPED' "$out/tests.log" | sed 's/.*: //' | sort -u | paste -sd ';' - | sed 's/;/; /g')")
  fi
else
  not_run+=("the tests: the build failed")
fi

# --- 3. benchmarks ------------------------------------------------------------------------------------
if [ "$devices" -gt 0 ] && [ "$status" -eq 0 ]; then
  start=$(now)
  if timeout 60 "$py" benchmarks/gpu_cache.py --no-tf --repeats 20 >"$out/gpu_cache.md" 2>"$out/gpu_cache.log"; then
    row "benchmarks/gpu_cache.py" "ok" "$(( $(now) - start ))"
  else
    row "benchmarks/gpu_cache.py" "**failed or timed out** (see $out/gpu_cache.log)" "$(( $(now) - start ))"
  fi
  start=$(now)
  if timeout 100 "$py" benchmarks/gpu_lookup.py --repeats 20 --out "$out" >"$out/gpu_lookup.log" 2>&1; then
    row "benchmarks/gpu_lookup.py" "ok" "$(( $(now) - start ))"
  else
    row "benchmarks/gpu_lookup.py" "**failed or timed out** (see $out/gpu_lookup.log)" "$(( $(now) - start ))"
  fi
else
  not_run+=("benchmarks/gpu_cache.py and benchmarks/gpu_lookup.py: $([ "$devices" -gt 0 ] && echo "the build or a test failed" || echo "no CUDA device")")
fi

# --- 4. summary ---------------------------------------------------------------------------------------
{
  echo "# tf_hps device check"
  echo
  echo "GPU: **$gpu_name** ($devices CUDA device(s)); host: $(nproc) cores, $(uname -m); $(date -u '+%Y-%m-%d %H:%M UTC');"
  echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with changes)')"
  echo
  echo "| step | result | seconds |"
  echo "|---|---|---|"
  printf '%s\n' "${rows[@]}"
  echo
  if [ "${#not_run[@]}" -gt 0 ]; then
    echo "Not run:"
    printf -- '- %s\n' "${not_run[@]}"
    echo
  fi
  echo "Targets (issue: GPU path): cache query, all hits, 65,536 x 26 keys, D=128: >= 1.5 G keys/s;"
  echo "GPU pipeline against the CPU pipeline, batch 32 to 131,072: >= 5x."
  echo
  if [ "$build_failed" -eq 1 ]; then
    echo '```'; tail -20 "$out/build.log"; echo '```'
  fi
  [ -s "$out/gpu_cache.md" ] && { echo "## GPU cache (benchmarks/gpu_cache.py)"; echo; cat "$out/gpu_cache.md"; echo; }
  [ -s "$out/gpu_lookup.md" ] && { echo "## Lookup pipeline (benchmarks/gpu_lookup.py)"; echo; cat "$out/gpu_lookup.md"; }
} >"$summary"
cat "$summary"
exit "$status"
