// resize_planes<true> of resize_bilinear_kernels.h compiled for AVX2 + FMA with GCC's target
// pragma (std::fma becomes one instruction), for ATen's AVX2 and AVX512 capabilities.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define MASK2FORMER_HAVE_FMA_RESIZE 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#else
#define MASK2FORMER_HAVE_FMA_RESIZE 0
#endif

#include "resize_bilinear_kernels.h"

namespace mask2former {

bool resize_has_fma_build() {
  return MASK2FORMER_HAVE_FMA_RESIZE;
}

void resize_planes_fma(
    const float* x, int64_t planes, int64_t in_h, int64_t in_w, float* out, int64_t out_h, int64_t out_w,
    int64_t row_start, int64_t row_stop) {
  resize_planes<true>(x, planes, in_h, in_w, out, out_h, out_w, row_start, row_stop);
}

}  // namespace mask2former

#if MASK2FORMER_HAVE_FMA_RESIZE
#pragma GCC pop_options
#endif
