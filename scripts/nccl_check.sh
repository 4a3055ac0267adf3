#!/usr/bin/env bash
# The NCCL backend built against a real CUDA toolkit and NCCL, also on
# machines without a GPU. core/comm/nccl_backend.cc is the only file that
# includes CUDA's and NCCL's headers, and a build against Debian's CPU
# LibTorch leaves it out; where a CUDA toolkit with nccl.h is installed
# (CUDA_HOME, else /usr/local/cuda), this configures build-nccl with
# SAE_WITH_CUDA=ON and SAE_WITH_NCCL=ON (required: configure fails naming
# what it did not find), builds test_comm and bench_allreduce, and runs
#  - test_comm on the local backend (the build links and runs);
#  - test_comm with SAE_COMM_BACKEND=nccl: with no GPU visible it must exit
#    non-zero with the backend's own error (not crash, not pass); with one,
#    the conformance suite must pass.
# Without a toolkit it says so and succeeds (nothing to check).
set -euo pipefail
cd "$(dirname "$0")/.."
cuda=${CUDA_HOME:-/usr/local/cuda}
nccl_lib=$(ls "$cuda"/lib/libnccl.so* "$cuda"/lib64/libnccl.so* 2>/dev/null | head -1 || true)
if [ ! -f "$cuda/include/nccl.h" ] || [ ! -f "$cuda/include/cuda_runtime_api.h" ] || [ -z "$nccl_lib" ] ||
  [ ! -x "$cuda/bin/nvcc" ]; then
  echo "nccl check: skipped (no CUDA toolkit with nccl.h, cuda_runtime_api.h and libnccl at $cuda; set CUDA_HOME)"
  exit 0
fi
B=${SAE_NCCL_BUILD_DIR:-build-nccl}
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
mkdir -p "$B"
[ -f "$B/CMakeCache.txt" ] || cmake -S . -B "$B" "${generator[@]}" "${launcher[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DSAE_WITH_CUDA=ON -DSAE_WITH_NCCL=ON -DCUDAToolkit_ROOT="$cuda" >"$B/configure.log" 2>&1 ||
  { cat "$B/configure.log"; exit 1; }
grep -E "saeforge: (communicator backends|NCCL backend)" "$B/configure.log" || true
cmake --build "$B" -j"$(nproc)" --target test_comm bench_allreduce >/dev/null
"$B/tests/test_comm" --gtest_brief=1 >/dev/null
gpus=0
command -v nvidia-smi >/dev/null && gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
if [ "$gpus" -gt 0 ]; then
  SAE_COMM_BACKEND=nccl SAE_COMM_EXPECT_SIZE=1 "$B/tests/test_comm" --gtest_brief=1
  echo "nccl check: conformance suite passed on nccl ($gpus GPU(s) visible, one rank)"
  exit 0
fi
set +e
err=$(SAE_COMM_BACKEND=nccl SAE_COMM_EXPECT_SIZE=1 "$B/tests/test_comm" 2>&1 >/dev/null)
rc=$?
set -e
want="nccl needs a CUDA device and none is visible"
if [ "$rc" -eq 0 ] || [ "$rc" -gt 128 ] || ! grep -qF "$want" <<<"$err"; then
  echo "nccl check: without a GPU, test_comm on nccl exited $rc; expected a non-zero exit saying '$want'; it said:" >&2
  echo "$err" >&2
  exit 1
fi
echo "nccl check: built against $("$cuda/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/CUDA \1/p') and NCCL" \
  "$(sed -n 's/^#define NCCL_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\).*/\2/p' "$cuda/include/nccl.h" | paste -sd.)," \
  "no GPU visible: the backend refuses with its own error (rc $rc)"
