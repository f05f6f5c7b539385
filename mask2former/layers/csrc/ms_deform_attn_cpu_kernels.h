// CPU kernels of multi-scale deformable attention (Zhu et al., "Deformable DETR", ICLR 2021, Eq. 2)
// on raw pointers, included by ms_deform_attn_cpu.cpp (compiled for the baseline instruction set),
// ms_deform_attn_cpu_avx2.cpp (AVX2 + FMA) and ms_deform_attn_cpu_avx512.cpp (AVX-512); everything
// here has internal linkage, so that the builds never mix.
//
// Forward: at::parallel_for over (batch, query); each task accumulates the P * L bilinear samples of
// every head in an accumulator of the op-math type (float for bfloat16 / half). The fused forward
// (inference) first computes each head's locations (reference + offset / level size) and softmax
// attention weights, then samples exactly as the forward does.
// Value (and grad_output) are scalar_t; sampling locations and attention weights (and their
// gradients) are coord_t: scalar_t, or float for a 16-bit scalar_t (float32 coordinates).
// Backward: grad_sampling_locations and grad_attention_weights belong to one (batch, query, head)
// each, but grad_value is scattered; tasks own one (batch, head) and a chunk of queries, and every
// chunk accumulates into its own grad_value slice, summed afterwards, so no two threads write to the
// same element and the result does not depend on scheduling.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

// The AVX2 and AVX-512 builds (MASK2FORMER_KERNELS_AVX2 / _AVX512, defined by their files) take
// float32 exp from SLEEF, which libtorch_cpu links in and exports for ATen's vectorised math
// (torch.exp); its header ships with torch but declares these functions only when the compiler's
// own target has the instruction set, not under a target pragma, hence the declarations here.
#if (defined(MASK2FORMER_KERNELS_AVX512) || defined(MASK2FORMER_KERNELS_AVX2)) && defined(__has_include)
#if __has_include(<sleef.h>)
#define MASK2FORMER_HAVE_SLEEF 1
extern "C" {
#if defined(MASK2FORMER_KERNELS_AVX512)
__m512 Sleef_expf16_u10(__m512);
#else
__m256 Sleef_expf8_u10(__m256);
#endif
}
#endif
#endif
#ifndef MASK2FORMER_HAVE_SLEEF
#define MASK2FORMER_HAVE_SLEEF 0
#endif

#include "bilinear.h"
#include "ms_deform_attn.h"

namespace mask2former {
namespace {

// Queries per forward task below which at::parallel_for does not split further.
constexpr int64_t kForwardGrain = 16;
// Fewest queries a backward chunk gets when (batch, head) pairs are split over more threads.
constexpr int64_t kMinQueriesPerChunk = 256;
// Independent partial sums per dot product in the backward pass.
constexpr int kDotLanes = 8;

// acc[d] += sum_k coef[k] * v[k][d] over the channels of one head. With kChannels > 0 the channel
// count is a compile-time constant, so that the loop is fully unrolled and vectorised.
template <int64_t kChannels, typename scalar_t, typename acc_t>
inline void add_bilinear_sample(
    acc_t* __restrict__ acc, const scalar_t* const* v, const acc_t* coef, int64_t channels) {
  const int64_t count = kChannels > 0 ? kChannels : channels;
  const scalar_t* __restrict__ v0 = v[0];
  const scalar_t* __restrict__ v1 = v[1];
  const scalar_t* __restrict__ v2 = v[2];
  const scalar_t* __restrict__ v3 = v[3];
  for (int64_t d = 0; d < count; ++d) {
    acc[d] += coef[0] * static_cast<acc_t>(v0[d]) + coef[1] * static_cast<acc_t>(v1[d]) +
        coef[2] * static_cast<acc_t>(v2[d]) + coef[3] * static_cast<acc_t>(v3[d]);
  }
}

// Pixels of a head smaller than this (a cache line) are not prefetched: small maps stay cached.
constexpr int64_t kMinPrefetchBytes = 64;

// Asks the CPU to start loading the `bytes` bytes at p into the cache.
inline void prefetch(const void* p, int64_t bytes) {
#if defined(__GNUC__)
  const char* c = static_cast<const char*>(p);
  for (int64_t offset = 0; offset < bytes; offset += 64) {
    __builtin_prefetch(c + offset);
  }
  __builtin_prefetch(c + bytes - 1);
#else
  (void)p;
  (void)bytes;
#endif
}

// The bilinear samples of every head of one (batch, query) for the forward: for head m, its
// counts[m] in-map points (in level, point order) at m * L * P ..., each with four corner pixels
// (zeros outside the map) and coefficients attention weight * bilinear weight.
template <typename scalar_t>
struct QuerySamples {
  using acc_t = at::opmath_type<scalar_t>;
  QuerySamples(int64_t heads, int64_t level_points)
      : pixels(heads * level_points * 4), coefs(heads * level_points * 4), counts(heads) {}
  std::vector<const scalar_t*> pixels;
  std::vector<acc_t> coefs;
  std::vector<int64_t> counts;
};

// Fills `samples` from the locations [M, L, P, 2] and attention weights [M, L, P] of one
// (batch, query) and starts loading the corner pixels into the cache (value_n: channel 0 of head 0
// of the query's batch element).
template <int64_t kChannels, typename scalar_t, typename coord_t>
inline void gather_query_samples(
    const MSDeformAttnSizes& sz,
    const scalar_t* value_n,
    const int64_t* shapes,
    const int64_t* starts,
    const coord_t* loc,
    const coord_t* attn,
    const scalar_t* zeros,
    QuerySamples<scalar_t>& samples) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t channels = kChannels > 0 ? kChannels : sz.channels;
  const int64_t pixel_stride = sz.heads * sz.channels;
  const bool prefetched = channels * static_cast<int64_t>(sizeof(scalar_t)) >= kMinPrefetchBytes;
  const int64_t level_points = sz.levels * sz.points;
  for (int64_t m = 0; m < sz.heads; ++m) {
    const scalar_t** pixels = samples.pixels.data() + m * level_points * 4;
    acc_t* coefs = samples.coefs.data() + m * level_points * 4;
    int64_t count = 0;
    for (int64_t l = 0; l < sz.levels; ++l) {
      const scalar_t* value_l = value_n + m * channels + starts[l] * pixel_stride;
      for (int64_t p = 0; p < sz.points; ++p) {
        const int64_t mlp = (m * sz.levels + l) * sz.points + p;
        BilinearCorners<acc_t> c;
        if (!bilinear_corners<acc_t>(
                static_cast<acc_t>(loc[2 * mlp]), static_cast<acc_t>(loc[2 * mlp + 1]), shapes[2 * l],
                shapes[2 * l + 1], c)) {
          continue;
        }
        const acc_t a = static_cast<acc_t>(attn[mlp]);
        for (int k = 0; k < 4; ++k) {
          if (c.pixel[k] >= 0) {
            pixels[4 * count + k] = value_l + c.pixel[k] * pixel_stride;
            if (prefetched) {
              prefetch(pixels[4 * count + k], channels * static_cast<int64_t>(sizeof(scalar_t)));
            }
          } else {
            pixels[4 * count + k] = zeros;
          }
          coefs[4 * count + k] = a * c.weight[k];
        }
        ++count;
      }
    }
    samples.counts[m] = count;
  }
}

// out[m] = sum of head m's samples (in point order, into acc, channels op-math scratch values),
// for every head of one (batch, query); out is [M, D].
template <int64_t kChannels, typename scalar_t>
inline void sum_query_samples(
    const MSDeformAttnSizes& sz,
    const QuerySamples<scalar_t>& samples,
    at::opmath_type<scalar_t>* acc,
    scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t channels = kChannels > 0 ? kChannels : sz.channels;
  const int64_t level_points = sz.levels * sz.points;
  for (int64_t m = 0; m < sz.heads; ++m) {
    std::fill(acc, acc + channels, acc_t(0));
    const scalar_t* const* pixels = samples.pixels.data() + m * level_points * 4;
    const acc_t* coefs = samples.coefs.data() + m * level_points * 4;
    for (int64_t i = 0; i < samples.counts[m]; ++i) {
      add_bilinear_sample<kChannels>(acc, pixels + 4 * i, coefs + 4 * i, channels);
    }
    for (int64_t d = 0; d < channels; ++d) {
      out[m * channels + d] = static_cast<scalar_t>(acc[d]);
    }
  }
}

// Sums the samples of queries begin..end-1 of one task into output ([N * Lq, M, D]), gathering
// (and prefetching) those of the next query, gather(nq, samples), before summing those of the
// current one, so that the scattered pixel reads of one query overlap the arithmetic of the other.
template <int64_t kChannels, typename scalar_t, typename Gather>
inline void sum_queries_gathering_ahead(
    const MSDeformAttnSizes& sz, int64_t begin, int64_t end, const Gather& gather, scalar_t* output) {
  if (begin >= end) {
    return;
  }
  const int64_t level_points = sz.levels * sz.points;
  std::vector<at::opmath_type<scalar_t>> acc(sz.channels);
  QuerySamples<scalar_t> samples[2] = {{sz.heads, level_points}, {sz.heads, level_points}};
  gather(begin, samples[0]);
  for (int64_t nq = begin; nq < end; ++nq) {
    if (nq + 1 < end) {
      gather(nq + 1, samples[(nq + 1 - begin) % 2]);
    }
    sum_query_samples<kChannels>(sz, samples[(nq - begin) % 2], acc.data(), output + nq * sz.heads * sz.channels);
  }
}

// Forward on precomputed locations [N, Lq, M, L, P, 2] and weights [N, Lq, M, L, P].
template <int64_t kChannels, typename scalar_t, typename coord_t>
void forward_kernel(
    const MSDeformAttnSizes& sz,
    const scalar_t* value,
    const int64_t* shapes,
    const int64_t* starts,
    const coord_t* locations,
    const coord_t* weights,
    scalar_t* output) {
  const int64_t channels = sz.channels;
  const int64_t query_points = sz.heads * sz.levels * sz.points;
  at::parallel_for(0, sz.batch * sz.queries, kForwardGrain, [&](int64_t begin, int64_t end) {
    const std::vector<scalar_t> zeros(channels, scalar_t(0));
    const auto gather = [&](int64_t nq, QuerySamples<scalar_t>& into) {
      const scalar_t* value_n = value + nq / sz.queries * sz.spatial * sz.heads * channels;
      gather_query_samples<kChannels>(
          sz, value_n, shapes, starts, locations + nq * query_points * 2, weights + nq * query_points,
          zeros.data(), into);
    };
    sum_queries_gathering_ahead<kChannels>(sz, begin, end, gather, output);
  });
}

// x[i] = exp(x[i]) for i < n. In the AVX-512 and AVX2 builds, float32 goes through SLEEF's
// vectorised expf (1-ulp accuracy), the one torch.exp uses on such CPUs; otherwise std::exp.
template <typename coord_t>
inline void exp_in_place(coord_t* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i]);
  }
}

#if MASK2FORMER_HAVE_SLEEF
template <>
inline void exp_in_place<float>(float* x, int64_t n) {
#if defined(MASK2FORMER_KERNELS_AVX512)
  constexpr int64_t kLanes = 16;
#else
  constexpr int64_t kLanes = 8;
#endif
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
#if defined(MASK2FORMER_KERNELS_AVX512)
    _mm512_storeu_ps(x + i, Sleef_expf16_u10(_mm512_loadu_ps(x + i)));
#else
    _mm256_storeu_ps(x + i, Sleef_expf8_u10(_mm256_loadu_ps(x + i)));
#endif
  }
  if (i < n) {
    alignas(64) float lanes[kLanes] = {};
    std::copy(x + i, x + n, lanes);
#if defined(MASK2FORMER_KERNELS_AVX512)
    _mm512_store_ps(lanes, Sleef_expf16_u10(_mm512_load_ps(lanes)));
#else
    _mm256_store_ps(lanes, Sleef_expf8_u10(_mm256_load_ps(lanes)));
#endif
    std::copy(lanes, lanes + (n - i), x + i);
  }
}
#endif

// Sampling locations and attention weights of the M heads of one (batch, query) for the fused
// forward: loc[m, l, p] = reference[l] + offsets[m, l, p] / (W_l, H_l), rounded as torch.addcdiv
// rounds it (reference and normalizer are [L, P, 2]: the query's reference point and (W_l, H_l)
// repeated over the points), and attn[m] = softmax(logits[m]) over the L * P logits of head m,
// computed as ATen's CPU softmax over a short last dimension does: maximum, exp of the
// differences, sequential sum, multiplication by its reciprocal (the heads are interleaved so that
// their sums proceed side by side, each in its own order). A NaN or +inf logit makes its
// head's weights NaN, as in F.softmax. The exponential (exp_in_place) need not be the one of
// ATen's softmax, so weights may differ from F.softmax's by a few ulps. head_max and head_sum are
// M scratch values.
template <typename coord_t>
inline void locations_and_weights(
    int64_t heads,
    int64_t level_points,
    const coord_t* __restrict__ normalizer,
    const coord_t* __restrict__ reference,
    const coord_t* __restrict__ offsets,
    const coord_t* __restrict__ logits,
    coord_t* __restrict__ loc,
    coord_t* __restrict__ attn,
    coord_t* __restrict__ head_max,
    coord_t* __restrict__ head_sum) {
  const int64_t coords = 2 * level_points;
  for (int64_t m = 0; m < heads; ++m) {
    for (int64_t i = 0; i < coords; ++i) {
      loc[m * coords + i] = reference[i] + offsets[m * coords + i] / normalizer[i];
    }
  }
  for (int64_t m = 0; m < heads; ++m) {
    head_max[m] = logits[m * level_points];
  }
  for (int64_t i = 1; i < level_points; ++i) {
    for (int64_t m = 0; m < heads; ++m) {
      head_max[m] = std::max(head_max[m], logits[m * level_points + i]);
    }
  }
  for (int64_t m = 0; m < heads; ++m) {
    for (int64_t i = 0; i < level_points; ++i) {
      attn[m * level_points + i] = logits[m * level_points + i] - head_max[m];
    }
  }
  exp_in_place(attn, heads * level_points);
  for (int64_t m = 0; m < heads; ++m) {
    head_sum[m] = attn[m * level_points];
  }
  for (int64_t i = 1; i < level_points; ++i) {
    for (int64_t m = 0; m < heads; ++m) {
      head_sum[m] += attn[m * level_points + i];
    }
  }
  for (int64_t m = 0; m < heads; ++m) {
    const coord_t inv_sum = coord_t(1) / head_sum[m];
    for (int64_t i = 0; i < level_points; ++i) {
      attn[m * level_points + i] *= inv_sum;
    }
  }
}

// Inference forward with the location and softmax arithmetic fused in (argument layouts in
// check_fused_forward_args): the same samples and sums as forward_kernel on the locations and
// weights that addcdiv and softmax would give.
template <int64_t kChannels, typename scalar_t, typename coord_t>
void fused_forward_kernel(
    const MSDeformAttnSizes& sz,
    const scalar_t* value,
    const int64_t* shapes,
    const int64_t* starts,
    const coord_t* reference_points,
    const coord_t* sampling_offsets,
    const coord_t* attention_logits,
    scalar_t* output) {
  const int64_t channels = sz.channels;
  const int64_t level_points = sz.levels * sz.points;
  // [L, P, 2]: (W_l, H_l) in the coordinates' dtype, what addcdiv divides by
  std::vector<coord_t> normalizer(2 * level_points);
  for (int64_t lp = 0; lp < level_points; ++lp) {
    normalizer[2 * lp] = static_cast<coord_t>(shapes[2 * (lp / sz.points) + 1]);
    normalizer[2 * lp + 1] = static_cast<coord_t>(shapes[2 * (lp / sz.points)]);
  }
  at::parallel_for(0, sz.batch * sz.queries, kForwardGrain, [&](int64_t begin, int64_t end) {
    const std::vector<scalar_t> zeros(channels, scalar_t(0));
    std::vector<coord_t> reference(2 * level_points);
    std::vector<coord_t> loc(sz.heads * 2 * level_points);
    std::vector<coord_t> attn(sz.heads * level_points);
    std::vector<coord_t> head_max(sz.heads);
    std::vector<coord_t> head_sum(sz.heads);
    const auto gather = [&](int64_t nq, QuerySamples<scalar_t>& into) {
      const coord_t* reference_nq = reference_points + nq * sz.levels * 2;
      for (int64_t lp = 0; lp < level_points; ++lp) {
        reference[2 * lp] = reference_nq[2 * (lp / sz.points)];
        reference[2 * lp + 1] = reference_nq[2 * (lp / sz.points) + 1];
      }
      locations_and_weights(
          sz.heads, level_points, normalizer.data(), reference.data(),
          sampling_offsets + nq * sz.heads * level_points * 2, attention_logits + nq * sz.heads * level_points,
          loc.data(), attn.data(), head_max.data(), head_sum.data());
      const scalar_t* value_n = value + nq / sz.queries * sz.spatial * sz.heads * channels;
      gather_query_samples<kChannels>(sz, value_n, shapes, starts, loc.data(), attn.data(), zeros.data(), into);
    };
    sum_queries_gathering_ahead<kChannels>(sz, begin, end, gather, output);
  });
}

// dot[k] = sum_d g[d] * v[k][d] for the four corners, with kDotLanes independent partial sums
// per corner so that the compiler can vectorise the loop.
template <typename scalar_t>
void dot4(
    const at::opmath_type<scalar_t>* g,
    const scalar_t* const* v,
    int64_t channels,
    at::opmath_type<scalar_t>* dot) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t partial[4][kDotLanes] = {};
  int64_t d = 0;
  for (; d + kDotLanes <= channels; d += kDotLanes) {
    for (int k = 0; k < 4; ++k) {
      for (int j = 0; j < kDotLanes; ++j) {
        partial[k][j] += g[d + j] * static_cast<acc_t>(v[k][d + j]);
      }
    }
  }
  for (; d < channels; ++d) {
    for (int k = 0; k < 4; ++k) {
      partial[k][0] += g[d] * static_cast<acc_t>(v[k][d]);
    }
  }
  for (int k = 0; k < 4; ++k) {
    dot[k] = 0;
    for (int j = 0; j < kDotLanes; ++j) {
      dot[k] += partial[k][j];
    }
  }
}

// grad_value_acc is [N, chunks, S, M, D] in the op-math type; chunk c of (n, m) covers queries
// [c * Lq / chunks, (c + 1) * Lq / chunks).
template <typename scalar_t, typename coord_t>
void backward_kernel(
    const MSDeformAttnSizes& sz,
    int64_t chunks,
    const scalar_t* value,
    const int64_t* shapes,
    const int64_t* starts,
    const coord_t* locations,
    const coord_t* weights,
    const scalar_t* grad_output,
    at::opmath_type<scalar_t>* grad_value_acc,
    coord_t* grad_locations,
    coord_t* grad_weights) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t channels = sz.channels;
  const int64_t pixel_stride = sz.heads * channels;
  const int64_t level_points = sz.levels * sz.points;
  at::parallel_for(0, sz.batch * sz.heads * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> grad_out(channels);
    const std::vector<scalar_t> zeros(channels, scalar_t(0));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t chunk = task % chunks;
      const int64_t m = (task / chunks) % sz.heads;
      const int64_t n = task / (chunks * sz.heads);
      const int64_t q_begin = chunk * sz.queries / chunks;
      const int64_t q_end = (chunk + 1) * sz.queries / chunks;
      acc_t* grad_value_nm = grad_value_acc + (n * chunks + chunk) * sz.spatial * pixel_stride + m * channels;
      for (int64_t q = q_begin; q < q_end; ++q) {
        const int64_t nqm = (n * sz.queries + q) * sz.heads + m;
        const coord_t* loc = locations + nqm * level_points * 2;
        const coord_t* attn = weights + nqm * level_points;
        const scalar_t* g = grad_output + nqm * channels;
        for (int64_t d = 0; d < channels; ++d) {
          grad_out[d] = static_cast<acc_t>(g[d]);
        }
        for (int64_t l = 0; l < sz.levels; ++l) {
          const int64_t height = shapes[2 * l];
          const int64_t width = shapes[2 * l + 1];
          const scalar_t* value_l = value + (n * sz.spatial + starts[l]) * pixel_stride + m * channels;
          acc_t* grad_value_l = grad_value_nm + starts[l] * pixel_stride;
          for (int64_t p = 0; p < sz.points; ++p) {
            const int64_t lp = l * sz.points + p;
            BilinearCorners<acc_t> c;
            if (!bilinear_corners<acc_t>(
                    static_cast<acc_t>(loc[2 * lp]), static_cast<acc_t>(loc[2 * lp + 1]), height, width, c)) {
              continue;
            }
            const acc_t a = static_cast<acc_t>(attn[lp]);
            const scalar_t* v[4];
            for (int k = 0; k < 4; ++k) {
              v[k] = c.pixel[k] >= 0 ? value_l + c.pixel[k] * pixel_stride : zeros.data();
            }
            // with dot[k] = <grad_out, v_k>: sample = sum_k weight_k v_k, so
            // dL/da = sum_k weight_k dot[k], dL/dx = a ((1 - fy)(dot1 - dot0) + fy (dot3 - dot2)) * W
            // (x = loc_x * W - 0.5), and likewise along y
            acc_t dot[4];
            dot4<scalar_t>(grad_out.data(), v, channels, dot);
            const acc_t grad_a =
                c.weight[0] * dot[0] + c.weight[1] * dot[1] + c.weight[2] * dot[2] + c.weight[3] * dot[3];
            const acc_t grad_x = (1 - c.fy) * (dot[1] - dot[0]) + c.fy * (dot[3] - dot[2]);
            const acc_t grad_y = (1 - c.fx) * (dot[2] - dot[0]) + c.fx * (dot[3] - dot[1]);
            const int64_t point = nqm * level_points + lp;
            grad_weights[point] = static_cast<coord_t>(grad_a);
            grad_locations[2 * point] = static_cast<coord_t>(a * grad_x * static_cast<acc_t>(width));
            grad_locations[2 * point + 1] = static_cast<coord_t>(a * grad_y * static_cast<acc_t>(height));
            for (int k = 0; k < 4; ++k) {
              if (c.pixel[k] < 0) {
                continue;
              }
              const acc_t coef = a * c.weight[k];
              acc_t* grad_v = grad_value_l + c.pixel[k] * pixel_stride;
              for (int64_t d = 0; d < channels; ++d) {
                grad_v[d] += coef * grad_out[d];
              }
            }
          }
        }
      }
    }
  });
}

// Calls body(scalar_t{}, coord_t{}) with scalar_t the value's dtype and coord_t the locations'
// dtype: scalar_t itself, or float (the op-math type) for 16-bit values with float32 locations.
template <typename Body>
void dispatch_value_and_coord(const at::Tensor& value, const at::Tensor& sampling_locations, const Body& body) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, value.scalar_type(), "ms_deform_attn", [&] {
    if (sampling_locations.scalar_type() == value.scalar_type()) {
      body(scalar_t{}, scalar_t{});
    } else {
      body(scalar_t{}, at::opmath_type<scalar_t>{});
    }
  });
}

// Runs the forward kernel of value's dtype: value [N, S, M, D], locations, weights (in the
// locations' dtype) and output contiguous; output [N, Lq, M * D] is fully written.
void run_forward_kernel(
    const MSDeformAttnSizes& sz,
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights,
    at::Tensor& output) {
  dispatch_value_and_coord(value, sampling_locations, [&](auto s, auto c) {
    using scalar_t = decltype(s);
    using coord_t = decltype(c);
    // 32 channels per head: Mask2Former's and Deformable DETR's 256 dims / 8 heads
    const auto kernel =
        sz.channels == 32 ? forward_kernel<32, scalar_t, coord_t> : forward_kernel<0, scalar_t, coord_t>;
    kernel(
        sz, value.const_data_ptr<scalar_t>(), spatial_shapes.const_data_ptr<int64_t>(),
        level_start_index.const_data_ptr<int64_t>(), sampling_locations.const_data_ptr<coord_t>(),
        attention_weights.const_data_ptr<coord_t>(), output.mutable_data_ptr<scalar_t>());
  });
}

// Runs the fused forward kernel of value's dtype on contiguous inputs (reference points, offsets
// and logits in one coordinate dtype); output [N, Lq, M * D] is fully written.
void run_fused_forward_kernel(
    const MSDeformAttnSizes& sz,
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& reference_points,
    const at::Tensor& sampling_offsets,
    const at::Tensor& attention_logits,
    at::Tensor& output) {
  dispatch_value_and_coord(value, sampling_offsets, [&](auto s, auto c) {
    using scalar_t = decltype(s);
    using coord_t = decltype(c);
    const auto kernel = sz.channels == 32 ? fused_forward_kernel<32, scalar_t, coord_t>
                                          : fused_forward_kernel<0, scalar_t, coord_t>;
    kernel(
        sz, value.const_data_ptr<scalar_t>(), spatial_shapes.const_data_ptr<int64_t>(),
        level_start_index.const_data_ptr<int64_t>(), reference_points.const_data_ptr<coord_t>(),
        sampling_offsets.const_data_ptr<coord_t>(), attention_logits.const_data_ptr<coord_t>(),
        output.mutable_data_ptr<scalar_t>());
  });
}

// Runs the backward kernel of value's dtype on contiguous inputs (weights, grad_locations and
// grad_weights in the locations' dtype); grad_value_acc is [N, chunks, S, M, D] in the op-math
// type, zero-initialised like grad_locations and grad_weights.
void run_backward_kernel(
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
    at::Tensor& grad_weights) {
  dispatch_value_and_coord(value, sampling_locations, [&](auto s, auto c) {
    using scalar_t = decltype(s);
    using coord_t = decltype(c);
    backward_kernel<scalar_t, coord_t>(
        sz, chunks, value.const_data_ptr<scalar_t>(), spatial_shapes.const_data_ptr<int64_t>(),
        level_start_index.const_data_ptr<int64_t>(), sampling_locations.const_data_ptr<coord_t>(),
        attention_weights.const_data_ptr<coord_t>(), grad_output.const_data_ptr<scalar_t>(),
        grad_value_acc.mutable_data_ptr<at::opmath_type<scalar_t>>(),
        grad_locations.mutable_data_ptr<coord_t>(), grad_weights.mutable_data_ptr<coord_t>());
  });
}

}  // namespace
}  // namespace mask2former
