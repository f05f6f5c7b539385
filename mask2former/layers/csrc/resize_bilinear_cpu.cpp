// CPU kernel of mask2former::resize_bilinear (schema in ext.cpp): resize_planes of
// resize_bilinear_kernels.h with the rounding of ATen's own bilinear kernel in use (ATen's CPU
// capability: fused multiply-adds under AVX2 / AVX512, separately rounded products otherwise).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>

#include "resize_bilinear_kernels.h"

namespace mask2former {

bool resize_has_fma_build();
void resize_planes_fma(
    const float* x, int64_t planes, int64_t in_h, int64_t in_w, float* out, int64_t out_h, int64_t out_w,
    int64_t row_start, int64_t row_stop);

namespace {

at::Tensor resize_bilinear_cpu(const at::Tensor& x, at::IntArrayRef size, int64_t row_start, int64_t row_stop) {
  TORCH_CHECK(x.dim() == 3 && x.scalar_type() == at::kFloat,
              "resize_bilinear: x must be a float32 [C, h, w] tensor, got ", x.scalar_type(), " ", x.sizes());
  TORCH_CHECK(x.size(1) > 0 && x.size(2) > 0, "resize_bilinear: x has empty planes: ", x.sizes());
  TORCH_CHECK(size.size() == 2 && size[0] > 0 && size[1] > 0, "resize_bilinear: size must be (H, W) > 0, got ", size);
  TORCH_CHECK(0 <= row_start && row_start < row_stop && row_stop <= size[0],
              "resize_bilinear: rows must satisfy 0 <= row_start < row_stop <= H=", size[0], ", got ", row_start,
              "..", row_stop);
  const auto input = x.contiguous();
  auto out = at::empty({x.size(0), row_stop - row_start, size[1]}, x.options());
  if (x.size(0) == 0) {
    return out;
  }
  const std::string capability = at::get_cpu_capability();
  const bool fused = capability == "AVX2" || capability == "AVX512";
  const auto run = fused && resize_has_fma_build() ? resize_planes_fma
                   : fused                         ? resize_planes<true>
                                                   : resize_planes<false>;
  run(input.const_data_ptr<float>(), x.size(0), x.size(1), x.size(2), out.mutable_data_ptr<float>(), size[0],
      size[1], row_start, row_stop);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mask2former, CPU, m) {
  m.impl("resize_bilinear", &resize_bilinear_cpu);
}

}  // namespace mask2former
