// The CPU kernels of ms_deform_attn_cpu_kernels.h compiled for AVX-512 (F, BW, VL, DQ; 16 float
// lanes) + FMA with GCC's target pragma, so that the rest of the extension keeps the baseline
// instruction set. Headers are included before the pragma: only the kernels get the new
// target.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "bilinear.h"
#include "ms_deform_attn.h"
#include "ms_deform_attn_cpu_isa.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define MASK2FORMER_HAVE_AVX512_KERNELS 1
#pragma GCC push_options
#define MASK2FORMER_KERNELS_AVX512 1
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma")
#else
#define MASK2FORMER_HAVE_AVX512_KERNELS 0
#endif

#include "ms_deform_attn_cpu_kernels.h"

namespace mask2former {

bool cpu_kernels_have_avx512() {
  return MASK2FORMER_HAVE_AVX512_KERNELS;
}

CpuKernels avx512_cpu_kernels() {
  return {run_forward_kernel, run_fused_forward_kernel, run_backward_kernel};
}

}  // namespace mask2former

#if MASK2FORMER_HAVE_AVX512_KERNELS
#pragma GCC pop_options
#endif
