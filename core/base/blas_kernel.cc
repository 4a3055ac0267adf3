#include "core/base/blas_kernel.h"

#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/base/logging.h"

namespace sae {
namespace {

// Set in the environment before the re-exec: the pid that re-executed (the
// pid survives execv; children of it see another pid and do not log again)
// what OpenBLAS had chosen by itself and the OPENBLAS_CORETYPE set. Children
// inherit all but the pid: a child whose OPENBLAS_CORETYPE is still the one
// set here runs saeforge's choice, one given another value runs the user's.
constexpr char kReexecPid[] = "SAE_BLAS_REEXEC_PID";
constexpr char kChosenFrom[] = "SAE_BLAS_CHOSEN_FROM";
constexpr char kSetTo[] = "SAE_BLAS_SET_TO";

std::string OpenBlasCore() {
  using Fn = char* (*)();
  auto fn = reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  if (fn == nullptr) return "";
  const char* s = fn();
  std::string out = s ? s : "";
  while (!out.empty() && std::isspace(static_cast<unsigned char>(out.back()))) out.pop_back();
  return out;
}

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

BlasKernel Detect() {
  BlasKernel k;
  k.core = OpenBlasCore();
  k.library = k.core.empty() ? "none" : "OpenBLAS";
  k.cpu_best = CpuBestBlasCore();
  const char* user = std::getenv("OPENBLAS_CORETYPE");
  const char* from = std::getenv(kChosenFrom);
  const char* set_to = std::getenv(kSetTo);
  if (k.core.empty()) {
    k.source = "unchanged";
    k.note = "no OpenBLAS in this process";
  } else if (from != nullptr && user != nullptr && set_to != nullptr && std::strcmp(user, set_to) == 0) {
    k.source = "saeforge";
    k.note = std::string("OpenBLAS chose ") + from;
  } else if (user != nullptr && *user != '\0') {
    k.source = "user";
    k.note = std::string("OPENBLAS_CORETYPE=") + user;
  } else if (BlasCoreLevel(k.core) >= BlasCoreLevel(k.cpu_best)) {
    k.source = "openblas";
  } else {
    k.source = "unchanged";
    k.note = "re-exec not done (ChooseBlasKernel not called first, or execv failed)";
  }
  return k;
}

BlasKernel& Current() {
  static BlasKernel k = Detect();
  return k;
}

}  // namespace

std::string BlasKernel::Describe() const {
  if (library == "none") return "no OpenBLAS";
  std::string s = library + " " + core + " (" + source;
  if (!note.empty()) s += "; " + note;
  if (BlasCoreLevel(core) < BlasCoreLevel(cpu_best)) s += "; the CPU allows " + cpu_best;
  return s + ")";
}

int BlasCoreLevel(const std::string& core) {
  const std::string c = Lower(core);
  if (c == "skylakex" || c == "cooperlake" || c == "sapphirerapids") return 3;
  if (c == "haswell" || c == "zen") return 2;
  if (c == "sandybridge" || c == "bulldozer" || c == "piledriver" || c == "steamroller" || c == "excavator") return 1;
  return 0;
}

std::string CpuBestBlasCore() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq"))
    return __builtin_cpu_supports("avx512bf16") ? "Cooperlake" : "SkylakeX";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
  if (__builtin_cpu_supports("avx")) return "Sandybridge";
#endif
  return "";
}

void ChooseBlasKernel(int argc, char** argv, bool announce) {
  (void)argc;
  const char* pid_s = std::getenv(kReexecPid);
  if (pid_s != nullptr) {
    // After our own execv (same pid): say once what was chosen.
    const bool mine = std::atoi(pid_s) == static_cast<int>(getpid());
    unsetenv(kReexecPid);
    if (mine && announce) {
      const BlasKernel& k = Current();
      SAE_LOG(kInfo) << "BLAS kernel: " << k.Describe();
    }
    return;
  }
  const char* user = std::getenv("OPENBLAS_CORETYPE");
  if (user != nullptr && *user != '\0') return;  // the user's choice stands
  std::string core = OpenBlasCore();
  if (core.empty()) return;
  // Tests only: act as if OpenBLAS had chosen this core (the re-exec path
  // cannot be reached otherwise on a CPU that OpenBLAS detects correctly).
  if (const char* pretend = std::getenv("SAE_BLAS_PRETEND_CORE")) core = pretend;
  const std::string best = CpuBestBlasCore();
  if (best.empty() || BlasCoreLevel(core) >= BlasCoreLevel(best)) return;
  setenv("OPENBLAS_CORETYPE", best.c_str(), 1);
  setenv(kChosenFrom, core.c_str(), 1);
  setenv(kSetTo, best.c_str(), 1);
  setenv(kReexecPid, std::to_string(getpid()).c_str(), 1);
  execv("/proc/self/exe", argv);
  // execv failed: run on OpenBLAS's own choice, and say so.
  unsetenv("OPENBLAS_CORETYPE");
  unsetenv(kChosenFrom);
  unsetenv(kSetTo);
  unsetenv(kReexecPid);
  SAE_LOG(kWarn) << "BLAS kernel: OpenBLAS chose " << core << " on a CPU that allows " << best
                 << "; re-executing with OPENBLAS_CORETYPE=" << best << " failed: " << std::strerror(errno)
                 << " (set OPENBLAS_CORETYPE yourself)";
}

const BlasKernel& CurrentBlasKernel() { return Current(); }

}  // namespace sae
