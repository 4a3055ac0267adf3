// The BLAS kernel choice (core/base/blas_kernel.h). test_base links no BLAS,
// so here OpenBLAS is absent; the choice with OpenBLAS present is checked in
// test_sae_step (BlasKernel.*), which runs on the kernel it reports.
#include "core/base/blas_kernel.h"

#include <gtest/gtest.h>

namespace sae {
namespace {

TEST(BlasKernel, CoreLevelsOrderTheInstructionSets) {
  EXPECT_EQ(BlasCoreLevel("SkylakeX"), 3);
  EXPECT_EQ(BlasCoreLevel("skylakex"), 3);
  EXPECT_EQ(BlasCoreLevel("Cooperlake"), 3);
  EXPECT_EQ(BlasCoreLevel("Haswell"), 2);
  EXPECT_EQ(BlasCoreLevel("Zen"), 2);
  EXPECT_EQ(BlasCoreLevel("Sandybridge"), 1);
  EXPECT_EQ(BlasCoreLevel("Prescott"), 0);
  EXPECT_EQ(BlasCoreLevel("Nehalem"), 0);
  EXPECT_EQ(BlasCoreLevel(""), 0);
}

TEST(BlasKernel, CpuBestFollowsCpuid) {
  const std::string best = CpuBestBlasCore();
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq"))
    EXPECT_EQ(best, __builtin_cpu_supports("avx512bf16") ? "Cooperlake" : "SkylakeX");
  else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    EXPECT_EQ(best, "Haswell");
  else
    EXPECT_NE(best, "SkylakeX");
}

TEST(BlasKernel, WithoutOpenBlasNothingChanges) {
  const BlasKernel& k = CurrentBlasKernel();
  if (k.library != "none") GTEST_SKIP() << "this binary has OpenBLAS: " << k.Describe();
  EXPECT_EQ(k.core, "");
  EXPECT_EQ(k.Describe(), "no OpenBLAS");
}

}  // namespace
}  // namespace sae
