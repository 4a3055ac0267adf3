#include "worker/run_fence.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>

#include "absl/strings/numbers.h"
#include "core/base/file_util.h"
#include "core/base/logging.h"

namespace sae {

RunFence::Held& RunFence::Held::operator=(Held&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = o.fd_;
    o.fd_ = -1;
  }
  return *this;
}

RunFence::Held::~Held() {
  if (fd_ >= 0) ::close(fd_);  // closing releases the flock
}

absl::StatusOr<int> RunFence::Lock() const {
  const std::string path = dir_ + "/.lock";
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return absl::InternalError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  // Writes under the lock take milliseconds. A holder that keeps it for
  // kStalledSeconds is a stale attempt that was frozen or cut off in the
  // middle of one: go on without the lock (the number in `attempt` still
  // decides who may write, and the stalled holder stops at its next write).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(kStalledSeconds);
  while (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    if (errno != EWOULDBLOCK && errno != EINTR) {
      const int e = errno;
      ::close(fd);
      return absl::InternalError(absl::StrCat(path, ": flock: ", std::strerror(e)));
    }
    if (std::chrono::steady_clock::now() > deadline) {
      ::close(fd);
      SAE_LOG(kWarn) << path << ": held by a stalled writer for " << kStalledSeconds << " s; attempt " << attempt_
                     << " goes on without it";
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return fd;
}

absl::StatusOr<int> RunFence::Owner() const {
  const std::string path = dir_ + "/attempt";
  if (!PathExists(path)) return 0;
  SAE_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  int owner = 0;
  if (!absl::SimpleAtoi(text, &owner))
    return absl::DataLossError(absl::StrCat(path, ": not an attempt number: '", text.substr(0, 40), "'"));
  return owner;
}

absl::Status RunFence::Claim() {
  if (attempt_ <= 0) return absl::OkStatus();
  SAE_ASSIGN_OR_RETURN(int fd, Lock());
  Held held(fd);
  SAE_ASSIGN_OR_RETURN(int owner, Owner());
  if (owner > attempt_)
    return absl::FailedPreconditionError(
        absl::StrCat("attempt ", attempt_, " is stale: attempt ", owner, " of this job owns ", dir_));
  if (owner == attempt_) return absl::OkStatus();
  return AtomicWriteFile(dir_ + "/attempt", absl::StrCat(attempt_, "\n"));
}

absl::StatusOr<RunFence::Held> RunFence::Hold() const {
  if (attempt_ <= 0) return Held();
  SAE_ASSIGN_OR_RETURN(int fd, Lock());
  Held held(fd);
  SAE_ASSIGN_OR_RETURN(int owner, Owner());
  if (owner != attempt_)
    return absl::AbortedError(absl::StrCat("stale attempt ", attempt_, ": attempt ", owner, " of this job owns ", dir_,
                                           "; this attempt writes nothing more"));
  return held;
}

}  // namespace sae
