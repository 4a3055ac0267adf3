// JSON views of the interpretability results, shared by `sae ... --json`
// and the `sae serve` API (docs/api.md). Token pieces are raw strings;
// DumpJson writes invalid UTF-8 as U+FFFD and escapes <, > and & as \u00XX so
// the text is safe to embed in HTML. Stateless.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

#include "core/interp/concepts.h"
#include "core/interp/features.h"
#include "core/interp/sae_run.h"

namespace sae {

std::string DumpJson(const nlohmann::json& j, int indent = -1);

// {"tokens": [piece...], "acts": [...], "center": radius, "token_index", "act"}.
nlohmann::json ContextJson(const FeatureSet& fs, const FeatureContext& c);
// The whole dashboard of latent j (docs/api.md "GET /api/feature").
nlohmann::json DashboardJson(const FeatureSet& fs, int64_t j);
// Each token of a text with its top latents: [{"piece", "top": [[latent, act]...]}].
nlohmann::json TextCodesJson(const TextCodes& t);
nlohmann::json ConceptReportJson(const ConceptReport& r, const FeatureSet* fs, int64_t contexts_per_hit);

}  // namespace sae
