#include "core/sae/encoder_gemm.h"

#include <ATen/Parallel.h>

#include <oneapi/dnnl/dnnl.hpp>

#include <algorithm>
#include <vector>

namespace sae::internal {

struct EncoderGemm::Impl {
  dnnl::engine eng{dnnl::engine::kind::cpu, 0};
  dnnl::stream strm{eng};
  int64_t n = 0, d = 0;
  struct Prim {
    int64_t rows = 0;
    dnnl::matmul prim;
    dnnl::memory::desc w_desc;
    int w_index = 0;  // into w_mems
  };
  std::vector<Prim> prims;
  std::vector<dnnl::memory> w_mems;  // W in each distinct weights layout
  std::vector<dnnl::memory::desc> w_descs;
  std::vector<float> bias;
  size_t scratch_bytes = 0;
  std::vector<std::vector<uint8_t>> scratch;  // per slot
  std::string impl_info;
};

EncoderGemm::EncoderGemm() : impl_(std::make_unique<Impl>()) {}
EncoderGemm::~EncoderGemm() = default;

absl::Status EncoderGemm::SetWeights(const float* W, const float* b, int64_t n, int64_t d, const int64_t* row_counts,
                                     int n_row_counts) {
  Impl& m = *impl_;
  using dt = dnnl::memory::data_type;
  using tag = dnnl::memory::format_tag;
  try {
    bool same = m.n == n && m.d == d && static_cast<int>(m.prims.size()) == n_row_counts;
    for (int i = 0; same && i < n_row_counts; ++i) same = m.prims[i].rows == row_counts[i];
    if (!same) {
      m.prims.clear();
      m.w_mems.clear();
      m.w_descs.clear();
      m.scratch_bytes = 0;
      m.n = n;
      m.d = d;
      dnnl::primitive_attr attr;
      attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
      for (int i = 0; i < n_row_counts; ++i) {
        const int64_t rows = row_counts[i];
        dnnl::memory::desc src({rows, d}, dt::f32, tag::ab);
        dnnl::memory::desc w_any({d, n}, dt::f32, tag::any);
        dnnl::memory::desc bias_md({1, n}, dt::f32, tag::ab);
        dnnl::memory::desc dst({rows, n}, dt::f32, tag::ab);
        dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src, w_any, bias_md, dst), attr, m.eng);
        Impl::Prim p;
        p.rows = rows;
        p.prim = dnnl::matmul(pd);
        p.w_desc = pd.weights_desc();
        const auto it = std::find(m.w_descs.begin(), m.w_descs.end(), p.w_desc);
        if (it == m.w_descs.end()) {
          m.w_descs.push_back(p.w_desc);
          m.w_mems.emplace_back(p.w_desc, m.eng);
          p.w_index = static_cast<int>(m.w_descs.size()) - 1;
        } else {
          p.w_index = static_cast<int>(it - m.w_descs.begin());
        }
        m.scratch_bytes = std::max(m.scratch_bytes, pd.scratchpad_desc().get_size());
        if (i == 0) m.impl_info = pd.impl_info_str();
        m.prims.push_back(std::move(p));
      }
    }
    const int slots = std::max(at::get_num_threads(), 1) + 1;
    if (static_cast<int>(m.scratch.size()) < slots) m.scratch.resize(static_cast<size_t>(slots));
    for (auto& s : m.scratch)
      if (s.size() < m.scratch_bytes) s.resize(m.scratch_bytes);
    // W_enc is n×d row-major: as a d×n matrix, layout "ba".
    dnnl::memory w_user({{d, n}, dt::f32, tag::ba}, m.eng, const_cast<float*>(W));
    for (dnnl::memory& w : m.w_mems) dnnl::reorder(w_user, w).execute(m.strm, w_user, w);
    m.strm.wait();
    m.bias.assign(b, b + n);
  } catch (const dnnl::error& e) {
    return absl::InternalError(
        absl::StrCat("encoder GEMM: oneDNN f32 matmul (", n, " latents, d ", d, "): ", e.what()));
  }
  return absl::OkStatus();
}

absl::Status EncoderGemm::Run(const float* x, int64_t rows, float* z, int slot) {
  Impl& m = *impl_;
  const Impl::Prim* p = nullptr;
  for (const Impl::Prim& q : m.prims)
    if (q.rows == rows) p = &q;
  if (p == nullptr) return absl::InternalError(absl::StrCat("encoder GEMM: no primitive for ", rows, " rows"));
  if (slot < 0 || slot >= static_cast<int>(m.scratch.size()))
    return absl::InternalError(absl::StrCat("encoder GEMM: slot ", slot, " out of range"));
  using dt = dnnl::memory::data_type;
  using tag = dnnl::memory::format_tag;
  try {
    dnnl::memory src({{rows, m.d}, dt::f32, tag::ab}, m.eng, const_cast<float*>(x));
    dnnl::memory dst({{rows, m.n}, dt::f32, tag::ab}, m.eng, z);
    dnnl::memory bias({{1, m.n}, dt::f32, tag::ab}, m.eng, m.bias.data());
    dnnl::memory scratch({{static_cast<int64_t>(m.scratch_bytes)}, dt::u8, tag::a}, m.eng, m.scratch[slot].data());
    // A stream per call: streams are cheap and not meant to be shared between
    // threads that execute at the same time.
    dnnl::stream strm(m.eng);
    p->prim.execute(strm, {{DNNL_ARG_SRC, src},
                           {DNNL_ARG_WEIGHTS, m.w_mems[p->w_index]},
                           {DNNL_ARG_BIAS, bias},
                           {DNNL_ARG_DST, dst},
                           {DNNL_ARG_SCRATCHPAD, scratch}});
    strm.wait();
  } catch (const dnnl::error& e) {
    return absl::InternalError(absl::StrCat("encoder GEMM: oneDNN f32 matmul of ", rows, " rows: ", e.what()));
  }
  return absl::OkStatus();
}

std::string EncoderGemm::Describe() const { return impl_->impl_info; }

}  // namespace sae::internal
