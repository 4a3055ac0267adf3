#include "core/data/activation_stream.h"

#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <deque>
#include <exception>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "core/base/file_util.h"
#include "core/base/mutex.h"
#include "core/data/prng.h"

namespace sae {
namespace {

using data_internal::HashPair;
using data_internal::RandomPermutation;
using data_internal::Xoshiro256;

// Seed tags keep the shard-order and window-shuffle streams independent.
constexpr uint64_t kShardOrderTag = 0x5348415244ULL;  // "SHARD"
constexpr uint64_t kWindowTag = 0x57494e444fULL;      // "WINDO"

// Unshuffled streams read in chunks of about this many floats.
constexpr int64_t kReadChunkFloats = int64_t{4} << 20;
constexpr int64_t kMaxReadRows = 8192;

// "shard <message>"; SafetensorsFile errors already start with the path.
absl::Status ShardError(const absl::Status& s) { return absl::Status(s.code(), absl::StrCat("shard ", s.message())); }

bool IsFinite(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return (u & 0x7f800000u) != 0x7f800000u;
}

// One block of consecutive rows of an epoch's visit order, read and converted.
struct Window {
  int64_t rows = 0;
  std::vector<float> data;    // rows x d_in in visit order
  std::vector<int64_t> perm;  // output j is data row perm[j]; empty = identity
  // Output positions holding a non-finite row, ascending, with their errors.
  std::vector<std::pair<int64_t, absl::Status>> bad;
  absl::Status error;  // the window could not be read at all
};

}  // namespace

struct ActivationStream::Impl {
  ~Impl() {
    {
      sae::MutexLock lock(&mu);
      stop = true;
    }
    stop_flag.store(true);
    if (thread.joinable()) thread.join();
  }

  void ProducerLoop(int64_t epoch, int64_t window);
  std::unique_ptr<Window> BuildWindow(int64_t epoch, int64_t window);
  absl::Status ReadSegment(size_t shard, int64_t row_begin, int64_t rows, const char* need, Window* win,
                           int64_t out_row, std::vector<std::pair<int64_t, absl::Status>>* bad_rows);
  absl::Status ReadRun(size_t shard, int64_t row_begin, int64_t rows, Window* win, int64_t out_row,
                       std::vector<std::pair<int64_t, absl::Status>>* bad_rows);
  void EpochOrder(int64_t epoch);
  // Whether this rank owns global position `pos` (always, when world == 1).
  bool Owned(int64_t pos) const {
    if (opts.world <= 1) return true;
    const int64_t in_batch = (pos - opts.start_row) % opts.batch_rows;
    return in_batch >= share_lo && in_batch < share_hi;
  }
  // Hands out the next n positions of the stream into dst (nullptr: skip them).
  absl::Status Consume(int64_t n, float* dst);

  // Immutable after Open.
  std::string dir;
  Manifest manifest;
  StreamOptions opts;
  std::vector<SafetensorsFile> shards;
  std::vector<std::string> shard_paths;
  bool shuffle = true;
  int64_t window_rows = 1;  // rows per window (shuffle window, or read chunk when unshuffled)
  int64_t windows_per_epoch = 1;
  int64_t share_lo = 0, share_hi = 0;  // this rank's rows of a global batch

  // Consumer side (the thread calling Next).
  int64_t position = 0;
  int64_t skip = 0;  // rows of the first window before start_row
  std::unique_ptr<Window> cur;
  int64_t cur_pos = 0;
  absl::Status sticky;

  // Producer side (the prefetch thread only).
  int64_t order_epoch = -1;
  std::vector<size_t> order;    // shard visit order of order_epoch
  std::vector<int64_t> prefix;  // prefix[k] = rows of order[0..k)
  std::vector<bool> verified;
  // Each shard's (inode, size, mtime) when first read: a shard changed during
  // the run (after its checksum was verified) is an error, never read silently.
  struct FileSig {
    bool set = false;
    uint64_t ino = 0;
    int64_t size = 0, mtime_ns = 0;
  };
  std::vector<FileSig> sigs;

  std::thread thread;
  std::atomic<bool> stop_flag{false};
  // The prefetch queue: the producer waits for room (or stop), the consumer
  // for a window (sae::Mutex conditions, no condition variables).
  sae::Mutex mu;
  bool HasRoom() const ABSL_SHARED_LOCKS_REQUIRED(mu) {
    return stop || static_cast<int64_t>(queue.size()) < opts.prefetch_windows;
  }
  bool HasWindow() const ABSL_SHARED_LOCKS_REQUIRED(mu) { return !queue.empty(); }
  std::deque<std::unique_ptr<Window>> queue ABSL_GUARDED_BY(mu);
  bool stop ABSL_GUARDED_BY(mu) = false;
};

void ActivationStream::Impl::EpochOrder(int64_t epoch) {
  if (order_epoch == epoch) return;
  order_epoch = epoch;
  std::vector<int64_t> perm;
  if (shuffle) {
    Xoshiro256 rng(HashPair(HashPair(opts.seed, static_cast<uint64_t>(epoch)), kShardOrderTag));
    RandomPermutation(static_cast<int64_t>(shards.size()), &rng, &perm);
  } else {
    perm.resize(shards.size());
    for (size_t i = 0; i < perm.size(); ++i) perm[i] = static_cast<int64_t>(i);
  }
  order.assign(perm.begin(), perm.end());
  prefix.assign(order.size() + 1, 0);
  for (size_t k = 0; k < order.size(); ++k) prefix[k + 1] = prefix[k] + manifest.shards[order[k]].rows;
}

absl::Status ActivationStream::Impl::ReadSegment(size_t shard, int64_t row_begin, int64_t rows, const char* need,
                                                 Window* win, int64_t out_row,
                                                 std::vector<std::pair<int64_t, absl::Status>>* bad_rows) {
  const std::string& path = shard_paths[shard];
  struct stat st;
  if (::stat(path.c_str(), &st) != 0)
    return absl::DataLossError(absl::StrCat("shard ", path, ": disappeared during the run: ", std::strerror(errno)));
  FileSig now{true, static_cast<uint64_t>(st.st_ino), static_cast<int64_t>(st.st_size),
              static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec};
  FileSig& was = sigs[shard];
  if (!was.set) {
    was = now;
  } else if (was.ino != now.ino || was.size != now.size || was.mtime_ns != now.mtime_ns) {
    return absl::DataLossError(absl::StrCat("shard ", path,
                                            ": changed during the run (size, modification time or inode differ "
                                            "from when it was first read); its checksum no longer holds"));
  }
  const bool verifier = opts.world <= 1 || static_cast<int>(shard % opts.world) == opts.rank;
  if (opts.verify_checksums && verifier && !verified[shard]) {
    auto sha = Sha256File(path);
    if (!sha.ok()) return Annotate(sha.status(), "shard checksum");
    if (*sha != manifest.shards[shard].sha256) {
      return absl::DataLossError(absl::StrCat("shard ", path, ": sha256 mismatch: manifest has ",
                                              manifest.shards[shard].sha256, ", file has ", *sha));
    }
    verified[shard] = true;
  }
  if (need == nullptr) return ReadRun(shard, row_begin, rows, win, out_row, bad_rows);
  // Only the rows this rank owns, in maximal consecutive runs.
  for (int64_t i = 0; i < rows;) {
    if (!need[i]) {
      ++i;
      continue;
    }
    int64_t j = i + 1;
    while (j < rows && need[j]) ++j;
    SAE_RETURN_IF_ERROR(ReadRun(shard, row_begin + i, j - i, win, out_row + i, bad_rows));
    i = j;
  }
  return absl::OkStatus();
}

absl::Status ActivationStream::Impl::ReadRun(size_t shard, int64_t row_begin, int64_t rows, Window* win,
                                             int64_t out_row, std::vector<std::pair<int64_t, absl::Status>>* bad_rows) {
  const std::string& path = shard_paths[shard];
  const int64_t d = manifest.d_in;
  const int64_t chunk = std::clamp<int64_t>(kReadChunkFloats / d, 1, kMaxReadRows);
  for (int64_t r = 0; r < rows; r += chunk) {
    if (stop_flag.load(std::memory_order_relaxed)) return absl::CancelledError("stream closed");
    const int64_t n = std::min(chunk, rows - r);
    float* dst = win->data.data() + (out_row + r) * d;
    absl::Status s = shards[shard].ReadRowsAsFloat("activations", row_begin + r, row_begin + r + n, dst);
    if (!s.ok()) return ShardError(s);
    for (int64_t i = 0; i < n; ++i) {
      const float* row = dst + i * d;
      bool finite = true;
      for (int64_t c = 0; c < d; ++c) finite &= IsFinite(row[c]);
      if (finite) continue;
      int64_t col = 0;
      while (IsFinite(row[col])) ++col;
      bad_rows->emplace_back(out_row + r + i, absl::InvalidArgumentError(absl::StrCat(
                                                  "shard ", path, ": row ", row_begin + r + i,
                                                  " has a non-finite value (", row[col], ") in column ", col)));
    }
  }
  return absl::OkStatus();
}

std::unique_ptr<Window> ActivationStream::Impl::BuildWindow(int64_t epoch, int64_t window) {
  auto win = std::make_unique<Window>();
  EpochOrder(epoch);
  const int64_t d = manifest.d_in;
  const int64_t start = window * window_rows;
  win->rows = std::min(window_rows, manifest.rows - start);
  win->data.resize(static_cast<size_t>(win->rows * d));
  if (shuffle) {
    Xoshiro256 rng(HashPair(HashPair(HashPair(opts.seed, static_cast<uint64_t>(epoch)), static_cast<uint64_t>(window)),
                            kWindowTag));
    RandomPermutation(win->rows, &rng, &win->perm);
  }
  // need[v]: whether this rank hands out visit-order row v of the window.
  std::vector<char> need;
  if (opts.world > 1) {
    need.assign(static_cast<size_t>(win->rows), 0);
    const int64_t base = epoch * manifest.rows + start;
    for (int64_t j = 0; j < win->rows; ++j) {
      if (Owned(base + j)) need[static_cast<size_t>(shuffle ? win->perm[j] : j)] = 1;
    }
  }
  // Bad rows by visit-order index within the window.
  std::vector<std::pair<int64_t, absl::Status>> bad_rows;
  size_t k = static_cast<size_t>(std::upper_bound(prefix.begin(), prefix.end(), start) - prefix.begin()) - 1;
  int64_t done = 0;
  while (done < win->rows) {
    const int64_t pos = start + done;
    while (prefix[k + 1] <= pos) ++k;  // skips empty shards
    const size_t shard = order[k];
    const int64_t row = pos - prefix[k];
    const int64_t n = std::min(manifest.shards[shard].rows - row, win->rows - done);
    win->error = ReadSegment(shard, row, n, need.empty() ? nullptr : need.data() + done, win.get(), done, &bad_rows);
    if (!win->error.ok()) return win;
    done += n;
  }
  if (!bad_rows.empty()) {
    std::vector<int64_t> inverse;
    if (shuffle) {
      inverse.resize(win->perm.size());
      for (size_t j = 0; j < win->perm.size(); ++j) inverse[win->perm[j]] = static_cast<int64_t>(j);
    }
    for (auto& [visit, status] : bad_rows) {
      win->bad.emplace_back(shuffle ? inverse[visit] : visit, std::move(status));
    }
    std::sort(win->bad.begin(), win->bad.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  }
  return win;
}

void ActivationStream::Impl::ProducerLoop(int64_t epoch, int64_t window) {
  while (true) {
    {
      sae::MutexLock lock(&mu, absl::Condition(this, &Impl::HasRoom));
      if (stop) return;
    }
    std::unique_ptr<Window> win;
    try {
      win = BuildWindow(epoch, window);
    } catch (const std::exception& e) {
      win = std::make_unique<Window>();
      win->error = absl::ResourceExhaustedError(absl::StrCat("activation stream ", dir, ": ", e.what()));
    }
    const bool fatal = !win->error.ok();
    {
      sae::MutexLock lock(&mu);
      if (stop) return;
      queue.push_back(std::move(win));
    }
    if (fatal) return;
    if (++window == windows_per_epoch) {
      window = 0;
      ++epoch;
    }
  }
}

absl::StatusOr<std::unique_ptr<ActivationStream>> ActivationStream::Open(const std::string& dir, StreamOptions opts) {
  if (opts.shuffle_window_rows < 1) {
    return absl::InvalidArgumentError(absl::StrCat("activation stream ", dir, ": shuffle_window_rows must be >= 1"));
  }
  if (opts.prefetch_windows < 1) {
    return absl::InvalidArgumentError(absl::StrCat("activation stream ", dir, ": prefetch_windows must be >= 1"));
  }
  if (opts.world < 1 || opts.rank < 0 || opts.rank >= opts.world) {
    return absl::InvalidArgumentError(
        absl::StrCat("activation stream ", dir, ": rank ", opts.rank, " is not in a world of ", opts.world));
  }
  if (opts.world > 1 && opts.batch_rows < opts.world) {
    return absl::InvalidArgumentError(absl::StrCat("activation stream ", dir, ": batch_rows ", opts.batch_rows,
                                                   " is less than the world size ", opts.world));
  }
  if (opts.start_row < 0) {
    return absl::InvalidArgumentError(absl::StrCat("activation stream ", dir, ": start_row must be >= 0"));
  }
  auto impl = std::make_unique<Impl>();
  impl->dir = dir;
  impl->opts = opts;
  SAE_ASSIGN_OR_RETURN(impl->manifest, LoadManifest(dir));
  const Manifest& m = impl->manifest;
  if (opts.expected_d_in != 0 && opts.expected_d_in != m.d_in) {
    return absl::InvalidArgumentError(absl::StrCat(JoinPath(dir, "manifest.json"), ": d_in ", m.d_in,
                                                   " does not match expected d_in ", opts.expected_d_in));
  }
  if (m.rows == 0) {
    return absl::InvalidArgumentError(absl::StrCat(JoinPath(dir, "manifest.json"), ": no rows to stream"));
  }
  for (size_t i = 0; i < m.shards.size(); ++i) {
    SAE_ASSIGN_OR_RETURN(SafetensorsFile f, OpenShard(dir, m, i));
    impl->shard_paths.push_back(f.path());
    impl->shards.push_back(std::move(f));
  }
  impl->verified.assign(m.shards.size(), false);
  impl->sigs.assign(m.shards.size(), {});
  if (opts.world > 1) {
    impl->share_lo = opts.batch_rows * opts.rank / opts.world;
    impl->share_hi = opts.batch_rows * (opts.rank + 1) / opts.world;
  }
  impl->shuffle = opts.shuffle_window_rows > 1;
  impl->window_rows = impl->shuffle ? std::min(opts.shuffle_window_rows, m.rows)
                                    : std::clamp<int64_t>(kReadChunkFloats / m.d_in, 1, kMaxReadRows);
  impl->windows_per_epoch = (m.rows + impl->window_rows - 1) / impl->window_rows;

  const int64_t epoch = opts.start_row / m.rows;
  const int64_t offset = opts.start_row % m.rows;
  impl->position = opts.start_row;
  impl->skip = offset % impl->window_rows;
  Impl* raw = impl.get();
  raw->thread = std::thread([raw, epoch, w = offset / raw->window_rows] { raw->ProducerLoop(epoch, w); });
  return std::unique_ptr<ActivationStream>(new ActivationStream(std::move(impl)));
}

ActivationStream::ActivationStream(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ActivationStream::~ActivationStream() = default;

const Manifest& ActivationStream::manifest() const { return impl_->manifest; }
int64_t ActivationStream::d_in() const { return impl_->manifest.d_in; }
int64_t ActivationStream::position() const { return impl_->position; }

absl::Status ActivationStream::Impl::Consume(int64_t n, float* dst) {
  const int64_t d = manifest.d_in;
  int64_t filled = 0;
  while (filled < n) {
    if (!cur || cur_pos == cur->rows) {
      {
        sae::MutexLock lock(&mu, absl::Condition(this, &Impl::HasWindow));
        cur = std::move(queue.front());
        queue.pop_front();
      }
      cur_pos = skip;
      skip = 0;
    }
    const Window& w = *cur;
    if (!w.error.ok()) return w.error;
    const int64_t take = std::min(n - filled, w.rows - cur_pos);
    if (dst != nullptr) {
      auto bad = std::lower_bound(w.bad.begin(), w.bad.end(), cur_pos,
                                  [](const auto& b, int64_t pos) { return b.first < pos; });
      if (bad != w.bad.end() && bad->first < cur_pos + take) return bad->second;
      float* out = dst + filled * d;
      if (w.perm.empty()) {
        std::memcpy(out, w.data.data() + cur_pos * d, static_cast<size_t>(take * d) * sizeof(float));
      } else {
        for (int64_t j = 0; j < take; ++j) {
          std::memcpy(out + j * d, w.data.data() + w.perm[cur_pos + j] * d, static_cast<size_t>(d) * sizeof(float));
        }
      }
    }
    filled += take;
    cur_pos += take;
  }
  return absl::OkStatus();
}

absl::Status ActivationStream::Next(int64_t rows, std::vector<float>* out) {
  Impl& s = *impl_;
  if (!s.sticky.ok()) return s.sticky;
  if (rows < 0) return absl::InvalidArgumentError("ActivationStream::Next: negative row count");
  const int64_t d = s.manifest.d_in;
  if (s.opts.world <= 1) {
    out->resize(static_cast<size_t>(rows * d));
    s.sticky = s.Consume(rows, out->data());
  } else {
    if (rows != s.opts.batch_rows) {
      return absl::InvalidArgumentError(
          absl::StrCat("ActivationStream::Next: a rank's stream hands out whole global batches of ", s.opts.batch_rows,
                       " rows, not ", rows));
    }
    out->resize(static_cast<size_t>((s.share_hi - s.share_lo) * d));
    s.sticky = s.Consume(s.share_lo, nullptr);
    if (s.sticky.ok()) s.sticky = s.Consume(s.share_hi - s.share_lo, out->data());
    if (s.sticky.ok()) s.sticky = s.Consume(rows - s.share_hi, nullptr);
  }
  if (!s.sticky.ok()) return s.sticky;
  s.position += rows;
  return absl::OkStatus();
}

}  // namespace sae
