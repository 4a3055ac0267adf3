#include "coordinator/roots.h"

#include <filesystem>

#include "absl/strings/str_cat.h"

namespace sae {

absl::StatusOr<std::string> ResolveUnderRoot(const std::string& field, const std::string& path,
                                             const std::string& root) {
  namespace fs = std::filesystem;
  if (path.empty()) return absl::InvalidArgumentError(absl::StrCat(field, ": empty path"));
  const fs::path p(path);
  for (const auto& part : p)
    if (part == "..") return absl::InvalidArgumentError(absl::StrCat(field, ": '", path, "' contains '..'"));
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
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": '", path, "' is the output root itself; name a directory under it"));
  std::error_code ec1, ec2;
  const fs::path real_root = fs::weakly_canonical(r, ec1), real = fs::weakly_canonical(n, ec2);
  if (ec1 || ec2)
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": '", path, "': cannot resolve: ", (ec1 ? ec1 : ec2).message()));
  if (!under(real, real_root))
    return absl::InvalidArgumentError(absl::StrCat(field, ": '", path, "' resolves to ", real.string(),
                                                   ", outside the configured root ", root,
                                                   " (a symbolic link leaves it)"));
  return n.string();
}

}  // namespace sae
