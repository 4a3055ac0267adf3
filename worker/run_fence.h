// Fencing of a run directory between attempts of one job. The coordinator
// numbers a job's attempts; an attempt that lost its lease (a worker frozen,
// cut off or slow) may still be running when the next one starts in the same
// OUTPUT.partial/. The newest attempt owns the directory: it records its
// number in OUTPUT.partial/attempt, and every write of an attempt (metrics
// line, checkpoint, final files and the rename into place) happens while
// holding OUTPUT.partial/.lock (flock) after checking that number. A stale
// attempt finds a larger number, writes nothing and stops (Aborted). A lock
// held for more than kStalledSeconds (a stale attempt frozen or cut off in
// the middle of a write) is not waited for: the owner goes on without it;
// the stalled writer may finish that one write, then stops at its next.
// Not thread-safe; one per attempt (rank 0, the only rank that writes).
#pragma once

#include <cstdint>
#include <string>

#include "core/base/status.h"

namespace sae {

class RunFence {
 public:
  // Attempt 0 means "not run by a coordinator": no fencing (every call is OK).
  RunFence(std::string work_dir, int attempt) : dir_(std::move(work_dir)), attempt_(attempt) {}
  RunFence(const RunFence&) = delete;
  RunFence& operator=(const RunFence&) = delete;

  // Records this attempt as the owner; FailedPrecondition naming both if a
  // later attempt already owns the directory. The directory must exist.
  absl::Status Claim();

  // Held while an attempt writes: constructed by Hold(), releases the lock.
  class Held {
   public:
    Held() = default;
    explicit Held(int fd) : fd_(fd) {}
    Held(Held&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
    Held& operator=(Held&& o) noexcept;
    ~Held();

   private:
    int fd_ = -1;
  };
  // Locks the directory and checks that this attempt still owns it; Aborted
  // ("stale attempt") if a later one does. Keep the result alive while writing.
  absl::StatusOr<Held> Hold() const;

  int attempt() const { return attempt_; }
  static constexpr int kStalledSeconds = 10;

 private:
  absl::StatusOr<int> Lock() const;   // the locked fd of .lock (-1: a stalled holder; not locked)
  absl::StatusOr<int> Owner() const;  // the number in `attempt` (0 if none)

  std::string dir_;
  int attempt_;
};

}  // namespace sae
