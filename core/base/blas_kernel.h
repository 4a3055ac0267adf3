// The BLAS kernel every saeforge process runs its GEMMs on (issue 14 item 0).
//
// Debian's OpenBLAS (DYNAMIC_ARCH) picks its kernel from the CPU model it
// knows; on a CPU newer than the library it falls back to an older kernel
// (0.3.21 runs Haswell kernels on AVX-512 Zen 4 and SSE3 "Prescott" kernels
// on some current Xeons), 1.3-4x slower. ChooseBlasKernel compares what
// OpenBLAS reports (openblas_get_corename) with the instruction set cpuid
// reports and, when OpenBLAS chose an older core and the user did not set
// OPENBLAS_CORETYPE, re-executes the process (same pid, arguments and
// environment) with OPENBLAS_CORETYPE set: OpenBLAS reads it only while the
// library initialises, before main. A value the user set is never changed.
// Torch-free; works (and does nothing) when the process has no OpenBLAS.
// SAE_BLAS_PRETEND_CORE=NAME (tests only) makes it act as if OpenBLAS had
// chosen NAME.
#pragma once

#include <string>

namespace sae {

struct BlasKernel {
  std::string library;   // "OpenBLAS" or "none" (no OpenBLAS in the process)
  std::string core;      // the core OpenBLAS runs now ("" without OpenBLAS)
  std::string cpu_best;  // the newest core the CPU's instruction set allows
  // How the core was chosen: "openblas" (its own detection, already the
  // CPU's best), "saeforge" (re-executed with OPENBLAS_CORETYPE by this
  // function, here or in a parent process), "user" (OPENBLAS_CORETYPE set
  // by the user, kept) or "unchanged" (could not improve: see `note`).
  std::string source;
  std::string note;
  // One line: "OpenBLAS SkylakeX (saeforge; OpenBLAS chose Haswell)".
  std::string Describe() const;
};

// Call first in main, before any thread starts (it may execv and never
// return). Logs the choice once, in the process that made it, unless
// `announce` is false (short commands whose stderr users read beside their
// output: the choice is still made, and CurrentBlasKernel() tells it).
// argv must be main's (null-terminated).
void ChooseBlasKernel(int argc, char** argv, bool announce = true);

// What the process runs on (computed once; ChooseBlasKernel need not have
// been called).
const BlasKernel& CurrentBlasKernel();

// The OpenBLAS core name for the instruction set this CPU reports
// ("SkylakeX" with AVX-512F/BW/VL/DQ, "Cooperlake" with AVX512-BF16 as
// well (SkylakeX's kernels plus bf16 GEMM), "Haswell" with AVX2+FMA,
// "Sandybridge" with AVX, "" otherwise).
std::string CpuBestBlasCore();

// 0-3: the instruction-set level of an OpenBLAS core name (case-insensitive;
// unknown names 0). Exposed for tests.
int BlasCoreLevel(const std::string& core);

}  // namespace sae
