// The CPU kernels' instruction-set variants: the baseline build (ms_deform_attn_cpu.cpp), an
// AVX2 + FMA build (ms_deform_attn_cpu_avx2.cpp) and an AVX-512 build (ms_deform_attn_cpu_avx512.cpp),
// chosen at run time as ATen chooses its own kernels (ATen's CPU capability: the CPU's features,
// lowered by ATEN_CPU_CAPABILITY=avx2 or =default).
#pragma once

#include <ATen/ATen.h>

#include "ms_deform_attn.h"

namespace mask2former {

// Whether the AVX2 + FMA kernels were compiled (GCC on x86-64; other compilers build the baseline only).
bool cpu_kernels_have_avx2();

// Whether the AVX-512 (F, BW, VL, DQ) + FMA kernels were compiled (GCC on x86-64).
bool cpu_kernels_have_avx512();

// The kernels the CPU implementation runs: "avx512" when they are compiled, ATen's CPU capability
// is AVX512 and the CPU has AVX-512 F/BW/VL/DQ; else "avx2" when ATen's capability is AVX2 or
// higher and the CPU has AVX2 + FMA; otherwise "default".
const char* cpu_kernel_isa();

// Signatures of run_forward_kernel / run_fused_forward_kernel / run_backward_kernel
// (ms_deform_attn_cpu_kernels.h).
using ForwardKernel = void (*)(
    const MSDeformAttnSizes& sz,
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights,
    at::Tensor& output);
using FusedForwardKernel = void (*)(
    const MSDeformAttnSizes& sz,
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& reference_points,
    const at::Tensor& sampling_offsets,
    const at::Tensor& attention_logits,
    at::Tensor& output);
using BackwardKernel = void (*)(
    const MSDeformAttnSizes& sz,
    int64_t chunks,
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights,
    const at::Tensor& grad_output,
    at::Tensor& grad_value_acc,
    at::Tensor& grad_locations,
    at::Tensor& grad_weights);

struct CpuKernels {
  ForwardKernel forward;
  FusedForwardKernel fused_forward;
  BackwardKernel backward;
};

// The kernels of ms_deform_attn_cpu_avx2.cpp (AVX2 + FMA when cpu_kernels_have_avx2()).
CpuKernels avx2_cpu_kernels();

// The kernels of ms_deform_attn_cpu_avx512.cpp (AVX-512 when cpu_kernels_have_avx512()).
CpuKernels avx512_cpu_kernels();

}  // namespace mask2former
