// Copyright © 2026 TurboQuant-MLX contributors.
//
// TurboQuant KV-cache format shared by every backend. The normative
// description is docs/format.md of the TurboQuant-MLX project; this header is
// its single C++ source of truth (codebooks, signs, packing, rotation).

#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string_view>
#include <string>
#include <tuple>
#include <type_traits>

#include "mlx/array.h"
#include "mlx/primitives.h"
#include "mlx/utils.h"

namespace mlx::core::turbo {

// Lloyd-Max centroids of N(0, 1), ascending.
constexpr float kCodebook3[8] = {
    -2.1520f,
    -1.3440f,
    -0.7560f,
    -0.2451f,
    0.2451f,
    0.7560f,
    1.3440f,
    2.1520f};
constexpr float kCodebook4[16] = {
    -2.7326f,
    -2.0690f,
    -1.6180f,
    -1.2562f,
    -0.9424f,
    -0.6568f,
    -0.3881f,
    -0.1284f,
    0.1284f,
    0.3881f,
    0.6568f,
    0.9424f,
    1.2562f,
    1.6180f,
    2.0690f,
    2.7326f};

constexpr int kMaxDim = 256;

// Attention with at most this many queries per call runs the fused kernels
// on the packed cache (decode, speculative steps); more queries (prefill)
// dequantize the cache into a transient copy for MLX's own attention.
constexpr int kFusedMaxQueries = 8;

// At most this many frequencies in a position-dependent key shift
// (key_shift_freqs / key_shift_waves, docs/format.md section 7).
constexpr int kMaxKeyWaves = 32;
// Its angles are whole fractions of a turn: frequency k (uint32) turns cached
// key n by 2 pi ((k n) mod 2^kKeyWaveBits) / 2^kKeyWaveBits, computed exactly
// with a wrapping 32-bit multiply on every backend.
constexpr int kKeyWaveBits = 24;

inline bool is_turbo(QuantizationMode mode) {
  return mode == QuantizationMode::Turbo3 || mode == QuantizationMode::Turbo4;
}

inline int bits(QuantizationMode mode) {
  return mode == QuantizationMode::Turbo3 ? 3 : 4;
}

inline const float* codebook(int bits) {
  return bits == 3 ? kCodebook3 : kCodebook4;
}

inline bool is_supported_dim(int dim) {
  return dim == 64 || dim == 80 || dim == 96 || dim == 128 || dim == 192 ||
      dim == 256;
}

// Number of uint32 words holding the codes of one vector of length dim.
inline int packed_width(int dim, int bits) {
  return bits == 4 ? dim / 8 : dim / 16 + (dim + 31) / 32;
}

// Inverse of packed_width over the supported dims, or -1.
inline int dim_from_packed_width(int width, int bits) {
  for (int d : {64, 80, 96, 128, 192, 256}) {
    if (packed_width(d, bits) == width) {
      return d;
    }
  }
  return -1;
}

// Largest power of two <= dim: the size of both Hadamard stages.
inline int stage_size(int dim) {
  int p = 1;
  while (2 * p <= dim) {
    p *= 2;
  }
  return p;
}

// Random sign of coordinate i in rotation stage t (1 or 2).
constexpr float sign(int t, int i) {
  uint32_t h = static_cast<uint32_t>(i + 1) * 0x9E3779B1u +
      static_cast<uint32_t>(t) * 0x7F4A7C15u;
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  h ^= h >> 16;
  return (h & 1u) ? -1.0f : 1.0f;
}

// Code of coordinate i of a packed vector.
inline uint32_t unpack_code(const uint32_t* w, int i, int dim, int bits) {
  if (bits == 4) {
    return (w[i / 8] >> (4 * (i % 8))) & 0xFu;
  }
  uint32_t lo = (w[i / 16] >> (2 * (i % 16))) & 0x3u;
  uint32_t hi = (w[dim / 16 + i / 32] >> (i % 32)) & 0x1u;
  return lo | (hi << 2);
}

// In-place, unnormalized fast Walsh-Hadamard transform of n (power of 2).
inline void fwht(float* x, int n) {
  for (int h = 1; h < n; h *= 2) {
    for (int i = 0; i < n; i += 2 * h) {
      for (int j = i; j < i + h; ++j) {
        float a = x[j];
        float b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
    }
  }
}

// sign(t, i) for both stages and every coordinate of the largest head
// dimension, computed once (the encoders and decoders rotate every vector).
inline const float* sign_table(int t) {
  static const auto table = [] {
    std::array<std::array<float, kMaxDim>, 2> s{};
    for (int i = 0; i < kMaxDim; ++i) {
      s[0][i] = sign(1, i);
      s[1][i] = sign(2, i);
    }
    return s;
  }();
  return table[t - 1].data();
}

// y = R x (inverse = false) or x = R^T y (inverse = true), in place.
inline void rotate(float* x, int dim, bool inverse) {
  int p = stage_size(dim);
  float norm = 1.0f / std::sqrt(static_cast<float>(p));
  auto stage = [&](int t, int offset, bool signs_first) {
    const float* sg = sign_table(t);
    if (signs_first) {
      for (int i = 0; i < dim; ++i) {
        x[i] *= sg[i];
      }
    }
    fwht(x + offset, p);
    for (int i = offset; i < offset + p; ++i) {
      x[i] *= norm;
    }
    if (!signs_first) {
      for (int i = 0; i < dim; ++i) {
        x[i] *= sg[i];
      }
    }
  };
  if (!inverse) {
    stage(1, 0, true);
    stage(2, dim - p, true);
  } else {
    stage(2, dim - p, false);
    stage(1, 0, false);
  }
}

// Validation shared by the ops.
void check_dim(std::string_view tag, int dim);
// "turbo3" or "turbo4" as a QuantizationMode; anything else is an
// std::invalid_argument naming the op.
QuantizationMode parse_mode(std::string_view tag, const std::string& mode);

// A per-(batch or 1, kv head) transform vector of shape (B, Hkv, 1, D)
// repeated for the gqa query heads of each kv head: (B, Hkv * gqa, 1, D),
// float32 (the exact cache transforms, docs/format.md section 7).
array per_query_head(const array& t, int gqa, StreamOrDevice s = {});

// The position-dependent key shift (docs/format.md section 7): the cached
// key at index n holds its key minus
//   sum_j cos(a_j(n)) waves[j] + sin(a_j(n)) waves[P + j],
//   a_j(n) = 2 pi ((freqs_j n) mod 2^24) / 2^24,
// with freqs (B or 1, Hkv, P) uint32 and waves (B or 1, Hkv, 2P, D).
// The phases [cos a(n), sin a(n)] of keys n0 .. n0 + kL - 1 (n0 >= -1;
// -1 wraps like the uint32 it is): (B or 1, Hkv, kL, 2P), float32.
array key_wave_phases(
    const array& freqs,
    int n0,
    int kL,
    StreamOrDevice s = {});
// The shift of keys n0 .. n0 + kL - 1: (B or 1, Hkv, kL, D), float32.
array key_wave_shift(
    const array& freqs,
    const array& waves,
    int n0,
    int kL,
    StreamOrDevice s = {});
// Per query row the coefficients scale * q . waves[i] (queries as given,
// unrotated): (B, Hq, qL, 2P), float32.
array key_wave_coefficients(
    const array& q,
    const array& waves,
    float scale,
    StreamOrDevice s = {});
// The score bias scale * q . shift(n) for every query row and cached key n
// = 0 .. kL - 1 from those coefficients: (B, Hq, qL, kL), float32.
array key_wave_bias(
    const array& coef,
    const array& freqs,
    int kL,
    StreamOrDevice s = {});

// Op-composed rotation over the last axis (float32 result).
array rotate(const array& x, bool inverse, StreamOrDevice s = {});

// The attention primitive's codes and scales (inputs 1-4) may be a KV cache's
// buffers, whose first key_length rows (axis 2) are the keys: the rows as a
// view of the evaluated input's buffer (no copy; the input itself when it
// has exactly n rows). For the backends' eval.
array leading_rows(const array& a, int n);

// The optional inputs of the attention primitive, after (q, k, k_scales, v,
// v_scales), in this order; the mask is present when the count says so.
struct AttentionExtras {
  std::optional<array> mask;
  std::optional<array> sinks;
  std::optional<array> sink_values;
  std::optional<array> key_shift;
  std::optional<array> first_key;
  std::optional<array> key_waves; // key_shift_waves
  std::optional<array> key_freqs; // key_shift_freqs
};
AttentionExtras attention_extras(
    const std::vector<array>& inputs,
    bool has_sinks,
    bool has_sink_values,
    bool has_key_shift,
    bool has_first_key,
    bool has_key_waves = false);

// Attention with a sink that has a value, for MLX's own attention: a zero key
// (score 0) and the sink value (B or 1, Hkv, 1, Dv) before the cache, and an
// additive mask whose first column is the sink logit sinks[h], the rest the
// cached keys' mask (none: all visible). Returns (keys, values, mask).
std::tuple<array, array, array> sink_as_key(
    const array& q,
    const array& k,
    const array& v,
    const std::optional<array>& mask,
    const array& sinks,
    const array& sink_values,
    StreamOrDevice s = {});

// MLX's own attention with the stream last, on MLX versions with and
// without the force_fused argument before it (main added it after v0.32.1):
// the call goes through F, the function's type, so only the matching branch
// is compiled.
template <typename F>
array mlx_attention(
    F sdpa,
    const array& q,
    const array& k,
    const array& v,
    float scale,
    const std::string& mask_mode,
    const std::optional<array>& mask,
    const std::optional<array>& sinks,
    const Stream& s) {
  if constexpr (std::is_invocable_v<
                    F,
                    const array&,
                    const array&,
                    const array&,
                    const float,
                    const std::string&,
                    std::optional<array>,
                    const std::optional<array>&,
                    bool,
                    StreamOrDevice>) {
    return sdpa(q, k, v, scale, mask_mode, mask, sinks, false, s);
  } else {
    return sdpa(q, k, v, scale, mask_mode, mask, sinks, s);
  }
}

// The route of quantized_scaled_dot_product_attention for many queries
// (fast_turbo_prefill.cpp): the cache dequantized into a transient copy in
// the queries' dtype (fast::QuantizedKVDequantize) and MLX's own attention
// on it. The arguments are those of the op, validated.
array dequantized_attention(
    const array& queries,
    const array& keys,
    const array& key_scales,
    const array& values,
    const array& value_scales,
    const float scale,
    const std::string& mask_mode,
    std::optional<array> mask_arr,
    const std::optional<array>& sinks,
    QuantizationMode kmode,
    QuantizationMode vmode,
    const std::optional<array>& key_shift,
    const std::optional<array>& key_channel_scales,
    const std::optional<array>& first_key,
    const std::optional<array>& first_value,
    const std::optional<array>& key_shift_freqs,
    const std::optional<array>& key_shift_waves,
    const Stream& stream);

// quantize / dequantize with a turbo mode (called by mlx::core::quantize and
// mlx::core::dequantize after mode parsing).
std::vector<array> quantize(const array& w, QuantizationMode mode, Stream s);
array dequantize(
    const array& w,
    const array& scales,
    QuantizationMode mode,
    Dtype out_type,
    Stream s);

// float32 reconstruction in the rotated domain: scale * codebook[code].
array dequantize_rotated(
    const array& w,
    const array& scales,
    QuantizationMode mode,
    StreamOrDevice s = {});

// Whether the GPU backend of this build has turbo quantize kernels. Defined by
// each backend (no_gpu, metal, cuda).
bool gpu_quantize_supported();

// Whether the GPU backend's fast::QuantizedScaledDotProductAttention rotates
// the queries and the output itself (fused_rotation: one launch each instead
// of the op-composed rotations and casts; the CPU primitive always does).
// Defined by each backend.
bool gpu_attention_rotates();

// CPU kernels (mlx/backend/cpu/turboquant.cpp), called from
// fast::Quantize::eval_cpu.
void quantize_cpu(
    const array& w,
    array& packed,
    array& scales,
    QuantizationMode mode,
    Stream s);
// fast::QuantizedCacheUpdate on the CPU: inputs the buffer (packed codes,
// or the scales when `scales`), x[, shift][, freqs, waves]
// (mlx/fast_primitives.h); out is the updated buffer (it takes the input's
// buffer when donatable).
void quantize_update_cpu(
    const std::vector<array>& inputs,
    array& out,
    QuantizationMode mode,
    int offset,
    bool has_shift,
    bool has_waves,
    bool scales,
    Stream s);
void dequantize_cpu(
    const array& packed,
    const array& scales,
    array& out,
    QuantizationMode mode,
    Stream s);

// fast::QuantizedKVDequantize (the attention's route for many queries): a
// quantized cache dequantized for MLX's own attention. Inputs: packed (B, H,
// L, W) (the last axis contiguous, the others any strides), scales (B, H, L,
// 1) in the output dtype (any strides), then in this order [first (B, H, 1,
// D) in the output dtype] [shift (B, H, 1, D) float32] [freqs (B, H, P)
// uint32, waves (B, H, 2P, D) float32], each row contiguous. Output (B, H,
// F + L, D), F = 1 with first: row 0 is first; row F + i is the dequantized
// vector i (as mx.dequantize computes it, in float32) plus shift plus the
// moving shift of row i, sum_j cos(a_j) waves[j] + sin(a_j) waves[P + j]
// with a_j = 2 pi ((freqs[j] i) mod 2^24) / 2^24 (docs/format.md, section
// 7), added in float32 and rounded once to the output dtype.
struct KVDequantizeLayout {
  bool has_first;
  bool has_shift;
  bool has_waves;
};
void dequantize_kv_cpu(
    const std::vector<array>& inputs,
    array& out,
    QuantizationMode mode,
    KVDequantizeLayout layout,
    Stream s);

} // namespace mlx::core::turbo
