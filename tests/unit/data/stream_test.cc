#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <future>
#include <limits>
#include <numeric>
#include <set>
#include <thread>

#include "core/data/activation_stream.h"
#include "core/data/shard_writer.h"
#include "gtest/gtest.h"
#include "tests/unit/data/test_util.h"

namespace sae {
namespace {

using testing_util::FlipByte;
using testing_util::ReadBytes;
using testing_util::ScratchDir;
using testing_util::WriteBytes;

constexpr int64_t kRows = 500;
constexpr int64_t kRowsPerShard = 37;  // 13 full shards and one of 19 rows
constexpr int64_t kD = 3;

// Row i is (i, -i, i / 2), so every row read back names its global index.
// `poison` maps a global row index to the value placed in its column 1.
void MakeIdDataset(const std::string& dir, DType dtype = DType::kF32,
                   std::vector<std::pair<int64_t, float>> poison = {}) {
  ShardWriterOptions o;
  o.d_in = kD;
  o.dtype = dtype;
  o.rows_per_shard = kRowsPerShard;
  auto w = ShardWriter::Create(dir, o);
  ASSERT_TRUE(w.ok()) << w.status();
  std::vector<float> rows(kRows * kD);
  for (int64_t i = 0; i < kRows; ++i) {
    rows[i * kD] = static_cast<float>(i);
    rows[i * kD + 1] = -static_cast<float>(i);
    rows[i * kD + 2] = static_cast<float>(i) / 2;
  }
  for (const auto& [row, value] : poison) rows[row * kD + 1] = value;
  ASSERT_TRUE(w->Append(rows.data(), kRows).ok());
  ASSERT_TRUE(w->Finish().ok());
}

std::unique_ptr<ActivationStream> OpenOrDie(const std::string& dir, StreamOptions o) {
  auto s = ActivationStream::Open(dir, o);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? std::move(*s) : nullptr;
}

// Reads `total` rows in batches of `batch` and returns their ids.
std::vector<int64_t> ReadIds(ActivationStream* s, int64_t total, int64_t batch) {
  std::vector<int64_t> ids;
  std::vector<float> out;
  while (static_cast<int64_t>(ids.size()) < total) {
    const int64_t n = std::min<int64_t>(batch, total - static_cast<int64_t>(ids.size()));
    absl::Status st = s->Next(n, &out);
    EXPECT_TRUE(st.ok()) << st;
    if (!st.ok()) break;
    EXPECT_EQ(out.size(), static_cast<size_t>(n * kD));
    for (int64_t r = 0; r < n; ++r) {
      EXPECT_EQ(out[r * kD + 1], -out[r * kD]);
      EXPECT_EQ(out[r * kD + 2], out[r * kD] / 2);
      ids.push_back(static_cast<int64_t>(out[r * kD]));
    }
  }
  return ids;
}

std::vector<int64_t> Iota(int64_t n) {
  std::vector<int64_t> v(n);
  std::iota(v.begin(), v.end(), 0);
  return v;
}

TEST(ActivationStreamTest, UnshuffledReadsInManifestOrderAcrossEpochs) {
  ScratchDir dir;
  MakeIdDataset(dir.path(), DType::kF16);  // ids < 2048 are exact in float16
  StreamOptions o;
  o.shuffle_window_rows = 1;
  auto s = OpenOrDie(dir.path(), o);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->d_in(), kD);
  EXPECT_EQ(s->manifest().rows, kRows);
  std::vector<int64_t> ids = ReadIds(s.get(), 2 * kRows + 10, 33);
  for (int64_t i = 0; i < static_cast<int64_t>(ids.size()); ++i) ASSERT_EQ(ids[i], i % kRows) << i;
  EXPECT_EQ(s->position(), 2 * kRows + 10);
  std::vector<float> out;
  EXPECT_TRUE(s->Next(0, &out).ok());
  EXPECT_TRUE(out.empty());
  EXPECT_FALSE(s->Next(-1, &out).ok());
}

TEST(ActivationStreamTest, ShufflePermutesEachEpochAndVisitsEveryRowOnce) {
  ScratchDir dir;
  MakeIdDataset(dir.path());
  StreamOptions o;
  o.shuffle_window_rows = 64;
  o.seed = 7;
  auto s = OpenOrDie(dir.path(), o);
  ASSERT_TRUE(s);
  std::vector<int64_t> ids = ReadIds(s.get(), 3 * kRows, 50);
  ASSERT_EQ(ids.size(), static_cast<size_t>(3 * kRows));
  std::vector<std::vector<int64_t>> epochs;
  for (int e = 0; e < 3; ++e) {
    std::vector<int64_t> epoch(ids.begin() + e * kRows, ids.begin() + (e + 1) * kRows);
    EXPECT_NE(epoch, Iota(kRows)) << "epoch " << e << " is not shuffled";
    std::vector<int64_t> sorted = epoch;
    std::sort(sorted.begin(), sorted.end());
    EXPECT_EQ(sorted, Iota(kRows)) << "epoch " << e << " does not visit every row exactly once";
    epochs.push_back(std::move(epoch));
  }
  EXPECT_NE(epochs[0], epochs[1]);
  EXPECT_NE(epochs[1], epochs[2]);
  // A window holds 64 consecutive rows of the visit order, which walks whole
  // shards: the first window draws from at most 3 shards of 37 rows.
  // The shard visit order is itself shuffled per epoch: epochs start their
  // first window in different shards.
  std::set<std::set<int64_t>> first_window_shards;
  for (const auto& epoch : epochs) {
    std::set<int64_t> shards;
    for (int i = 0; i < 64; ++i) shards.insert(epoch[i] / kRowsPerShard);
    EXPECT_LE(shards.size(), 3u);
    EXPECT_GE(shards.size(), 2u);
    first_window_shards.insert(shards);
  }
  EXPECT_GT(first_window_shards.size(), 1u);
}

TEST(ActivationStreamTest, OrderDependsOnlyOnSeed) {
  ScratchDir dir;
  MakeIdDataset(dir.path());
  StreamOptions o;
  o.shuffle_window_rows = 100;
  o.seed = 3;
  o.prefetch_windows = 1;
  auto a = OpenOrDie(dir.path(), o);
  o.prefetch_windows = 5;
  auto b = OpenOrDie(dir.path(), o);
  o.seed = 4;
  auto c = OpenOrDie(dir.path(), o);
  ASSERT_TRUE(a && b && c);
  std::vector<int64_t> ia = ReadIds(a.get(), 1200, 17);
  std::vector<int64_t> ib = ReadIds(b.get(), 1200, 200);
  std::vector<int64_t> ic = ReadIds(c.get(), 1200, 17);
  EXPECT_EQ(ia, ib);
  EXPECT_NE(ia, ic);
}

TEST(ActivationStreamTest, ResumeAtAnyPositionYieldsTheSameRows) {
  ScratchDir dir;
  MakeIdDataset(dir.path());
  const int64_t total = 3 * kRows;
  for (int64_t window : {64, 1, 37, 1000}) {
    StreamOptions o;
    o.shuffle_window_rows = window;
    o.seed = 11;
    auto ref_stream = OpenOrDie(dir.path(), o);
    ASSERT_TRUE(ref_stream);
    const std::vector<int64_t> ref = ReadIds(ref_stream.get(), total, 7);
    for (int64_t p : {0, 1, 36, 37, 63, 64, 65, 250, 499, 500, 501, 777, 1000, 1234, 1499}) {
      o.start_row = p;
      auto s = OpenOrDie(dir.path(), o);
      ASSERT_TRUE(s);
      EXPECT_EQ(s->position(), p);
      std::vector<int64_t> got = ReadIds(s.get(), total - p, 13);
      EXPECT_EQ(s->position(), total);
      ASSERT_EQ(got, std::vector<int64_t>(ref.begin() + p, ref.end())) << "window " << window << " start " << p;
    }
  }
}

// Replaces shard `index` of the id dataset by a file written here.
std::string ShardPath(const std::string& dir, int index) {
  char name[64];
  std::snprintf(name, sizeof(name), "/shard-%05d.safetensors", index);
  return dir + name;
}

void ExpectOpenError(const std::string& dir, const std::string& shard, const std::string& what, absl::StatusCode code,
                     StreamOptions o = {}) {
  auto s = ActivationStream::Open(dir, o);
  ASSERT_FALSE(s.ok()) << "expected an error about " << what;
  EXPECT_EQ(s.status().code(), code) << s.status();
  EXPECT_NE(s.status().message().find(shard), std::string::npos) << s.status();
  EXPECT_NE(s.status().message().find(what), std::string::npos) << s.status();
}

TEST(ActivationStreamTest, OpenChecksEveryShardHeader) {
  ScratchDir root;
  const std::string base = root.Sub("base");
  MakeIdDataset(base);
  auto fresh = [&](const std::string& name) {
    const std::string d = root.Sub(name);
    EXPECT_TRUE(MakeDirs(d).ok());
    for (const char* f : {"manifest.json"}) WriteBytes(d + "/" + f, ReadBytes(base + "/" + f));
    for (int i = 0; i < 14; ++i) WriteBytes(ShardPath(d, i), ReadBytes(ShardPath(base, i)));
    return d;
  };
  std::vector<float> rows(kRowsPerShard * kD, 1.0f);
  {
    const std::string d = fresh("missing");
    ASSERT_EQ(::unlink(ShardPath(d, 3).c_str()), 0);
    ExpectOpenError(d, ShardPath(d, 3), "not found", absl::StatusCode::kNotFound);
  }
  {
    const std::string d = fresh("dtype");
    SafetensorsWriter w;
    ASSERT_TRUE(w.AddFloat("activations", DType::kBF16, {kRowsPerShard, kD}, rows.data()).ok());
    ASSERT_TRUE(w.Write(ShardPath(d, 1)).ok());
    ExpectOpenError(d, ShardPath(d, 1), "activations dtype BF16 does not match manifest dtype float32",
                    absl::StatusCode::kInvalidArgument);
  }
  {
    const std::string d = fresh("shape");
    SafetensorsWriter w;
    ASSERT_TRUE(w.AddFloat("activations", DType::kF32, {kRowsPerShard - 1, kD}, rows.data()).ok());
    ASSERT_TRUE(w.Write(ShardPath(d, 2)).ok());
    ExpectOpenError(d, ShardPath(d, 2), "shape [36, 3] does not match manifest [37, 3]",
                    absl::StatusCode::kInvalidArgument);
  }
  {
    const std::string d = fresh("no_activations");
    SafetensorsWriter w;
    ASSERT_TRUE(w.AddFloat("acts", DType::kF32, {kRowsPerShard, kD}, rows.data()).ok());
    ASSERT_TRUE(w.Write(ShardPath(d, 0)).ok());
    ExpectOpenError(d, ShardPath(d, 0), "no tensor \"activations\"", absl::StatusCode::kInvalidArgument);
  }
  {
    const std::string d = fresh("header_length");
    std::string bytes = ReadBytes(ShardPath(d, 4));
    for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>(0x7f);
    WriteBytes(ShardPath(d, 4), bytes);
    ExpectOpenError(d, ShardPath(d, 4), "header length", absl::StatusCode::kDataLoss);
  }
  {
    const std::string d = fresh("truncated");
    std::string bytes = ReadBytes(ShardPath(d, 5));
    WriteBytes(ShardPath(d, 5), bytes.substr(0, bytes.size() - 10));
    ExpectOpenError(d, ShardPath(d, 5), "out of range", absl::StatusCode::kDataLoss);
  }
  {
    const std::string d = fresh("d_in");
    StreamOptions o;
    o.expected_d_in = 8;
    ExpectOpenError(d, d + "/manifest.json", "d_in 3 does not match expected d_in 8",
                    absl::StatusCode::kInvalidArgument, o);
    o.expected_d_in = kD;
    EXPECT_TRUE(ActivationStream::Open(d, o).ok());
  }
  StreamOptions bad;
  bad.shuffle_window_rows = 0;
  EXPECT_FALSE(ActivationStream::Open(base, bad).ok());
  bad = {};
  bad.prefetch_windows = 0;
  EXPECT_FALSE(ActivationStream::Open(base, bad).ok());
}

TEST(ActivationStreamTest, ChecksumMismatchIsDataLossNamingTheShard) {
  ScratchDir dir;
  MakeIdDataset(dir.path());
  const std::string shard = ShardPath(dir.path(), 2);
  FlipByte(shard, ReadBytes(shard).size() - 2);  // a data byte: the header stays valid
  StreamOptions o;
  o.shuffle_window_rows = 1;
  {
    auto s = OpenOrDie(dir.path(), o);  // without verification the bytes are just read
    ASSERT_TRUE(s);
    std::vector<float> out;
    EXPECT_TRUE(s->Next(kRows, &out).ok());
  }
  o.verify_checksums = true;
  auto s = OpenOrDie(dir.path(), o);
  ASSERT_TRUE(s);
  std::vector<float> out;
  absl::Status st = s->Next(kRows, &out);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(st.message().find(shard), std::string::npos) << st;
  EXPECT_NE(st.message().find("sha256"), std::string::npos) << st;
  EXPECT_EQ(s->Next(1, &out), st);  // the stream stays failed
  EXPECT_EQ(s->position(), 0);
}

TEST(ActivationStreamTest, NonFiniteRowIsReportedWithShardAndRow) {
  ScratchDir dir;
  // Global row 50 is shard 1 row 13; global row 400 is shard 10 row 30.
  MakeIdDataset(dir.path(), DType::kF32,
                {{50, std::numeric_limits<float>::quiet_NaN()}, {400, std::numeric_limits<float>::infinity()}});
  StreamOptions o;
  o.shuffle_window_rows = 1;
  {
    auto s = OpenOrDie(dir.path(), o);
    ASSERT_TRUE(s);
    std::vector<float> out;
    ASSERT_TRUE(s->Next(50, &out).ok());  // rows before the bad one are fine
    absl::Status st = s->Next(10, &out);
    ASSERT_FALSE(st.ok());
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(st.message().find(ShardPath(dir.path(), 1)), std::string::npos) << st;
    EXPECT_NE(st.message().find("row 13 "), std::string::npos) << st;
    EXPECT_EQ(s->Next(1, &out), st);
  }
  {
    o.start_row = 51;  // past the NaN: the next bad row is the Inf
    auto s = OpenOrDie(dir.path(), o);
    ASSERT_TRUE(s);
    std::vector<float> out;
    ASSERT_TRUE(s->Next(400 - 51, &out).ok());
    absl::Status st = s->Next(1, &out);
    EXPECT_NE(st.message().find(ShardPath(dir.path(), 10)), std::string::npos) << st;
    EXPECT_NE(st.message().find("row 30 "), std::string::npos) << st;
    EXPECT_NE(st.message().find("inf"), std::string::npos) << st;
  }
  {
    o.start_row = 0;
    o.shuffle_window_rows = 128;
    auto s = OpenOrDie(dir.path(), o);
    ASSERT_TRUE(s);
    std::vector<float> out;
    absl::Status st;
    int64_t good = 0;
    while ((st = s->Next(1, &out)).ok() && good < kRows) ++good;
    ASSERT_FALSE(st.ok());
    EXPECT_LT(good, kRows - 1);
    const bool names_nan = st.message().find(ShardPath(dir.path(), 1) + ": row 13 ") != std::string::npos;
    const bool names_inf = st.message().find(ShardPath(dir.path(), 10) + ": row 30 ") != std::string::npos;
    EXPECT_TRUE(names_nan || names_inf) << st;
  }
}

TEST(ActivationStreamTest, ReadFailureInPrefetchThreadIsReturnedByNext) {
  ScratchDir dir;
  MakeIdDataset(dir.path());
  StreamOptions o;
  o.shuffle_window_rows = 64;
  o.prefetch_windows = 1;
  auto s = OpenOrDie(dir.path(), o);
  ASSERT_TRUE(s);
  std::vector<float> out;
  ASSERT_TRUE(s->Next(1, &out).ok());
  // Truncate every shard in place; the open descriptors see the short files.
  for (int i = 0; i < 14; ++i) WriteBytes(ShardPath(dir.path(), i), "x");
  absl::Status st;
  for (int i = 0; i < 2 * kRows && st.ok(); ++i) st = s->Next(1, &out);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
  EXPECT_EQ(st.message().rfind("shard " + dir.path() + "/shard-", 0), 0u) << st;
  // Caught by the change check before a read, or by the read itself.
  EXPECT_TRUE(st.message().find("changed during the run") != std::string::npos ||
              st.message().find("truncated") != std::string::npos)
      << st;
  EXPECT_EQ(s->Next(1, &out), st);
}

// A shard rewritten in place after the stream read (and verified) it, same
// size, other bytes: the next read of it is an error naming it, not a silent
// read of unverified data.
TEST(ActivationStreamTest, AShardChangedDuringTheRunIsDataLoss) {
  ScratchDir dir;
  MakeIdDataset(dir.path());
  StreamOptions o;
  o.shuffle_window_rows = 1;
  o.verify_checksums = true;
  auto s = OpenOrDie(dir.path(), o);
  ASSERT_TRUE(s);
  std::vector<float> out;
  ASSERT_TRUE(s->Next(kRows, &out).ok());                      // shard 0, verified
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // a later modification time
  const std::string shard = ShardPath(dir.path(), 0);
  FlipByte(shard, ReadBytes(shard).size() - 2);
  absl::Status st;
  for (int i = 0; i < 40 && st.ok(); ++i) st = s->Next(kRows, &out);  // on into the next epoch
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
  EXPECT_NE(st.message().find(shard), std::string::npos) << st;
  EXPECT_NE(st.message().find("changed during the run"), std::string::npos) << st;
}

TEST(ActivationStreamTest, DestructorStopsThePrefetchThreadMidStream) {
  ScratchDir dir;
  MakeIdDataset(dir.path());
  auto done = std::async(std::launch::async, [&] {
    for (int trial = 0; trial < 20; ++trial) {
      StreamOptions o;
      o.shuffle_window_rows = 16;
      o.prefetch_windows = 1 + trial % 3;
      o.seed = trial;
      auto s = ActivationStream::Open(dir.path(), o);
      if (!s.ok()) return false;
      if (trial % 2 == 1) {  // mid-stream: the producer is blocked on a full queue
        std::vector<float> out;
        if (!(*s)->Next(5 + trial, &out).ok()) return false;
      }
      // Destroyed here, possibly while the producer is still reading.
    }
    return true;
  });
  ASSERT_EQ(done.wait_for(std::chrono::seconds(60)), std::future_status::ready) << "stream destructor hung";
  EXPECT_TRUE(done.get());
}

}  // namespace
}  // namespace sae

namespace sae {
namespace {

// Data parallel: each rank's stream hands out exactly its slice of every
// global batch of the one global order, for several world sizes, shuffled or
// not, from the start or resumed mid-epoch.
TEST(ActivationStreamTest, RankSharesPartitionTheGlobalOrder) {
  ScratchDir dir;
  MakeIdDataset(dir.path());
  for (int64_t window : {int64_t{1}, int64_t{64}}) {
    for (int64_t start : {int64_t{0}, int64_t{90}}) {
      StreamOptions o;
      o.shuffle_window_rows = window;
      o.seed = 7;
      o.start_row = start;
      const int64_t batch = 30, steps = 40;  // 1200 rows: crosses two epochs
      auto whole = OpenOrDie(dir.path(), o);
      ASSERT_TRUE(whole);
      const std::vector<int64_t> global = ReadIds(whole.get(), batch * steps, batch);
      for (int world : {2, 3, 4}) {
        std::vector<std::vector<int64_t>> per_rank(world);
        for (int r = 0; r < world; ++r) {
          StreamOptions ro = o;
          ro.rank = r;
          ro.world = world;
          ro.batch_rows = batch;
          auto s = OpenOrDie(dir.path(), ro);
          ASSERT_TRUE(s);
          std::vector<float> out;
          for (int64_t step = 0; step < steps; ++step) {
            ASSERT_TRUE(s->Next(batch, &out).ok());
            const int64_t lo = batch * r / world, hi = batch * (r + 1) / world;
            ASSERT_EQ(out.size(), static_cast<size_t>((hi - lo) * kD));
            for (int64_t i = 0; i < hi - lo; ++i) {
              EXPECT_EQ(static_cast<int64_t>(out[i * kD]), global[step * batch + lo + i])
                  << "window " << window << " start " << start << " world " << world << " rank " << r << " step "
                  << step << " row " << i;
            }
          }
          EXPECT_EQ(s->position(), start + batch * steps);
          EXPECT_FALSE(s->Next(batch - 1, &out).ok());  // only whole global batches
        }
      }
    }
  }
}

// A rank reads only its own rows: a NaN in a row that rank 1 owns is
// reported by rank 1 and never seen by rank 0.
TEST(ActivationStreamTest, RankReadsOnlyItsOwnRows) {
  ScratchDir dir;
  // Unshuffled, batch 10, world 2: rank 1 owns rows 5..9 of every batch.
  MakeIdDataset(dir.path(), DType::kF32, {{47, std::numeric_limits<float>::quiet_NaN()}});
  StreamOptions o;
  o.shuffle_window_rows = 1;
  o.world = 2;
  o.batch_rows = 10;
  std::vector<float> out;
  o.rank = 0;
  auto r0 = OpenOrDie(dir.path(), o);
  ASSERT_TRUE(r0);
  for (int step = 0; step < kRows / 10; ++step) ASSERT_TRUE(r0->Next(10, &out).ok()) << step;
  o.rank = 1;
  auto r1 = OpenOrDie(dir.path(), o);
  ASSERT_TRUE(r1);
  for (int step = 0; step < 4; ++step) ASSERT_TRUE(r1->Next(10, &out).ok());
  absl::Status st = r1->Next(10, &out);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find(ShardPath(dir.path(), 1) + ": row 10 "), std::string::npos) << st;
  o.rank = 2;
  EXPECT_FALSE(ActivationStream::Open(dir.path(), o).ok());
}

}  // namespace
}  // namespace sae
