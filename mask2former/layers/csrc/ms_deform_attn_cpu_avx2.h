// The CPU kernels' instruction-set variants: the baseline build (ms_deform_attn_cpu.cpp) and an
// AVX2 + FMA build (ms_deform_attn_cpu_avx2.cpp) chosen at run time, as ATen chooses its own
// kernels (ATen's CPU capability: the CPU's features, lowered by ATEN_CPU_CAPABILITY=default).
#pragma once

#include <ATen/ATen.h>

#include "ms_deform_attn.h"

namespace mask2former {

// Whether the AVX2 + FMA kernels were compiled (GCC on x86-64; other compilers build the baseline only).
bool cpu_kernels_have_avx2();

// "avx2" when the AVX2 + FMA kernels are compiled and ATen's CPU capability is AVX2 or higher,
// otherwise "default": the kernels the CPU implementation runs.
const char* cpu_kernel_isa();

// Signatures of run_forward_kernel / run_backward_kernel (ms_deform_attn_cpu_kernels.h).
using ForwardKernel = void (*)(
    const MSDeformAttnSizes& sz,
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights,
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
  BackwardKernel backward;
};

// The kernels of ms_deform_attn_cpu_avx2.cpp (AVX2 + FMA when cpu_kernels_have_avx2()).
CpuKernels avx2_cpu_kernels();

}  // namespace mask2former
