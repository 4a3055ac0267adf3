// Open MPI backend: non-blocking collectives polled against a deadline, so a
// lost rank surfaces as DeadlineExceeded instead of a hang. bfloat16 sums,
// minima and maxima use user-defined MPI operations computed in float32.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstring>
#include <mutex>
#include <thread>

#include "core/base/bf16.h"
#include "core/comm/backends.h"

namespace sae::internal {
namespace {

template <int kOp>  // 0 sum, 1 min, 2 max
void Bf16Op(void* in, void* inout, int* len, MPI_Datatype*) {
  const uint16_t* a = static_cast<const uint16_t*>(in);
  uint16_t* b = static_cast<uint16_t*>(inout);
  for (int i = 0; i < *len; ++i) {
    const float x = BF16ToFloat(a[i]), y = BF16ToFloat(b[i]);
    const float r = kOp == 0 ? x + y : kOp == 1 ? std::min(x, y) : std::max(x, y);
    b[i] = FloatToBF16(r);
  }
}

struct MpiGlobals {
  MPI_Op bf16_sum, bf16_min, bf16_max;
};

absl::StatusOr<MpiGlobals*> InitMpi() {
  static std::once_flag once;
  static MpiGlobals globals;
  static absl::Status init_status;
  std::call_once(once, [] {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
      int provided = 0;
      if (MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
        init_status = absl::UnavailableError("MPI_Init_thread failed");
        return;
      }
      std::atexit([] {
        int finalized = 0;
        MPI_Finalized(&finalized);
        if (!finalized) MPI_Finalize();
      });
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Op_create(&Bf16Op<0>, 1, &globals.bf16_sum);
    MPI_Op_create(&Bf16Op<1>, 1, &globals.bf16_min);
    MPI_Op_create(&Bf16Op<2>, 1, &globals.bf16_max);
  });
  if (!init_status.ok()) return init_status;
  return &globals;
}

std::string MpiError(int code) {
  char buf[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, buf, &len);
  return std::string(buf, static_cast<size_t>(len));
}

class MpiCommunicator : public Communicator {
 public:
  MpiCommunicator(MPI_Comm comm, MpiGlobals* g, const std::atomic<bool>* abort) : comm_(comm), g_(g), abort_(abort) {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Comm_free(&comm_);
  }
  int rank() const override { return rank_; }
  int world_size() const override { return size_; }
  std::string backend() const override { return "mpi"; }

  absl::Status AllReduce(void* data, size_t count, CommDType dtype, ReduceOp op, absl::Duration timeout) override {
    SAE_RETURN_IF_ERROR(CheckAllReduceArgs(dtype, op));
    MPI_Datatype type = MPI_BYTE;
    MPI_Op mop = MPI_SUM;
    switch (dtype) {
      case CommDType::kF32: type = MPI_FLOAT; break;
      case CommDType::kBF16: type = MPI_UINT16_T; break;
      case CommDType::kI64: type = MPI_INT64_T; break;
      case CommDType::kU8: type = MPI_UINT8_T; break;
    }
    const bool bf16 = dtype == CommDType::kBF16;
    switch (op) {
      case ReduceOp::kSum:
      case ReduceOp::kAvg: mop = bf16 ? g_->bf16_sum : MPI_SUM; break;
      case ReduceOp::kMin: mop = bf16 ? g_->bf16_min : MPI_MIN; break;
      case ReduceOp::kMax: mop = bf16 ? g_->bf16_max : MPI_MAX; break;
      case ReduceOp::kOr: mop = MPI_BOR; break;
    }
    const size_t esize = CommDTypeSize(dtype);
    const absl::Time deadline = absl::Now() + timeout;
    char* p = static_cast<char*>(data);
    for (size_t off = 0; off < count;) {
      const int n = static_cast<int>(std::min<size_t>(count - off, INT_MAX / 2));
      MPI_Request req;
      int rc = MPI_Iallreduce(MPI_IN_PLACE, p + off * esize, n, type, mop, comm_, &req);
      if (rc != MPI_SUCCESS) return absl::UnavailableError("allreduce: " + MpiError(rc));
      SAE_RETURN_IF_ERROR(Wait(&req, deadline, timeout, "allreduce"));
      off += static_cast<size_t>(n);
    }
    if (op == ReduceOp::kAvg && size_ > 1) {
      if (dtype == CommDType::kF32) {
        float* f = static_cast<float*>(data);
        for (size_t i = 0; i < count; ++i) f[i] /= static_cast<float>(size_);
      } else {
        uint16_t* h = static_cast<uint16_t*>(data);
        for (size_t i = 0; i < count; ++i) h[i] = FloatToBF16(BF16ToFloat(h[i]) / static_cast<float>(size_));
      }
    }
    return absl::OkStatus();
  }

  absl::Status Broadcast(void* data, size_t bytes, int root, absl::Duration timeout) override {
    if (root < 0 || root >= size_)
      return absl::InvalidArgumentError(absl::StrCat("broadcast root ", root, " of ", size_, " ranks"));
    const absl::Time deadline = absl::Now() + timeout;
    char* p = static_cast<char*>(data);
    size_t off = 0;
    do {  // at least one call, so a 0-byte broadcast still synchronises
      const int n = static_cast<int>(std::min<size_t>(bytes - off, INT_MAX / 2));
      MPI_Request req;
      int rc = MPI_Ibcast(p + off, n, MPI_BYTE, root, comm_, &req);
      if (rc != MPI_SUCCESS) return absl::UnavailableError("broadcast: " + MpiError(rc));
      SAE_RETURN_IF_ERROR(Wait(&req, deadline, timeout, "broadcast"));
      off += static_cast<size_t>(n);
    } while (off < bytes);
    return absl::OkStatus();
  }

  absl::Status AllGather(const void* in, size_t bytes, void* out, absl::Duration timeout) override {
    if (bytes > static_cast<size_t>(INT_MAX)) return absl::InvalidArgumentError("allgather: more than 2 GiB per rank");
    MPI_Request req;
    int rc = MPI_Iallgather(in, static_cast<int>(bytes), MPI_BYTE, out, static_cast<int>(bytes), MPI_BYTE, comm_, &req);
    if (rc != MPI_SUCCESS) return absl::UnavailableError("allgather: " + MpiError(rc));
    return Wait(&req, absl::Now() + timeout, timeout, "allgather");
  }

  absl::Status Barrier(absl::Duration timeout) override {
    MPI_Request req;
    int rc = MPI_Ibarrier(comm_, &req);
    if (rc != MPI_SUCCESS) return absl::UnavailableError("barrier: " + MpiError(rc));
    return Wait(&req, absl::Now() + timeout, timeout, "barrier");
  }

 private:
  // Polls `req` until done; backs off from spinning to 1 ms sleeps.
  absl::Status Wait(MPI_Request* req, absl::Time deadline, absl::Duration timeout, const char* what) {
    int spins = 0;
    absl::Time stop_seen = absl::InfinitePast();
    while (true) {
      int done = 0;
      int rc = MPI_Test(req, &done, MPI_STATUS_IGNORE);
      if (rc != MPI_SUCCESS)
        return absl::UnavailableError(absl::StrCat(what, " (rank ", rank_, " of ", size_, "): ", MpiError(rc)));
      if (done) return absl::OkStatus();
      if (absl::Now() > deadline)
        return absl::DeadlineExceededError(absl::StrCat(what, " (rank ", rank_, " of ", size_,
                                                        "): not every rank joined within ",
                                                        absl::FormatDuration(timeout), "; a rank is lost or stuck"));
      if (++spins > 1000) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        if (abort_ != nullptr && abort_->load() && stop_seen == absl::InfinitePast()) stop_seen = absl::Now();
        // A grace first: the ranks' stop agreement and a checkpoint's collectives.
        if (stop_seen != absl::InfinitePast() && absl::Now() - stop_seen > absl::Seconds(3))
          return absl::CancelledError(
              absl::StrCat(what, " (rank ", rank_, " of ", size_, "): stopped while waiting for the other ranks"));
      }
    }
  }

  MPI_Comm comm_;
  MpiGlobals* g_;
  const std::atomic<bool>* abort_;
  int rank_ = 0, size_ = 1;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> NewMpiCommunicator(const std::atomic<bool>* abort) {
  SAE_ASSIGN_OR_RETURN(MpiGlobals * g, InitMpi());
  MPI_Comm dup;
  int rc = MPI_Comm_dup(MPI_COMM_WORLD, &dup);
  if (rc != MPI_SUCCESS) return absl::UnavailableError("MPI_Comm_dup: " + MpiError(rc));
  MPI_Comm_set_errhandler(dup, MPI_ERRORS_RETURN);
  return std::unique_ptr<Communicator>(new MpiCommunicator(dup, g, abort));
}

}  // namespace sae::internal
