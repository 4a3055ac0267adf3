#include "client/client.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "core/base/file_util.h"

namespace sae {

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const ClientOptions& opts) {
  if (opts.address.empty() || opts.address.find(':') == std::string::npos)
    return absl::InvalidArgumentError(
        absl::StrCat("--coordinator: '", opts.address, "' is not HOST:PORT (or set SAE_COORDINATOR)"));
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(16 << 20);
  // Reconnect quickly after a coordinator restart: a new connection attempt
  // starts 0.2 s after a failed one, growing to 1 s (gRPC's default backoff
  // grows to minutes).
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  // GRPC_ARG_MIN_RECONNECT_BACKOFF_MS is, despite its name, gRPC's minimum
  // connect timeout: an attempt (TCP connect, then the server's HTTP/2
  // SETTINGS frame) is abandoned after max(this, the current backoff). At
  // 200 ms, an attempt to a coordinator on a loaded machine was abandoned
  // after 0.2 to 1.2 s, again and again ("connection attempt timed out
  // before receiving SETTINGS frame", "tcp handshaker shutdown"): a worker
  // once reached a restarted coordinator 8.7 s after it came up, past its
  // lease. 5 s lets a slow handshake finish, and still bounds an attempt
  // into a network partition (SYNs lost) so that a fresh one starts soon
  // after the network heals. Service.AWorkerAndAClientGetThroughASlowHandshake.
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, kConnectTimeoutMs);
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (!opts.tls_ca.empty()) {
    SAE_ASSIGN_OR_RETURN(std::string ca, ReadFileToString(opts.tls_ca));
    grpc::SslCredentialsOptions so;
    so.pem_root_certs = ca;
    creds = grpc::SslCredentials(so);
  } else {
    creds = grpc::InsecureChannelCredentials();
  }
  return grpc::CreateCustomChannel(opts.address, creds, args);
}

std::unique_ptr<grpc::ClientContext> MakeContext(const ClientOptions& opts, double seconds) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  if (!opts.token.empty()) ctx->AddMetadata("authorization", "Bearer " + opts.token);
  if (seconds > 0) {
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000)));
    ctx->set_wait_for_ready(opts.wait_for_ready);
  }
  return ctx;
}

absl::Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

absl::Status CallError(const grpc::Status& s, const std::string& what, grpc::Channel* channel,
                       const ClientOptions& opts, double seconds) {
  if (s.ok()) return absl::OkStatus();
  const bool connected = channel != nullptr && channel->GetState(false) == GRPC_CHANNEL_READY;
  const std::string within = seconds > 0 ? absl::StrCat(" within ", seconds, " s") : "";
  switch (s.error_code()) {
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      if (!connected)
        return absl::UnavailableError(absl::StrCat(what, ": coordinator ", opts.address, " unreachable: no connection",
                                                   within, " (is sae-coordinator running there?)"));
      return absl::DeadlineExceededError(absl::StrCat(what, ": coordinator ", opts.address, " did not answer", within));
    case grpc::StatusCode::UNAVAILABLE:
      return absl::UnavailableError(
          absl::StrCat(what, ": coordinator ", opts.address, " unavailable: ", s.error_message()));
    default: return Annotate(FromGrpc(s), what);
  }
}

}  // namespace sae
