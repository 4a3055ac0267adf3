// Fuzzes the job file (core/base/config ParseJobConfig, and the sweep form of
// coordinator/job_spec): the input is YAML text. Properties: no crash; a
// config that parses is valid, prints as YAML that parses back to the same
// YAML, survives the JobSpec message round trip, and every sweep variant is
// a valid config; path checks against a root never crash.
#include <cstdint>
#include <string>

#include "client/job_spec.h"
#include "coordinator/roots.h"
#include "core/base/config.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sae;
  if (size > (64 << 10)) return 0;  // job files are small; bounds YAML's own cost
  const std::string yaml(reinterpret_cast<const char*>(data), size);
  auto cfg = ParseJobConfig(yaml, "job.yaml");
  if (cfg.ok()) {
    SAE_FUZZ_CHECK(ValidateJobConfig(*cfg, "job.yaml").ok(), "a parsed config is valid");
    const std::string text = JobConfigToYaml(*cfg);
    auto again = ParseJobConfig(text, "printed");
    SAE_FUZZ_CHECK(again.ok(), again.status().ToString() + "\n" + text);
    SAE_FUZZ_CHECK(JobConfigToYaml(*again) == text, text);
    const auto via_spec = JobConfigFromSpec(JobSpecFromConfig(*cfg), "spec");
    SAE_FUZZ_CHECK(via_spec.ok() && JobConfigToYaml(*via_spec) == text, "JobSpec round trip\n" + text);
    static const std::string root = fuzz::FreshDir("root");
    (void)ResolveUnderRoot("output", cfg->output, root);
    (void)ResolveUnderRoot("data.path", cfg->data.path, root);
    (void)ResolveUnderRoot("data.model", cfg->data.model, "");
  }
  auto sweep = ParseJobWithSweep(yaml, "sweep.yaml");
  if (sweep.ok() && !sweep->second.empty()) {
    auto variants = ExpandSweep(sweep->first, sweep->second);
    if (variants.ok()) {
      for (const auto& v : *variants)
        SAE_FUZZ_CHECK(ValidateJobConfig(v.config, v.suffix).ok(), "a sweep variant is valid");
    }
  }
  return 0;
}
