// bench_allreduce: all-reduce time, algorithm bandwidth and bus bandwidth
// (nccl-tests conventions: algbw = bytes / time, busbw = algbw · 2(n−1)/n)
// for one backend, plus the gradient all-reduce of an SAE step, bucketed
// versus one call per tensor. Launch with every rank:
//   mpirun -np 2 build/bin/bench_allreduce --backend mpi
//   tests/run_ranks.sh 2 build/bin/bench_allreduce --backend gloo
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "benchmarks/bench_util.h"
#include "cli/flags.h"
#include "core/comm/communicator.h"

namespace {

using sae::bench::Median;
using sae::bench::SteadyNow;

struct Flags {
  std::string backend = "mpi";
  int64_t min_bytes = 1 << 10, max_bytes = 256 << 20, d = 768, n = 16384, bucket = int64_t{1} << 23;
  int iters = 10, warmup = 2;
  bool as_json = false;
};

const absl::Duration kTimeout = absl::Seconds(120);

// The median time of fn over `iters` calls after `warmup`, every rank
// starting each call together.
template <typename F>
double Timed(sae::Communicator& comm, const Flags& f, F&& fn) {
  std::vector<double> ts;
  for (int i = 0; i < f.warmup + f.iters; ++i) {
    comm.Barrier(kTimeout).IgnoreError();
    const double t0 = SteadyNow();
    fn();
    if (i >= f.warmup) ts.push_back(SteadyNow() - t0);
  }
  return Median(ts);
}

// Time, algbw and busbw of one float32 sum all-reduce per message size
// (min_bytes to max_bytes, times 4).
void MessageSweep(sae::Communicator& comm, const Flags& f) {
  const int world = comm.world_size();
  const bool leader = comm.rank() == 0;
  if (leader && !f.as_json) {
    std::printf("backend %s, %d ranks, float32 sum, median of %d after %d warm-up\n", f.backend.c_str(), world, f.iters,
                f.warmup);
    std::printf("%12s %12s %12s %12s\n", "bytes", "time_us", "algbw_GB/s", "busbw_GB/s");
  }
  std::vector<float> buf(static_cast<size_t>(f.max_bytes / 4) + 1, 1.0f);
  for (int64_t bytes = f.min_bytes; bytes <= f.max_bytes; bytes *= 4) {
    const size_t count = static_cast<size_t>(bytes / 4);
    const double t = Timed(comm, f, [&] {
      comm.AllReduce(buf.data(), count, sae::CommDType::kF32, sae::ReduceOp::kSum, kTimeout).IgnoreError();
    });
    const double algbw = bytes / t / 1e9, busbw = algbw * 2.0 * (world - 1) / world;
    if (!leader) continue;
    if (f.as_json)
      std::printf("%s\n", nlohmann::json({{"backend", f.backend},
                                          {"ranks", world},
                                          {"bytes", bytes},
                                          {"seconds", t},
                                          {"algbw", algbw},
                                          {"busbw", busbw}})
                              .dump()
                              .c_str());
    else
      std::printf("%12ld %12.1f %12.3f %12.3f\n", bytes, t * 1e6, algbw, busbw);
  }
}

// The gradient all-reduce of one SAE step: W_enc, b_enc, W_dec, b_dec, one
// call per tensor against buckets of f.bucket floats.
void SaeGradients(sae::Communicator& comm, const Flags& f) {
  const int64_t n = f.n, d = f.d, bucket = f.bucket;
  const std::vector<int64_t> sizes = {n * d, n, n * d, d};
  int64_t total = 0;
  for (int64_t s : sizes) total += s;
  std::vector<float> grads(static_cast<size_t>(total), 0.5f);
  const double per_tensor = Timed(comm, f, [&] {
    int64_t off = 0;
    for (int64_t s : sizes) {
      comm.AllReduce(grads.data() + off, static_cast<size_t>(s), sae::CommDType::kF32, sae::ReduceOp::kSum, kTimeout)
          .IgnoreError();
      off += s;
    }
  });
  const double bucketed = Timed(comm, f, [&] {
    for (int64_t off = 0; off < total; off += bucket)
      comm.AllReduce(grads.data() + off, static_cast<size_t>(std::min(bucket, total - off)), sae::CommDType::kF32,
                     sae::ReduceOp::kSum, kTimeout)
          .IgnoreError();
  });
  if (comm.rank() != 0) return;
  const double mb = total * 4.0 / 1e6;
  if (f.as_json)
    std::printf("%s\n", nlohmann::json({{"backend", f.backend},
                                        {"ranks", comm.world_size()},
                                        {"sae_grad_bytes", total * 4},
                                        {"per_tensor_seconds", per_tensor},
                                        {"bucketed_seconds", bucketed},
                                        {"bucket_elems", bucket}})
                            .dump()
                            .c_str());
  else
    std::printf(
        "SAE gradients d %ld x latents %ld: %.1f MB per step; one call per tensor %.4f s, "
        "buckets of %ld floats %.4f s\n",
        d, n, mb, per_tensor, bucket, bucketed);
}

}  // namespace

int main(int argc, char** argv) {
  sae::flags::Command app{"bench_allreduce: all-reduce bandwidth of a saeforge communicator backend"};
  Flags f;
  app.AddOption("--backend", f.backend, "local|mpi|gloo|nccl");
  app.AddOption("--min-bytes", f.min_bytes, "smallest message");
  app.AddOption("--max-bytes", f.max_bytes, "largest message");
  app.AddOption("--iters", f.iters, "timed repetitions (median)");
  app.AddOption("--d", f.d, "SAE gradient test: input dimension");
  app.AddOption("--latents", f.n, "SAE gradient test: latents");
  app.AddOption("--bucket", f.bucket, "SAE gradient test: bucket size in float32 elements");
  app.AddFlag("--json", f.as_json, "JSON lines");
  if (auto rc = app.Parse(argc, argv)) return *rc;

  sae::CommOptions o;
  if (const char* r = std::getenv("SAE_RANK")) o.rank = std::atoi(r);
  if (const char* w = std::getenv("SAE_WORLD_SIZE")) o.world_size = std::atoi(w);
  if (const char* a = std::getenv("SAE_RENDEZVOUS")) o.rendezvous = a;
  auto comm = sae::CreateCommunicator(f.backend, o);
  if (!comm.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(comm.status().message()).c_str());
    return 1;
  }
  MessageSweep(**comm, f);
  SaeGradients(**comm, f);
  return 0;
}
