// Fixtures shared by the tests that train SAEs (sae::testing): a trainer
// configuration by its shape, and planted-dictionary data. Header-only.
#pragma once

#include <cstdint>

#include "core/data/synthetic.h"
#include "core/sae/trainer.h"

namespace sae::testing {

// d_in -> latents with a constant k, over total_tokens in batches of
// batch_tokens; every other field at its default (set a schedule after).
inline TrainerOptions ConstantKTrainer(int64_t d_in, int64_t latents, int64_t k, int64_t total_tokens,
                                       int64_t batch_tokens) {
  TrainerOptions o;
  o.d_in = d_in;
  o.latents = latents;
  o.k = k;
  o.schedule = KSchedule::Constant(k);
  o.total_tokens = total_tokens;
  o.batch_tokens = batch_tokens;
  return o;
}

// Rows of k of `atoms` planted unit atoms in d_in dimensions, plus noise
// (core/data/synthetic.h); the options must be valid.
inline PlantedDictionary Planted(int64_t d_in, int64_t atoms, int64_t k, uint64_t seed,
                                 double noise = SyntheticOptions().noise) {
  SyntheticOptions so;
  so.d_in = d_in;
  so.atoms = atoms;
  so.k = k;
  so.seed = seed;
  so.noise = noise;
  return PlantedDictionary::Create(so).value();
}

}  // namespace sae::testing
