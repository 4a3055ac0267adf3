// One conformance suite for every Communicator backend. The backend comes
// from SAE_COMM_BACKEND (local, mpi); under mpirun every rank runs the suite
// and each collective's result is checked on every rank.
#include "core/comm/communicator.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <numeric>
#include <vector>

namespace sae {
namespace {

Communicator* g_comm = nullptr;
const absl::Duration kTimeout = absl::Seconds(60);

uint16_t Bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>(u >> 16);  // exact for the values used here
}
float FromBf16(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

TEST(Comm, RankAndSize) {
  EXPECT_GE(g_comm->world_size(), 1);
  EXPECT_GE(g_comm->rank(), 0);
  EXPECT_LT(g_comm->rank(), g_comm->world_size());
  const char* want = std::getenv("SAE_COMM_EXPECT_SIZE");
  if (want) EXPECT_EQ(g_comm->world_size(), std::atoi(want));
}

TEST(Comm, AllReduceFloatSumAvgMinMax) {
  const int r = g_comm->rank(), n = g_comm->world_size();
  const size_t count = 1000003;  // odd, large enough to need several messages
  std::vector<float> v(count);
  for (size_t i = 0; i < count; ++i) v[i] = static_cast<float>((r + 1) * (i % 7));
  ASSERT_TRUE(g_comm->AllReduce(v.data(), count, CommDType::kF32, ReduceOp::kSum, kTimeout).ok());
  const float tri = n * (n + 1) / 2.0f;
  for (size_t i = 0; i < count; i += 9973) ASSERT_EQ(v[i], tri * (i % 7)) << i;

  std::vector<float> a = {static_cast<float>(r), 10.0f * r, -1.0f * r};
  ASSERT_TRUE(g_comm->AllReduce(a.data(), 3, CommDType::kF32, ReduceOp::kAvg, kTimeout).ok());
  EXPECT_FLOAT_EQ(a[0], (n - 1) / 2.0f);
  EXPECT_FLOAT_EQ(a[1], 10.0f * (n - 1) / 2.0f);
  std::vector<float> mn = {static_cast<float>(r) - 3}, mx = {static_cast<float>(r) - 3};
  ASSERT_TRUE(g_comm->AllReduce(mn.data(), 1, CommDType::kF32, ReduceOp::kMin, kTimeout).ok());
  ASSERT_TRUE(g_comm->AllReduce(mx.data(), 1, CommDType::kF32, ReduceOp::kMax, kTimeout).ok());
  EXPECT_EQ(mn[0], -3.0f);
  EXPECT_EQ(mx[0], n - 4.0f);
}

TEST(Comm, AllReduceBf16) {
  const int r = g_comm->rank(), n = g_comm->world_size();
  std::vector<uint16_t> v = {Bf16(1.0f + r), Bf16(0.5f), Bf16(-2.0f * r)};
  ASSERT_TRUE(g_comm->AllReduce(v.data(), 3, CommDType::kBF16, ReduceOp::kSum, kTimeout).ok());
  EXPECT_EQ(FromBf16(v[0]), n + n * (n - 1) / 2.0f);
  EXPECT_EQ(FromBf16(v[1]), 0.5f * n);
  EXPECT_EQ(FromBf16(v[2]), -1.0f * n * (n - 1));
  std::vector<uint16_t> m = {Bf16(static_cast<float>(r))};
  ASSERT_TRUE(g_comm->AllReduce(m.data(), 1, CommDType::kBF16, ReduceOp::kMax, kTimeout).ok());
  EXPECT_EQ(FromBf16(m[0]), n - 1.0f);
}

TEST(Comm, AllReduceIntegersSumAndOr) {
  const int r = g_comm->rank(), n = g_comm->world_size();
  std::vector<int64_t> s = {r + 1, int64_t{1} << 40};
  ASSERT_TRUE(g_comm->AllReduce(s.data(), 2, CommDType::kI64, ReduceOp::kSum, kTimeout).ok());
  EXPECT_EQ(s[0], int64_t{n} * (n + 1) / 2);
  EXPECT_EQ(s[1], int64_t{n} << 40);
  // Dead-latent fire marks: each rank fires latents i with i % n == rank.
  std::vector<uint8_t> fired(37, 0);
  for (size_t i = 0; i < fired.size(); ++i) fired[i] = (static_cast<int>(i) % n == r && i != 36) ? 1 : 0;
  ASSERT_TRUE(g_comm->AllReduce(fired.data(), fired.size(), CommDType::kU8, ReduceOp::kOr, kTimeout).ok());
  for (size_t i = 0; i < 36; ++i) EXPECT_EQ(fired[i], 1) << i;
  EXPECT_EQ(fired[36], 0);
  EXPECT_FALSE(g_comm->AllReduce(s.data(), 2, CommDType::kI64, ReduceOp::kAvg, kTimeout).ok());
  std::vector<float> f(2, 1.0f);
  EXPECT_FALSE(g_comm->AllReduce(f.data(), 2, CommDType::kF32, ReduceOp::kOr, kTimeout).ok());
}

TEST(Comm, BroadcastFromEveryRoot) {
  const int n = g_comm->world_size();
  for (int root = 0; root < n; ++root) {
    std::vector<int32_t> v(100, g_comm->rank() == root ? 1000 + root : -1);
    ASSERT_TRUE(g_comm->Broadcast(v.data(), v.size() * 4, root, kTimeout).ok());
    for (int32_t x : v) ASSERT_EQ(x, 1000 + root);
  }
  EXPECT_FALSE(g_comm->Broadcast(nullptr, 0, n, kTimeout).ok());
}

TEST(Comm, AllGatherAndBarrier) {
  const int r = g_comm->rank(), n = g_comm->world_size();
  int64_t mine[2] = {r, 100 + r};
  std::vector<int64_t> all(2 * n, -1);
  ASSERT_TRUE(g_comm->AllGather(mine, sizeof(mine), all.data(), kTimeout).ok());
  for (int i = 0; i < n; ++i) {
    EXPECT_EQ(all[2 * i], i);
    EXPECT_EQ(all[2 * i + 1], 100 + i);
  }
  EXPECT_TRUE(g_comm->Barrier(kTimeout).ok());
}

TEST(Comm, UnknownBackendAndWrongWorldAreErrors) {
  auto bad = CreateCommunicator("carrier-pigeon");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(std::string(bad.status().message()).find("carrier-pigeon"), std::string::npos);
  CommOptions o;
  o.expected_world_size = g_comm->world_size() + 1;
  auto wrong = CreateCommunicator("local", o);
  EXPECT_FALSE(wrong.ok());
}

}  // namespace
}  // namespace sae

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  const char* backend = std::getenv("SAE_COMM_BACKEND");
  sae::CommOptions opts;
  if (const char* r = std::getenv("SAE_RANK")) opts.rank = std::atoi(r);
  if (const char* w = std::getenv("SAE_WORLD_SIZE")) opts.world_size = std::atoi(w);
  if (const char* a = std::getenv("SAE_RENDEZVOUS")) opts.rendezvous = a;
  opts.timeout = absl::Seconds(60);
  auto comm = sae::CreateCommunicator(backend ? backend : "local", opts);
  if (!comm.ok()) {
    std::fprintf(stderr, "cannot create communicator: %s\n", std::string(comm.status().message()).c_str());
    return 1;
  }
  sae::g_comm = comm->get();
  // Only rank 0 prints; every rank's failures still fail its exit status.
  if ((*comm)->rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  return RUN_ALL_TESTS();  // mpirun exits non-zero when any rank does
}
