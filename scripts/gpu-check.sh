#!/usr/bin/env bash
# One command for a GPU host (H100/H200 with a CUDA LibTorch in python3 and
# NCCL in its site-packages; no network needed): configure against that
# LibTorch, build, run the communicator conformance suite on nccl (one rank per
# GPU), the all-reduce benchmark, and the training benchmark.
# The host also needs the build's libraries (scripts/packages.txt's -dev
# packages): a preflight names every one it lacks and stops (exit 2).
# Usage: [SAE_DEPS_PREFIX=dir] scripts/gpu-check.sh [build-dir]   (default build-gpu)
# On a host with no package registry (the device machine): scripts/gpu-deps.sh
# here, carry the folder, `dpkg -x` its .debs into DIR there, SAE_DEPS_PREFIX=DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
b=${1:-build-gpu}
# python3's torch first, before SAE_DEPS_PREFIX's libraries join the search
# path of every process this script starts.
prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)' 2>/dev/null) ||
  { echo "gpu-check: python3 has no torch (this builds against a CUDA LibTorch: python3's torch)" >&2; exit 2; }
torch_version=$(python3 -c 'import torch; print(torch.__version__, torch.version.cuda)')
# Preflight: every header the configure needs, with the Debian 12 package that
# has it (scripts/packages.txt), so that a host without them says all of them
# in seconds instead of configure stopping at the first. SAE_DEPS_PREFIX: a
# folder where such packages were unpacked (`dpkg -x pkg.deb DIR` for each of
# scripts/gpu-deps.sh's downloads), searched for headers, libraries (Debian
# puts some under /lib), programs (protoc, grpc_cpp_plugin), CMake and
# pkg-config files. Tried in a bare Debian 12 (build-essential, cmake, ninja,
# python3, pkg-config) with nothing else but those packages unpacked:
# configure passed, test_comm and bench_allreduce built and test_comm passed
# (docs/performance.md, session 17); not yet on the GPU host itself.
if [ -n "${SAE_DEPS_PREFIX:-}" ]; then
  dp=$SAE_DEPS_PREFIX
  libs="$dp/usr/lib/x86_64-linux-gnu:$dp/lib/x86_64-linux-gnu:$dp/usr/lib"
  export CPATH="$dp/usr/include:$dp/usr/include/x86_64-linux-gnu${CPATH:+:$CPATH}"
  export LIBRARY_PATH="$libs${LIBRARY_PATH:+:$LIBRARY_PATH}"
  export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export PKG_CONFIG_PATH="$dp/usr/lib/x86_64-linux-gnu/pkgconfig:$dp/usr/share/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
  export CMAKE_PREFIX_PATH="$dp/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  export PATH="$dp/usr/bin:$PATH"
fi
missing=()
while read -r header pkg; do
  echo "#include <$header>" | ${CXX:-c++} -std=c++17 -E -x c++ - >/dev/null 2>&1 || missing+=("$pkg ($header)")
done <<'EOF_HEADERS'
absl/base/config.h libabsl-dev
yaml-cpp/yaml.h libyaml-cpp-dev
nlohmann/json.hpp nlohmann-json3-dev
CLI/CLI.hpp libcli11-dev
openssl/ssl.h libssl-dev
gtest/gtest.h libgtest-dev
benchmark/benchmark.h libbenchmark-dev
grpcpp/grpcpp.h libgrpc++-dev
google/protobuf/message.h libprotobuf-dev
prometheus/registry.h prometheus-cpp-dev
sqlite3.h libsqlite3-dev
httplib.h libcpp-httplib-dev
sentencepiece_processor.h libsentencepiece-dev
oniguruma.h libonig-dev
unicode/uchar.h libicu-dev
oneapi/dnnl/dnnl.hpp libdnnl-dev
EOF_HEADERS
if ((${#missing[@]})); then
  echo "gpu-check: this host lacks ${#missing[@]} build dependencies (Debian 12 packages):" >&2
  printf '  %s\n' "${missing[@]}" >&2
  echo "gpu-check: install them, or unpack their .debs (with their library packages) into a folder named by SAE_DEPS_PREFIX" >&2
  exit 2
fi
echo "gpu-check: torch $torch_version, $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
cmake -S . -B "$b" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" \
  -DSAE_WITH_CUDA=ON -DSAE_WITH_NCCL=ON -DSAE_BUILD_TESTS=ON -DSAE_BUILD_BENCHMARKS=ON 2>&1 | grep -E "saeforge|Error|error" || true
cmake --build "$b" -j"$(nproc)" --target test_comm bench_allreduce bench_train_step
gpus=$(nvidia-smi -L | wc -l)
echo "gpu-check: conformance suite on nccl, $gpus rank(s)"
if [ "$gpus" -gt 1 ] && command -v mpirun >/dev/null; then
  SAE_COMM_BACKEND=nccl SAE_COMM_EXPECT_SIZE=$gpus mpirun --allow-run-as-root -np "$gpus" "$b/tests/test_comm"
else
  SAE_COMM_BACKEND=nccl SAE_COMM_EXPECT_SIZE=1 "$b/tests/test_comm"
fi
echo "gpu-check: all-reduce on nccl (host buffers staged through the GPU)"
if [ "$gpus" -gt 1 ] && command -v mpirun >/dev/null; then
  mpirun --allow-run-as-root -np "$gpus" "$b/bin/bench_allreduce" --backend nccl || true
else
  "$b/bin/bench_allreduce" --backend nccl || true
fi
echo "gpu-check: training step on the GPU (the ATen step), tokens/s, against LibTorch's bf16 GEMM and at::topk alone:"
# Issue 14 item 4's two sizes (its peer on an H100 for the first: about 1.2M
# tokens/s for a well-tuned PyTorch step, 18M for the bf16 GEMM alone,
# torch.topk alone 3.5x the GEMM), then a remedy run at the smaller size.
"$b/bin/bench_train_step" --device cuda --d 768 --latents 24576 --k 32 --batch 16384 --encoder fp32,bf16 --steps 10 || true
"$b/bin/bench_train_step" --device cuda --d 4096 --latents 131072 --k 64 --batch 8192 --encoder fp32,bf16 --steps 5 --warmup 2 || true
"$b/bin/bench_train_step" --device cuda --d 768 --latents 24576 --k 32 --batch 16384 --steps 10 --remedy ghost_grads --dead-window 1 || true
