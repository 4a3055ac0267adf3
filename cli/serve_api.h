// The JSON API of `sae serve` (docs/api.md) without the HTTP: each method
// takes the request's query or parsed body and returns a status code and a
// JSON body; errors are 4xx with {"error": message, "field": name}. The
// model, tokenizer, SAE and dashboards are loaded once and only read, so the
// methods are safe to call from several threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>

#include "core/interp/features.h"
#include "core/interp/sae_run.h"
#include "core/lm/model.h"
#include "core/lm/tokenizer.h"

namespace sae {

struct ApiReply {
  int status = 200;
  nlohmann::json body;
};

struct ApiLimits {
  int64_t max_texts = 64;     // concepts: texts (and contrast texts) per request
  int64_t max_steps = 256;    // generate: positions, prompt included
  int64_t max_terms = 16;     // generate: steering terms
  double max_scale = 1000;    // |scale|
  int64_t max_results = 200;  // search/concepts results
};

class ServeApi {
 public:
  // `features` may be null (the feature browser and relative clamp then answer 409).
  ServeApi(std::string model_path, std::unique_ptr<Transformer> model, std::unique_ptr<Tokenizer> tok, SaeRun run,
           std::unique_ptr<FeatureSet> features, ApiLimits limits = {});
  ApiReply Info() const;
  ApiReply Feature(const std::string& latent) const;                      // GET /api/feature?latent=J
  ApiReply Search(const std::string& q, const std::string& limit) const;  // GET /api/search?q=TEXT
  ApiReply Activations(const nlohmann::json& body) const;                 // POST /api/activations
  ApiReply Generate(const nlohmann::json& body) const;                    // POST /api/generate
  ApiReply Concepts(const nlohmann::json& body) const;                    // POST /api/concepts
  const Transformer& model() const { return *model_; }

 private:
  std::string model_path_;
  std::unique_ptr<Transformer> model_;
  std::unique_ptr<Tokenizer> tok_;
  SaeRun run_;
  std::unique_ptr<FeatureSet> features_;
  ApiLimits limits_;
  // The default contrast set (model samples), computed on first use.
  mutable std::once_flag contrast_once_;
  mutable absl::StatusOr<std::vector<std::vector<int32_t>>> contrast_;
};

ApiReply ApiError(int status, const std::string& field, const std::string& message);

}  // namespace sae
