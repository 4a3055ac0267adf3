// NCCL backend: collectives on GPU memory (host buffers are staged through a
// device buffer, so the same conformance suite runs on every backend).
// Bootstrap: the NCCL unique id goes from rank 0 to the others over MPI when
// mpirun started the processes, else through the rendezvous TCP store.
// Timeouts: the communicator is non-blocking; a call polls its stream and
// NCCL's async error until the deadline, then aborts the communicator and
// returns DeadlineExceeded (NCCL itself would wait forever for a lost peer).
#include <cuda_runtime_api.h>
#include <nccl.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "core/comm/backends.h"

namespace sae::internal {
namespace {

absl::Status CudaError(cudaError_t e, const char* what) {
  return absl::InternalError(absl::StrCat("nccl backend: ", what, ": ", cudaGetErrorString(e)));
}

absl::Status NcclError(ncclResult_t r, const char* what) {
  return absl::InternalError(absl::StrCat("nccl backend: ", what, ": ", ncclGetErrorString(r)));
}

int EnvInt(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::atoi(v) : fallback;
}

ncclDataType_t NcclType(CommDType t) {
  switch (t) {
    case CommDType::kF32: return ncclFloat32;
    case CommDType::kBF16: return ncclBfloat16;
    case CommDType::kI64: return ncclInt64;
    case CommDType::kU8: return ncclUint8;
  }
  return ncclUint8;
}

ncclRedOp_t NcclOp(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return ncclSum;
    case ReduceOp::kAvg: return ncclAvg;
    case ReduceOp::kMin: return ncclMin;
    case ReduceOp::kMax: return ncclMax;
    case ReduceOp::kOr: return ncclMax;  // not used: OR goes through AllGather
  }
  return ncclSum;
}

class NcclCommunicator : public Communicator {
 public:
  NcclCommunicator(int rank, int world, int device, cudaStream_t stream, ncclComm_t comm,
                   std::unique_ptr<Communicator> boot)
      : rank_(rank), world_(world), device_(device), stream_(stream), comm_(comm), boot_(std::move(boot)) {}
  ~NcclCommunicator() override {
    if (comm_ != nullptr) {
      if (broken_) {
        ncclCommAbort(comm_);
      } else {
        ncclCommDestroy(comm_);
      }
    }
    if (staging_ != nullptr) cudaFree(staging_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  int rank() const override { return rank_; }
  int device() const { return device_; }
  int world_size() const override { return world_; }
  std::string backend() const override { return "nccl"; }

  absl::Status AllReduce(void* data, size_t count, CommDType dtype, ReduceOp op, absl::Duration timeout) override {
    SAE_RETURN_IF_ERROR(CheckAllReduceArgs(dtype, op));
    if (count == 0) return absl::OkStatus();
    const size_t bytes = count * CommDTypeSize(dtype);
    if (op == ReduceOp::kOr) return OrViaAllGather(data, bytes, dtype, timeout);
    SAE_ASSIGN_OR_RETURN(void* dev, Stage(data, bytes, bytes));
    SAE_RETURN_IF_ERROR(
        Enqueue(ncclAllReduce(dev, dev, count, NcclType(dtype), NcclOp(op), comm_, stream_), "allreduce"));
    return Finish(data, dev, bytes, timeout, "allreduce");
  }

  absl::Status Broadcast(void* data, size_t bytes, int root, absl::Duration timeout) override {
    if (root < 0 || root >= world_)
      return absl::InvalidArgumentError(absl::StrCat("broadcast: root ", root, " is not a rank"));
    if (bytes == 0) return absl::OkStatus();
    SAE_ASSIGN_OR_RETURN(void* dev, Stage(data, bytes, bytes));
    SAE_RETURN_IF_ERROR(Enqueue(ncclBroadcast(dev, dev, bytes, ncclUint8, root, comm_, stream_), "broadcast"));
    return Finish(data, dev, bytes, timeout, "broadcast");
  }

  absl::Status AllGather(const void* in, size_t bytes, void* out, absl::Duration timeout) override {
    if (bytes == 0) return absl::OkStatus();
    const size_t total = bytes * static_cast<size_t>(world_);
    if (IsDevice(in) && IsDevice(out)) {
      SAE_RETURN_IF_ERROR(Enqueue(ncclAllGather(in, out, bytes, ncclUint8, comm_, stream_), "allgather"));
      return Wait(timeout, "allgather");
    }
    SAE_RETURN_IF_ERROR(Reserve(total + bytes));
    char* recv = static_cast<char*>(staging_);
    char* send = recv + total;
    if (cudaError_t e = cudaMemcpyAsync(send, in, bytes, cudaMemcpyDefault, stream_); e != cudaSuccess)
      return CudaError(e, "copy to device");
    SAE_RETURN_IF_ERROR(Enqueue(ncclAllGather(send, recv, bytes, ncclUint8, comm_, stream_), "allgather"));
    return Finish(out, recv, total, timeout, "allgather");
  }

  absl::Status Barrier(absl::Duration timeout) override {
    uint8_t one = 1;
    return AllReduce(&one, 1, CommDType::kU8, ReduceOp::kMax, timeout);
  }

 private:
  static bool IsDevice(const void* p) {
    cudaPointerAttributes a;
    if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
      cudaGetLastError();  // plain host memory on old runtimes
      return false;
    }
    return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged;
  }

  absl::Status Reserve(size_t bytes) {
    if (bytes <= staging_bytes_) return absl::OkStatus();
    if (staging_ != nullptr) cudaFree(staging_);
    staging_ = nullptr;
    staging_bytes_ = 0;
    if (cudaError_t e = cudaMalloc(&staging_, bytes); e != cudaSuccess) return CudaError(e, "staging buffer");
    staging_bytes_ = bytes;
    return absl::OkStatus();
  }

  // The device buffer a collective works on: `data` itself when it is GPU
  // memory, else a staging copy of its first `copy` bytes.
  absl::StatusOr<void*> Stage(void* data, size_t bytes, size_t copy) {
    if (broken_) return absl::FailedPreconditionError("nccl backend: communicator aborted earlier");
    if (IsDevice(data)) return data;
    SAE_RETURN_IF_ERROR(Reserve(bytes));
    if (cudaError_t e = cudaMemcpyAsync(staging_, data, copy, cudaMemcpyHostToDevice, stream_); e != cudaSuccess)
      return CudaError(e, "copy to device");
    return staging_;
  }

  // Non-blocking NCCL may answer ncclInProgress for an enqueued call.
  absl::Status Enqueue(ncclResult_t r, const char* what) {
    if (r == ncclSuccess || r == ncclInProgress) return absl::OkStatus();
    broken_ = true;
    return NcclError(r, what);
  }

  absl::Status Wait(absl::Duration timeout, const char* what) {
    const auto deadline = std::chrono::steady_clock::now() + absl::ToChronoMilliseconds(timeout);
    int spins = 0;
    while (true) {
      cudaError_t q = cudaStreamQuery(stream_);
      if (q == cudaSuccess) return absl::OkStatus();
      if (q != cudaErrorNotReady) {
        broken_ = true;
        return CudaError(q, what);
      }
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(comm_, &async);
      if (async != ncclSuccess && async != ncclInProgress) {
        broken_ = true;
        return NcclError(async, what);
      }
      if (std::chrono::steady_clock::now() > deadline) {
        broken_ = true;
        return absl::DeadlineExceededError(
            absl::StrCat("nccl ", what, ": rank ", rank_, " waited ", absl::FormatDuration(timeout),
                         " for the other ranks (a rank was lost or stopped); communicator aborted"));
      }
      if (++spins > 1000) std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  absl::Status Finish(void* host, void* dev, size_t bytes, absl::Duration timeout, const char* what) {
    if (host != dev) {
      if (cudaError_t e = cudaMemcpyAsync(host, dev, bytes, cudaMemcpyDeviceToHost, stream_); e != cudaSuccess)
        return CudaError(e, "copy to host");
    }
    return Wait(timeout, what);
  }

  absl::Status OrViaAllGather(void* data, size_t bytes, CommDType dtype, absl::Duration timeout) {
    const bool dev = IsDevice(data);
    std::vector<uint8_t> mine(bytes), all(bytes * static_cast<size_t>(world_));
    if (dev) {
      if (cudaError_t e = cudaMemcpy(mine.data(), data, bytes, cudaMemcpyDeviceToHost); e != cudaSuccess)
        return CudaError(e, "copy to host");
    } else {
      std::memcpy(mine.data(), data, bytes);
    }
    SAE_RETURN_IF_ERROR(AllGather(mine.data(), bytes, all.data(), timeout));
    (void)dtype;  // bitwise OR is the same on every integer width
    for (int r = 1; r < world_; ++r)
      for (size_t i = 0; i < bytes; ++i) all[i] |= all[static_cast<size_t>(r) * bytes + i];
    if (dev) {
      if (cudaError_t e = cudaMemcpy(data, all.data(), bytes, cudaMemcpyHostToDevice); e != cudaSuccess)
        return CudaError(e, "copy to device");
    } else {
      std::memcpy(data, all.data(), bytes);
    }
    return absl::OkStatus();
  }

  int rank_, world_, device_;
  cudaStream_t stream_;
  ncclComm_t comm_;
  std::unique_ptr<Communicator> boot_;  // MPI, when it bootstrapped (finalised last)
  void* staging_ = nullptr;
  size_t staging_bytes_ = 0;
  bool broken_ = false;
};

// Rank 0's unique id, known to every rank.
absl::StatusOr<ncclUniqueId> ShareUniqueId(int rank, int world, const CommOptions& opts, Communicator* mpi) {
  ncclUniqueId id;
  std::memset(&id, 0, sizeof(id));
  if (rank == 0) {
    if (ncclResult_t r = ncclGetUniqueId(&id); r != ncclSuccess) return NcclError(r, "unique id");
  }
  if (world == 1) return id;
  if (mpi != nullptr) {
    SAE_RETURN_IF_ERROR(mpi->Broadcast(&id, sizeof(id), 0, opts.timeout));
    return id;
  }
  SAE_ASSIGN_OR_RETURN(auto store, CreateTcpStore(opts.rendezvous, rank == 0, world, opts.timeout));
  if (rank == 0) {
    SAE_RETURN_IF_ERROR(
        store->Set("saeforge/nccl_unique_id", std::string(reinterpret_cast<const char*>(&id), sizeof(id))));
  } else {
    SAE_ASSIGN_OR_RETURN(std::string v, store->Get("saeforge/nccl_unique_id", opts.timeout));
    if (v.size() != sizeof(id))
      return absl::DataLossError("nccl backend: the rendezvous store holds a malformed unique id");
    std::memcpy(&id, v.data(), sizeof(id));
  }
  // Keep rank 0's store alive until every rank has read the id.
  SAE_RETURN_IF_ERROR(store->Set(absl::StrCat("saeforge/nccl_read/", rank), "1"));
  std::vector<std::string> keys;
  for (int r = 0; r < world; ++r) keys.push_back(absl::StrCat("saeforge/nccl_read/", r));
  SAE_RETURN_IF_ERROR(store->Wait(keys, opts.timeout));
  return id;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> NewNcclCommunicator(const CommOptions& opts) {
  int rank = 0, world = 1;
  std::unique_ptr<Communicator> mpi;
  if (LaunchedByMpirun()) {
#ifdef SAE_HAVE_MPI
    SAE_ASSIGN_OR_RETURN(mpi, NewMpiCommunicator(opts.abort));
    rank = mpi->rank();
    world = mpi->world_size();
#else
    return absl::UnimplementedError("world.backend: nccl under mpirun needs the mpi backend built in");
#endif
  } else if (opts.world_size > 1) {
    if (opts.rank < 0 || opts.rank >= opts.world_size || opts.rendezvous.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("world.backend: nccl outside mpirun needs --rank (0..", opts.world_size - 1,
                       "), --world-size and --rendezvous HOST:PORT; got rank ", opts.rank));
    }
    rank = opts.rank;
    world = opts.world_size;
  }
  int devices = 0;
  if (cudaError_t e = cudaGetDeviceCount(&devices); e != cudaSuccess || devices == 0)
    return absl::FailedPreconditionError(
        absl::StrCat("world.backend: nccl needs a CUDA device and none is visible (cudaGetDeviceCount: ",
                     e != cudaSuccess ? cudaGetErrorString(e) : "0 devices", ")"));
  const int local = EnvInt("OMPI_COMM_WORLD_LOCAL_RANK", EnvInt("SAE_LOCAL_RANK", rank));
  const int device = local % devices;
  if (cudaError_t e = cudaSetDevice(device); e != cudaSuccess) return CudaError(e, "set device");
  SAE_ASSIGN_OR_RETURN(ncclUniqueId id, ShareUniqueId(rank, world, opts, mpi.get()));

  cudaStream_t stream = nullptr;
  if (cudaError_t e = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking); e != cudaSuccess)
    return CudaError(e, "stream");
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t comm = nullptr;
  ncclResult_t r = ncclCommInitRankConfig(&comm, world, id, rank, &config);
  const auto deadline = std::chrono::steady_clock::now() + absl::ToChronoMilliseconds(opts.timeout);
  while (r == ncclInProgress) {
    if (std::chrono::steady_clock::now() > deadline) {
      ncclCommAbort(comm);
      cudaStreamDestroy(stream);
      return absl::DeadlineExceededError(
          absl::StrCat("nccl init: rank ", rank, " of ", world, " timed out waiting for the others"));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    ncclCommGetAsyncError(comm, &r);
  }
  if (r != ncclSuccess) {
    if (comm != nullptr) ncclCommAbort(comm);
    cudaStreamDestroy(stream);
    return NcclError(r, "init");
  }
  return std::unique_ptr<Communicator>(new NcclCommunicator(rank, world, device, stream, comm, std::move(mpi)));
}

}  // namespace sae::internal
