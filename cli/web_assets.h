// The files of web/, embedded at build time (cmake/embed_web.cmake).
#pragma once

#include <cstddef>

namespace sae {

struct WebAsset {
  const char* path;  // "/index.html", "/app.js", ...
  const char* mime;
  const unsigned char* data;
  size_t size;
};
extern const WebAsset kWebAssets[];
extern const size_t kWebAssetCount;

}  // namespace sae
