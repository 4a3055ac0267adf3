// Gloo backend over LibTorch's c10d (ProcessGroupGloo + TCPStore), for
// workers that mpirun did not start: each process knows its rank, the world
// size and the address of the TCP store rank 0 serves.
#define USE_C10D_GLOO 1
#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <future>
#include <memory>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "core/base/clock.h"
#include "core/base/mutex.h"
#include "core/comm/backends.h"
#include "core/comm/tcp_store.h"

namespace sae {
namespace {

using internal::MakeTcpStore;
using internal::Ms;

// Liveness and failure naming. Every rank runs a heartbeat thread with its own
// store connection that increments "alive/<rank>" every kBeat; a rank is lost
// when its counter stops moving. After a failed collective a rank sets
// "failed/<rank>", names the ranks whose heartbeat stopped, and sets
// "reported/<rank>". Rank 0 serves the store, so it waits (up to the
// collective timeout) until every live rank has reported before it returns:
// otherwise a slower survivor would find the store gone and blame rank 0.
// A rank waiting inside a collective polls for other ranks' "failed/" keys,
// so it leaves a collective that a peer has already given up on within about
// kSlice instead of waiting for the full timeout.
constexpr std::chrono::milliseconds kBeat(200);
constexpr std::chrono::milliseconds kSlice(500);
constexpr std::chrono::milliseconds kLivenessWindow(2000);
// A stop does not abandon a collective at once: the ranks' stop agreement
// and a checkpoint's collectives get this long to complete first.
constexpr double kStopGraceSeconds = 3;

class Heartbeat {
 public:
  Heartbeat(c10::intrusive_ptr<c10d::Store> store, int rank)
      : store_(std::move(store)), key_("alive/" + std::to_string(rank)), thread_([this] { Loop(); }) {}
  ~Heartbeat() {
    {
      sae::MutexLock l(&mu_);
      stop_ = true;
    }
    thread_.join();
  }

 private:
  void Loop() {
    mu_.Lock();
    while (!stop_) {
      mu_.Unlock();
      try {
        store_->add(key_, 1);
      } catch (const std::exception&) {
        // The store is gone (rank 0 exited): nothing left to tell.
      }
      mu_.Lock();
      mu_.AwaitWithTimeout(absl::Condition(&stop_), absl::FromChrono(kBeat));
    }
    mu_.Unlock();
  }
  c10::intrusive_ptr<c10d::Store> store_;
  std::string key_;
  sae::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

class GlooCommunicator : public Communicator {
 public:
  GlooCommunicator(c10::intrusive_ptr<c10d::ProcessGroupGloo> pg, c10::intrusive_ptr<c10d::Store> store,
                   std::unique_ptr<Heartbeat> heartbeat, int rank, int world, absl::Duration timeout,
                   const std::atomic<bool>* abort)
      : abort_(abort),
        pg_(std::move(pg)),
        store_(std::move(store)),
        heartbeat_(std::move(heartbeat)),
        rank_(rank),
        world_(world),
        timeout_(timeout) {}
  ~GlooCommunicator() override {
    // A collective left pending (stop, timeout, a peer's failure) keeps one
    // of Gloo's threads waiting on a peer until it errors or times out, and
    // destroying the process group waits for it. Destroy it in a thread of
    // its own: the caller goes on at once, and the store (rank 0 serves its
    // port) closes as soon as the pending collective ends.
    if (abandoned_) {
      heartbeat_.reset();
      std::thread([pg = std::move(pg_), store = std::move(store_)]() mutable {
        pg.reset();
        store.reset();
      }).detach();
    }
  }
  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  std::string backend() const override { return "gloo"; }

  absl::Status AllReduce(void* data, size_t count, CommDType dtype, ReduceOp op, absl::Duration timeout) override {
    SAE_RETURN_IF_ERROR(CheckAllReduceArgs(dtype, op));
    if (count == 0) return absl::OkStatus();
    c10d::ReduceOp rop = c10d::ReduceOp::SUM;
    switch (op) {
      case ReduceOp::kSum:
      case ReduceOp::kAvg: rop = c10d::ReduceOp::SUM; break;
      case ReduceOp::kMin: rop = c10d::ReduceOp::MIN; break;
      case ReduceOp::kMax: rop = c10d::ReduceOp::MAX; break;
      case ReduceOp::kOr: rop = c10d::ReduceOp::BOR; break;
    }
    const int64_t n = static_cast<int64_t>(count);
    at::Tensor t;
    at::Tensor bf16_view;
    switch (dtype) {
      case CommDType::kF32: t = at::from_blob(data, {n}, at::kFloat); break;
      case CommDType::kI64: t = at::from_blob(data, {n}, at::kLong); break;
      case CommDType::kU8: t = at::from_blob(data, {n}, at::kByte); break;
      case CommDType::kBF16:  // reduced in float32
        bf16_view = at::from_blob(data, {n}, at::kBFloat16);
        t = bf16_view.to(at::kFloat);
        break;
    }
    SAE_RETURN_IF_ERROR(Run("allreduce", timeout, [&] {
      std::vector<at::Tensor> ts = {t};
      c10d::AllreduceOptions o;
      o.reduceOp = rop;
      return pg_->allreduce(ts, o);
    }));
    if (op == ReduceOp::kAvg) t.div_(world_);
    if (bf16_view.defined()) bf16_view.copy_(t);
    return absl::OkStatus();
  }

  absl::Status Broadcast(void* data, size_t bytes, int root, absl::Duration timeout) override {
    if (root < 0 || root >= world_)
      return absl::InvalidArgumentError(absl::StrCat("broadcast root ", root, " of ", world_, " ranks"));
    if (bytes == 0) return absl::OkStatus();
    at::Tensor t = at::from_blob(data, {static_cast<int64_t>(bytes)}, at::kByte);
    return Run("broadcast", timeout, [&] {
      std::vector<at::Tensor> ts = {t};
      c10d::BroadcastOptions o;
      o.rootRank = root;
      return pg_->broadcast(ts, o);
    });
  }

  absl::Status AllGather(const void* in, size_t bytes, void* out, absl::Duration timeout) override {
    const int64_t b = static_cast<int64_t>(bytes);
    at::Tensor src = at::from_blob(const_cast<void*>(in), {b}, at::kByte);
    at::Tensor dst = at::from_blob(out, {b * world_}, at::kByte);
    std::vector<std::vector<at::Tensor>> outs(1);
    for (int r = 0; r < world_; ++r) outs[0].push_back(dst.narrow(0, r * b, b));
    return Run("allgather", timeout, [&] {
      std::vector<at::Tensor> ins = {src};
      return pg_->allgather(outs, ins);
    });
  }

  absl::Status Barrier(absl::Duration timeout) override {
    return Run("barrier", timeout, [&] { return pg_->barrier(); });
  }

 private:
  template <typename F>
  absl::Status Run(const char* what, absl::Duration timeout, F&& start) {
    try {
      c10::intrusive_ptr<c10d::Work> w = start();
      const auto deadline = std::chrono::steady_clock::now() + Ms(timeout);
      double stop_seen = -1;  // when this wait first saw the stop flag
      while (true) {
        bool done = false;
        try {
          done = w->wait(std::min<std::chrono::milliseconds>(kSlice, Ms(timeout)));
        } catch (const std::exception&) {
          if (w->isCompleted()) throw;  // the collective failed (not a slice timeout)
        }
        if (done) return absl::OkStatus();
        if (w->isCompleted()) {
          w->wait();  // rethrows the collective's error, if any
          return absl::OkStatus();
        }
        if (std::chrono::steady_clock::now() >= deadline) {
          abandoned_ = true;
          return absl::DeadlineExceededError(
              absl::StrCat(what, " (rank ", rank_, " of ", world_, "): not every rank joined in time; ", LostRanks()));
        }
        if (abort_ != nullptr && abort_->load() && stop_seen < 0) stop_seen = SteadyNow();
        if (stop_seen >= 0 && SteadyNow() - stop_seen > kStopGraceSeconds) {
          abandoned_ = true;
          return absl::CancelledError(
              absl::StrCat(what, " (rank ", rank_, " of ", world_, "): stopped while waiting for the other ranks"));
        }
        if (AnotherRankFailed()) {
          abandoned_ = true;
          return absl::UnavailableError(absl::StrCat(what, " (rank ", rank_, " of ", world_,
                                                     "): another rank's collective failed; ", LostRanks()));
        }
      }
    } catch (const std::exception& e) {
      std::string msg = e.what();
      const size_t nl = msg.find('\n');
      if (nl != std::string::npos) msg.resize(nl);
      return absl::UnavailableError(
          absl::StrCat(what, " (rank ", rank_, " of ", world_, "): ", msg, "; ", LostRanks()));
    }
  }

  bool AnotherRankFailed() {
    try {
      for (int r = 0; r < world_; ++r)
        if (r != rank_ && store_->check({"failed/" + std::to_string(r)})) return true;
      return false;
    } catch (const std::exception&) {
      return true;  // the store is gone: rank 0 is
    }
  }

  // Names the ranks whose heartbeat stopped (see Heartbeat above).
  std::string LostRanks() {
    try {
      store_->set("failed/" + std::to_string(rank_), std::vector<uint8_t>{1});
      std::vector<int64_t> before(world_), after(world_);
      for (int r = 0; r < world_; ++r) before[r] = store_->add("alive/" + std::to_string(r), 0);
      std::this_thread::sleep_for(kLivenessWindow);
      std::vector<int> lost;
      for (int r = 0; r < world_; ++r) {
        after[r] = store_->add("alive/" + std::to_string(r), 0);
        if (r != rank_ && after[r] == before[r]) lost.push_back(r);
      }
      store_->set("reported/" + std::to_string(rank_), std::vector<uint8_t>{1});
      if (rank_ == 0) {
        // Keep serving the store until every live rank has named the lost ones.
        const auto deadline = std::chrono::steady_clock::now() + Ms(timeout_) + kLivenessWindow;
        for (int r = 1; r < world_; ++r) {
          if (std::find(lost.begin(), lost.end(), r) != lost.end()) continue;
          while (!store_->check({"reported/" + std::to_string(r)}) && std::chrono::steady_clock::now() < deadline)
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
      }
      if (lost.empty()) return "every rank is still up (a transient network error?)";
      return absl::StrCat("lost rank(s): ", absl::StrJoin(lost, ", "), " (heartbeat stopped)");
    } catch (const std::exception&) {
      return "the rendezvous store (served by rank 0) is unreachable: lost rank(s): 0";
    }
  }

  const std::atomic<bool>* abort_;
  bool abandoned_ = false;  // a collective was left pending (see the destructor)
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg_;
  c10::intrusive_ptr<c10d::Store> store_;
  std::unique_ptr<Heartbeat> heartbeat_;
  int rank_, world_;
  absl::Duration timeout_;
};

}  // namespace

namespace internal {

namespace {

absl::StatusOr<std::unique_ptr<Communicator>> ConnectGloo(const CommOptions& opts) {
  SAE_ASSIGN_OR_RETURN(auto store, MakeTcpStore(opts.rendezvous, opts.rank == 0, opts.world_size, opts.timeout));
  try {
    auto o = c10d::ProcessGroupGloo::Options::create(Ms(opts.timeout));
    std::string host = opts.rendezvous.substr(0, opts.rendezvous.rfind(':'));
    o->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(
        host == "localhost" || host == "127.0.0.1" ? "127.0.0.1" : host));
    auto prefixed = c10::make_intrusive<c10d::PrefixStore>("saeforge/", store);
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(prefixed, opts.rank, opts.world_size, o);
    auto status_store = c10::make_intrusive<c10d::PrefixStore>("saeforge-status/", store);
    // The heartbeat has its own connection: a TCPStore client is one socket.
    SAE_ASSIGN_OR_RETURN(auto beat_conn, MakeTcpStore(opts.rendezvous, false, opts.world_size, opts.timeout));
    auto heartbeat =
        std::make_unique<Heartbeat>(c10::make_intrusive<c10d::PrefixStore>("saeforge-status/", beat_conn), opts.rank);
    return std::unique_ptr<Communicator>(new GlooCommunicator(std::move(pg), std::move(status_store),
                                                              std::move(heartbeat), opts.rank, opts.world_size,
                                                              opts.timeout, opts.abort));
  } catch (const std::exception& e) {
    std::string msg = e.what();
    const size_t nl = msg.find('\n');
    if (nl != std::string::npos) msg.resize(nl);
    return absl::UnavailableError(absl::StrCat("gloo rendezvous at ", opts.rendezvous, " (rank ", opts.rank, " of ",
                                               opts.world_size, "): ", msg));
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> NewGlooCommunicator(const CommOptions& opts) {
  if (opts.world_size < 1 || opts.rank < 0 || opts.rank >= opts.world_size)
    return absl::InvalidArgumentError(
        absl::StrCat("gloo: rank ", opts.rank, " of world size ", opts.world_size, " (give --rank and --world-size)"));
  if (opts.rendezvous.empty())
    return absl::InvalidArgumentError("gloo: no rendezvous address (--rendezvous HOST:PORT)");
  if (opts.abort == nullptr) return ConnectGloo(opts);
  // The rendezvous (store connect, Gloo's full mesh) blocks until every rank
  // is there or the timeout passes; it runs in its own thread so a stop can
  // end the wait. An abandoned rendezvous thread ends by itself at the
  // timeout; it owns everything it touches.
  using Result = absl::StatusOr<std::unique_ptr<Communicator>>;
  auto task = std::make_shared<std::packaged_task<Result()>>([opts] { return ConnectGloo(opts); });
  std::future<Result> done = task->get_future();
  std::thread([task] { (*task)(); }).detach();
  while (done.wait_for(std::chrono::milliseconds(250)) != std::future_status::ready) {
    if (opts.abort->load())
      return absl::CancelledError(absl::StrCat("gloo rendezvous at ", opts.rendezvous, " (rank ", opts.rank, " of ",
                                               opts.world_size, "): stopped while waiting for the other ranks"));
  }
  return done.get();
}

}  // namespace internal
}  // namespace sae
