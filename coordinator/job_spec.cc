#include "coordinator/job_spec.h"

#include <yaml-cpp/yaml.h>

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/base/file_util.h"

namespace sae {

v1::JobSpec JobSpecFromConfig(const JobConfig& c) {
  v1::JobSpec s;
  s.set_name(c.name);
  s.set_output(c.output);
  auto* d = s.mutable_data();
  d->set_kind(c.data.kind);
  d->set_path(c.data.path);
  d->set_shuffle_buffer_rows(c.data.shuffle_buffer_rows);
  d->set_d_in(c.data.d_in);
  d->set_latents(c.data.latents);
  d->set_k(c.data.k);
  d->set_seed(c.data.seed);
  d->set_noise(c.data.noise);
  d->set_frequency_decay(c.data.frequency_decay);
  d->set_model(c.data.model);
  d->set_layer(c.data.layer);
  d->set_corpus(c.data.corpus);
  d->set_context(c.data.context);
  auto* a = s.mutable_sae();
  a->set_latents(c.sae.latents);
  a->set_expansion_factor(c.sae.expansion_factor);
  a->set_k(c.sae.k);
  auto* ks = a->mutable_k_schedule();
  ks->set_enabled(c.sae.k_schedule.enabled);
  ks->set_start(c.sae.k_schedule.start);
  ks->set_end(c.sae.k_schedule.end);
  ks->set_fraction(c.sae.k_schedule.fraction);
  ks->set_shape(c.sae.k_schedule.shape);
  a->set_dead_window_tokens(c.sae.dead_window_tokens);
  a->set_dead_remedy(c.sae.dead_remedy);
  a->set_aux_coefficient(c.sae.aux_coefficient);
  a->set_normalize(c.sae.normalize);
  a->set_init_b_dec(c.sae.init_b_dec);
  auto* t = s.mutable_train();
  t->set_tokens(c.train.tokens);
  t->set_batch_tokens(c.train.batch_tokens);
  t->set_lr(c.train.lr);
  t->set_warmup_fraction(c.train.warmup_fraction);
  t->set_lr_decay(c.train.lr_decay);
  t->set_decay_start_fraction(c.train.decay_start_fraction);
  t->set_grad_clip(c.train.grad_clip);
  t->set_seed(c.train.seed);
  t->set_precision(c.train.precision);
  t->set_checkpoint_every_tokens(c.train.checkpoint_every_tokens);
  t->set_log_every_steps(c.train.log_every_steps);
  t->set_device(c.train.device);
  t->set_threads(c.train.threads);
  auto* w = s.mutable_world();
  w->set_workers(c.world.workers);
  w->set_backend(c.world.backend);
  w->set_timeout_seconds(c.world.timeout_seconds);
  return s;
}

JobConfig JobConfigFromSpec(const v1::JobSpec& s) {
  JobConfig c;
  c.name = s.name();
  c.output = s.output();
  const auto& d = s.data();
  c.data.kind = d.kind();
  c.data.path = d.path();
  c.data.shuffle_buffer_rows = d.shuffle_buffer_rows();
  c.data.d_in = d.d_in();
  c.data.latents = d.latents();
  c.data.k = d.k();
  c.data.seed = d.seed();
  c.data.noise = d.noise();
  c.data.frequency_decay = d.frequency_decay();
  c.data.model = d.model();
  c.data.layer = d.layer();
  c.data.corpus = d.corpus();
  c.data.context = d.context();
  const auto& a = s.sae();
  c.sae.latents = a.latents();
  c.sae.expansion_factor = a.expansion_factor();
  c.sae.k = a.k();
  c.sae.k_schedule.enabled = a.k_schedule().enabled();
  c.sae.k_schedule.start = a.k_schedule().start();
  c.sae.k_schedule.end = a.k_schedule().end();
  c.sae.k_schedule.fraction = a.k_schedule().fraction();
  c.sae.k_schedule.shape = a.k_schedule().shape();
  c.sae.dead_window_tokens = a.dead_window_tokens();
  c.sae.dead_remedy = a.dead_remedy();
  c.sae.aux_coefficient = a.aux_coefficient();
  c.sae.normalize = a.normalize();
  c.sae.init_b_dec = a.init_b_dec();
  const auto& t = s.train();
  c.train.tokens = t.tokens();
  c.train.batch_tokens = t.batch_tokens();
  c.train.lr = t.lr();
  c.train.warmup_fraction = t.warmup_fraction();
  c.train.lr_decay = t.lr_decay();
  c.train.decay_start_fraction = t.decay_start_fraction();
  c.train.grad_clip = t.grad_clip();
  c.train.seed = t.seed();
  c.train.precision = t.precision();
  c.train.checkpoint_every_tokens = t.checkpoint_every_tokens();
  c.train.log_every_steps = t.log_every_steps();
  c.train.device = t.device();
  c.train.threads = t.threads();
  c.world.workers = s.world().workers();
  c.world.backend = s.world().backend();
  c.world.timeout_seconds = s.world().timeout_seconds();
  return c;
}

absl::StatusOr<std::pair<JobConfig, std::vector<v1::SweepAxis>>> ParseJobWithSweep(const std::string& yaml,
                                                                                   const std::string& origin) {
  std::vector<v1::SweepAxis> axes;
  std::string text = yaml;
  try {
    YAML::Node root = YAML::Load(yaml);
    if (root.IsMap() && root["sae"] && root["sae"].IsMap()) {
      YAML::Node sae = root["sae"];
      for (auto it = sae.begin(); it != sae.end(); ++it) {
        if (!it->second.IsSequence()) continue;
        const std::string field = it->first.as<std::string>();
        if (it->second.size() == 0)
          return absl::InvalidArgumentError(absl::StrCat(origin, ": sae.", field, ": an empty list of values"));
        v1::SweepAxis axis;
        axis.set_field(field);
        const YAML::Node values = it->second;
        for (const auto& v : values) {
          if (!v.IsScalar())
            return absl::InvalidArgumentError(
                absl::StrCat(origin, ": sae.", field, ": a sweep lists plain values"));
          axis.add_values(v.as<std::string>());
        }
        axes.push_back(axis);
      }
      for (const auto& axis : axes) sae[axis.field()] = axis.values(0);
      text = YAML::Dump(root);
    }
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(origin, ": invalid YAML: ", e.what()));
  }
  SAE_ASSIGN_OR_RETURN(JobConfig cfg, ParseJobConfig(text, origin));
  return std::make_pair(cfg, axes);
}

absl::StatusOr<std::pair<JobConfig, std::vector<v1::SweepAxis>>> LoadJobFileWithSweep(const std::string& path) {
  SAE_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  auto r = ParseJobWithSweep(text, path);
  if (r.ok()) r->first.source_path = path;
  return r;
}

absl::StatusOr<std::vector<SweepVariant>> ExpandSweep(const JobConfig& base,
                                                      const std::vector<v1::SweepAxis>& axes) {
  std::vector<SweepVariant> out;
  if (axes.empty()) return out;
  size_t combos = 1;
  for (const auto& a : axes) {
    if (a.values_size() == 0)
      return absl::InvalidArgumentError(absl::StrCat("sweep: sae.", a.field(), ": no values"));
    combos *= a.values_size();
    if (combos > 256) return absl::InvalidArgumentError("sweep: more than 256 variants");
  }
  const std::string base_yaml = JobConfigToYaml(base);
  try {
  for (size_t c = 0; c < combos; ++c) {
    YAML::Node root = YAML::Load(base_yaml);
    std::vector<std::string> parts;
    size_t rest = c;
    for (const auto& a : axes) {
      const std::string& v = a.values(static_cast<int>(rest % a.values_size()));
      rest /= a.values_size();
      if (a.field().empty() || a.field().find_first_not_of("abcdefghijklmnopqrstuvwxyz_") != std::string::npos)
        return absl::InvalidArgumentError(absl::StrCat("sweep: sae.", a.field(), ": not a field name"));
      if (a.field() == "latents") root["sae"].remove("expansion_factor");
      if (a.field() == "expansion_factor") root["sae"].remove("latents");
      root["sae"][a.field()] = v;
      std::string vs = v;
      for (char& ch : vs)
        if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '.' && ch != '_') ch = '_';
      parts.push_back(absl::StrCat(a.field(), "-", vs));
    }
    const std::string suffix = absl::StrJoin(parts, "_");
    root["name"] = absl::StrCat(base.name, "-", suffix);
    root["output"] = absl::StrCat(base.output, "/", suffix);
    SAE_ASSIGN_OR_RETURN(JobConfig cfg, ParseJobConfig(YAML::Dump(root), absl::StrCat("sweep variant ", suffix)));
    out.push_back({suffix, cfg});
  }
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("sweep: ", e.what()));
  }
  return out;
}

absl::StatusOr<std::string> ResolveUnderRoot(const std::string& field, const std::string& path,
                                             const std::string& root) {
  namespace fs = std::filesystem;
  if (path.empty()) return absl::InvalidArgumentError(absl::StrCat(field, ": empty path"));
  const fs::path p(path);
  for (const auto& part : p)
    if (part == "..")
      return absl::InvalidArgumentError(absl::StrCat(field, ": '", path, "' contains '..'"));
  if (root.empty()) return path;
  const fs::path r = fs::path(root).lexically_normal();
  const fs::path n = p.is_relative() ? (r / p).lexically_normal() : p.lexically_normal();
  // Lexically under the root, and still under it once symbolic links are
  // resolved (for a path that does not exist yet, its existing parent).
  auto under = [](const fs::path& x, const fs::path& base) {
    auto bi = base.begin(), xi = x.begin();
    for (; bi != base.end(); ++bi, ++xi) {
      if (bi->empty()) continue;  // trailing separator of the root
      if (xi == x.end() || *bi != *xi) return false;
    }
    return true;
  };
  const auto outside = [&] {
    return absl::InvalidArgumentError(absl::StrCat(field, ": '", path, "' is outside the configured root ", root));
  };
  if (!under(n, r)) return outside();
  if (field == "output" && n.lexically_relative(r) == ".")
    return absl::InvalidArgumentError(absl::StrCat(field, ": '", path, "' is the output root itself; name a directory under it"));
  std::error_code ec1, ec2;
  const fs::path real_root = fs::weakly_canonical(r, ec1), real = fs::weakly_canonical(n, ec2);
  if (ec1 || ec2)
    return absl::InvalidArgumentError(absl::StrCat(field, ": '", path, "': cannot resolve: ",
                                                   (ec1 ? ec1 : ec2).message()));
  if (!under(real, real_root))
    return absl::InvalidArgumentError(absl::StrCat(field, ": '", path, "' resolves to ", real.string(),
                                                   ", outside the configured root ", root,
                                                   " (a symbolic link leaves it)"));
  return n.string();
}

}  // namespace sae
