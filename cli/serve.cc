#include "cli/serve.h"

#include <httplib.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "cli/flags.h"
#include "cli/model_flags.h"
#include "cli/serve_api.h"
#include "cli/web_assets.h"
#include "core/base/exit_code.h"
#include "core/base/file_util.h"
#include "core/interp/interp_json.h"
#include "core/lm/loaders.h"

namespace sae {
namespace {

using json = nlohmann::json;

struct ServeArgs {
  std::string model, tokenizer, sae, listen = "127.0.0.1:8080", token_file;
  int64_t layer = -1;
  size_t max_body = 256 * 1024;
  int threads = 8;
};

bool IsLoopback(const std::string& host) { return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0; }

void Reply(httplib::Response& res, const ApiReply& r) {
  res.status = r.status;
  res.set_content(DumpJson(r.body), "application/json; charset=utf-8");
}

httplib::Server* g_server = nullptr;
void OnSignal(int) {
  if (g_server) g_server->stop();
}

// Splits --listen HOST:PORT (HOST may be [v6]; empty means 127.0.0.1).
absl::Status ParseListen(const std::string& listen, std::string* host, int* port) {
  const size_t colon = listen.rfind(':');
  *port = -1;
  *host = colon == std::string::npos ? "" : listen.substr(0, colon);
  if (colon == std::string::npos || !absl::SimpleAtoi(listen.substr(colon + 1), port) || *port < 0 || *port > 65535)
    return absl::InvalidArgumentError(absl::StrCat("--listen '", listen, "' is not HOST:PORT"));
  if (!host->empty() && host->front() == '[' && host->back() == ']') *host = host->substr(1, host->size() - 2);
  if (host->empty()) *host = "127.0.0.1";
  return absl::OkStatus();
}

// The bearer token from --token-file ("" when none is given); off loopback
// one is required.
absl::StatusOr<std::string> ReadToken(const ServeArgs& a, const std::string& host) {
  std::string token;
  if (!a.token_file.empty()) {
    auto t = ReadFileToString(a.token_file);
    if (!t.ok()) return t.status();
    token = std::string(absl::StripAsciiWhitespace(*t));
    if (token.size() < 16) return absl::InvalidArgumentError(a.token_file + ": the token must have >= 16 characters");
  }
  if (!IsLoopback(host) && token.empty())
    return absl::InvalidArgumentError(
        absl::StrCat("--listen ", a.listen,
                     " is not a loopback address: give --token-file so that only holders of the token "
                     "can use the API"));
  return token;
}

// The dashboards built for the SAE run (in the run directory or its
// features/ folder); null when there are none.
absl::StatusOr<std::unique_ptr<FeatureSet>> LoadDashboardsFor(const std::string& sae_dir, const SaeRun& run) {
  for (const std::string& dir : {sae_dir, sae_dir + "/features"}) {
    if (!std::filesystem::exists(dir + "/features.json")) continue;
    auto f = LoadFeatures(dir);
    if (!f.ok()) return f.status();
    if (f->latents != run.latents())
      return absl::InvalidArgumentError(dir + "/features.json: its latent count differs from the SAE's");
    return std::make_unique<FeatureSet>(std::move(*f));
  }
  std::fprintf(stderr, "note: %s has no dashboards (sae features build); the feature browser is empty\n",
               sae_dir.c_str());
  return std::unique_ptr<FeatureSet>();
}

// Thread pool, limits, socket options, and JSON replies for errors and
// exceptions.
void ConfigureServer(httplib::Server& svr, const ServeArgs& a) {
  svr.new_task_queue = [n = a.threads] { return new httplib::ThreadPool(static_cast<size_t>(n)); };
  svr.set_payload_max_length(a.max_body);
  svr.set_read_timeout(10, 0);
  // SO_REUSEADDR only (cpp-httplib's default adds SO_REUSEPORT: a second server
  // could then bind a port already in use).
  svr.set_socket_options([](socket_t sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  svr.set_error_handler([](const httplib::Request&, httplib::Response& res) {
    if (!res.body.empty()) return;
    const char* what = res.status == 413   ? "request body too large"
                       : res.status == 404 ? "not found"
                       : res.status == 400 ? "bad request"
                                           : "error";
    Reply(res, ApiError(res.status, "", what));
  });
  svr.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string msg = "internal error";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      msg = e.what();
    } catch (...) {
    }
    Reply(res, ApiError(500, "", msg));
  });
}

// Bearer token check for the API (when configured). `token` must outlive svr.
void RequireToken(httplib::Server& svr, const std::string& token) {
  svr.set_pre_routing_handler([&token](const httplib::Request& req, httplib::Response& res) {
    if (token.empty() || req.path.rfind("/api/", 0) != 0) return httplib::Server::HandlerResponse::Unhandled;
    const std::string want = "Bearer " + token;
    const std::string got = req.get_header_value("Authorization");
    unsigned diff = got.size() != want.size();
    for (size_t i = 0; i < want.size() && i < got.size(); ++i) diff |= static_cast<unsigned>(got[i] ^ want[i]);
    if (diff == 0) return httplib::Server::HandlerResponse::Unhandled;
    Reply(res, ApiError(401, "Authorization", "missing or wrong bearer token"));
    return httplib::Server::HandlerResponse::Handled;
  });
}

// Static files: only the embedded ones, looked up by exact path.
void AddStaticRoutes(httplib::Server& svr) {
  for (size_t i = 0; i < kWebAssetCount; ++i) {
    const WebAsset* w = &kWebAssets[i];
    auto handler = [w](const httplib::Request&, httplib::Response& res) {
      res.set_content(reinterpret_cast<const char*>(w->data), w->size, w->mime);
      res.set_header("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'");
      res.set_header("X-Content-Type-Options", "nosniff");
    };
    svr.Get(w->path, handler);
    if (std::string(w->path) == "/index.html") svr.Get("/", handler);
  }
}

// The JSON API, answered by `api` (which must outlive svr).
void AddApiRoutes(httplib::Server& svr, const ServeApi& api) {
  auto body_of = [](const httplib::Request& req, json* out) -> std::optional<ApiReply> {
    if (req.body.empty()) return ApiError(400, "body", "the request has no JSON body");
    *out = json::parse(req.body, nullptr, false);
    if (out->is_discarded()) return ApiError(400, "body", "the body is not valid JSON");
    if (!out->is_object()) return ApiError(400, "body", "the body must be a JSON object");
    return std::nullopt;
  };
  svr.Get("/api/info", [&](const httplib::Request&, httplib::Response& res) { Reply(res, api.Info()); });
  svr.Get("/api/feature", [&](const httplib::Request& req, httplib::Response& res) {
    Reply(res, api.Feature(req.get_param_value("latent")));
  });
  svr.Get("/api/search", [&](const httplib::Request& req, httplib::Response& res) {
    Reply(res, api.Search(req.get_param_value("q"), req.get_param_value("limit")));
  });
  auto post = [&](const char* path, ApiReply (ServeApi::*fn)(const json&) const) {
    svr.Post(path, [&api, body_of, fn](const httplib::Request& req, httplib::Response& res) {
      json body;
      if (auto e = body_of(req, &body)) return Reply(res, *e);
      Reply(res, (api.*fn)(body));
    });
  };
  post("/api/activations", &ServeApi::Activations);
  post("/api/generate", &ServeApi::Generate);
  post("/api/concepts", &ServeApi::Concepts);
}

// Binds host:port (port 0: any free port), prints the address and serves
// until SIGINT/SIGTERM.
int BindAndListen(httplib::Server& svr, const std::string& host, int port, const ServeArgs& a, const ServeApi& api) {
  const std::string bind_host = host.empty() ? "127.0.0.1" : host;
  if (port == 0) {
    port = svr.bind_to_any_port(bind_host);
    if (port < 0) return Fail(absl::UnavailableError("could not bind " + bind_host));
  } else if (!svr.bind_to_port(bind_host, port)) {
    return Fail(absl::UnavailableError(absl::StrCat("could not bind ", bind_host, ":", port, " (in use?)")));
  }
  const std::string shown = bind_host.find(':') != std::string::npos ? "[" + bind_host + "]" : bind_host;
  std::printf("serving %s (layer %ld) on http://%s:%d/\n", a.sae.c_str(), api.Info().body["layer"].get<int64_t>(),
              shown.c_str(), port);
  std::fflush(stdout);
  g_server = &svr;
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  const bool ok = svr.listen_after_bind();
  g_server = nullptr;
  return ok ? 0 : 1;
}

int RunServe(const ServeArgs& a) {
  std::string host;
  int port = -1;
  if (auto s = ParseListen(a.listen, &host, &port); !s.ok()) return Fail(s);
  auto token = ReadToken(a, host);
  if (!token.ok()) return Fail(token.status());
  auto run = OpenSaeRun(a.sae, a.layer);
  if (!run.ok()) return Fail(run.status());
  auto m = LoadModel(a.model);
  if (!m.ok()) return Fail(m.status());
  auto model = std::make_unique<Transformer>(std::move(*m));
  if (auto s = CheckSaeFitsModel(*run, *model); !s.ok()) return Fail(s);
  auto tok = LoadTokenizerFor(a.model, model->config().vocab_size, a.tokenizer);
  if (!tok.ok()) return Fail(tok.status());
  auto feats = LoadDashboardsFor(a.sae, *run);
  if (!feats.ok()) return Fail(feats.status());
  // One LibTorch thread per request: requests run in parallel instead.
  ScopedThreads threads(PreferredThreads(model->config()) > 0 ? 1 : 0);
  const ServeApi api(a.model, std::move(model), std::move(*tok), std::move(*run), std::move(*feats));

  httplib::Server svr;
  ConfigureServer(svr, a);
  RequireToken(svr, *token);
  AddStaticRoutes(svr);
  AddApiRoutes(svr, api);
  return BindAndListen(svr, host, port, a, api);
}

}  // namespace

CommandRunner AddServeCommand(flags::Command* app) {
  auto a = std::make_shared<ServeArgs>();
  flags::Command* s =
      app->AddSubcommand("serve", "web visualizer: feature browser, live activations, steering, concepts");
  AddModelFlags(s, &a->model, &a->tokenizer);
  s->AddOption("--sae", a->sae, "SAE run directory (its dashboards are read from it when built)").Required();
  s->AddOption("--layer", a->layer, "block the SAE reads (default: cfg.json's provenance)");
  s->AddOption("--listen", a->listen, "HOST:PORT (port 0: any free port, printed)");
  s->AddOption("--token-file", a->token_file, "file holding the bearer token; required off loopback");
  s->AddOption("--max-body", a->max_body, "largest request body in bytes");
  s->AddOption("--threads", a->threads, "requests served at once");
  return [=]() -> int { return s->Parsed() ? RunServe(*a) : kNotParsed; };
}

}  // namespace sae
