// Copyright © 2026 TurboQuant-MLX contributors.
//
// CPU encode / decode kernels for mx.quantize and mx.dequantize with the
// turbo modes.

#include <algorithm>
#include <cmath>

#include "mlx/backend/cpu/turboquant.h"
#include "mlx/turboquant.h"
#include "mlx/types/half_types.h"

namespace mlx::core {

namespace {

using namespace turbo_cpu;

template <typename T>
void encode_rows(
    const T* x,
    uint32_t* packed,
    T* scales,
    int64_t rows,
    int dim,
    int bits) {
  const float* c = turbo::codebook(bits);
  int levels = 1 << bits;
  float bounds[15];
  for (int j = 0; j < levels - 1; ++j) {
    bounds[j] = (c[j] + c[j + 1]) * 0.5f;
  }
  int width = turbo::packed_width(dim, bits);
  float sqrt_dim = std::sqrt(static_cast<float>(dim));
  parallel_for(rows, dim * 16, [&](int64_t r0, int64_t r1) {
    float y[turbo::kMaxDim];
    uint32_t codes[turbo::kMaxDim];
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * dim;
      float n2 = 0.0f;
      for (int i = 0; i < dim; ++i) {
        float v = static_cast<float>(xr[i]);
        y[i] = v;
        // Separate product and sum: no fused multiply-add, so every
        // backend rounds the norm the same way (docs/format.md).
        float sq = v * v;
        n2 += sq;
      }
      float n = std::sqrt(n2);
      for (int i = 0; i < dim; ++i) {
        y[i] = n > 0.0f ? y[i] / n : 0.0f;
      }
      turbo::rotate(y, dim, false);
      float rho2 = 0.0f;
      for (int i = 0; i < dim; ++i) {
        float z = y[i] * sqrt_dim;
        uint32_t code = 0;
        for (int j = 0; j < levels - 1; ++j) {
          code += z > bounds[j];
        }
        codes[i] = code;
        float c2 = c[code] * c[code];
        rho2 += c2;
      }
      // A NaN or Inf anywhere makes n non-finite: keep it visible.
      float scale = std::isfinite(n) ? n / std::sqrt(rho2) : NAN;
      scales[r] = static_cast<T>(scale);
      uint32_t* w = packed + r * width;
      std::fill(w, w + width, 0u);
      for (int i = 0; i < dim; ++i) {
        if (bits == 4) {
          w[i / 8] |= codes[i] << (4 * (i % 8));
        } else {
          w[i / 16] |= (codes[i] & 3u) << (2 * (i % 16));
          w[dim / 16 + i / 32] |= (codes[i] >> 2) << (i % 32);
        }
      }
    }
  });
}

template <typename T>
void decode_rows(
    const uint32_t* packed,
    const T* scales,
    T* out,
    int64_t rows,
    int dim,
    int bits) {
  const float* c = turbo::codebook(bits);
  int width = turbo::packed_width(dim, bits);
  parallel_for(rows, dim * 16, [&](int64_t r0, int64_t r1) {
    float y[turbo::kMaxDim];
    for (int64_t r = r0; r < r1; ++r) {
      float s = static_cast<float>(scales[r]);
      const uint32_t* w = packed + r * width;
      for (int i = 0; i < dim; ++i) {
        y[i] = s * c[turbo::unpack_code(w, i, dim, bits)];
      }
      turbo::rotate(y, dim, true);
      for (int i = 0; i < dim; ++i) {
        out[r * dim + i] = static_cast<T>(y[i]);
      }
    }
  });
}

} // namespace

namespace turbo {

void quantize_cpu(
    const array& w_pre,
    array& packed,
    array& scales,
    QuantizationMode mode,
    Stream s) {
  auto& encoder = cpu::get_command_encoder(s);
  auto w = ensure_contiguous(w_pre, encoder, s);
  packed.set_data(allocator::malloc(packed.nbytes()));
  scales.set_data(allocator::malloc(scales.nbytes()));
  encoder.set_input_array(w);
  encoder.set_output_array(packed);
  encoder.set_output_array(scales);
  int nbits = bits(mode);
  encoder.dispatch([w = array::unsafe_weak_copy(w),
                    packed = array::unsafe_weak_copy(packed),
                    scales = array::unsafe_weak_copy(scales),
                    nbits]() mutable {
    int dim = w.shape(-1);
    int64_t rows = w.size() / dim;
    dispatch_float(w.dtype(), [&](auto t) {
      using T = decltype(t);
      encode_rows<T>(
          w.data<T>(),
          packed.data<uint32_t>(),
          scales.data<T>(),
          rows,
          dim,
          nbits);
    });
  });
}

void dequantize_cpu(
    const array& packed_pre,
    const array& scales_pre,
    array& out,
    QuantizationMode mode,
    Stream s) {
  auto& encoder = cpu::get_command_encoder(s);
  auto packed = ensure_contiguous(packed_pre, encoder, s);
  // The op casts the scales to the output type.
  auto scales = ensure_contiguous(scales_pre, encoder, s);
  out.set_data(allocator::malloc(out.nbytes()));
  encoder.set_input_array(packed);
  encoder.set_input_array(scales);
  encoder.set_output_array(out);
  int nbits = bits(mode);
  encoder.dispatch([packed = array::unsafe_weak_copy(packed),
                    scales = array::unsafe_weak_copy(scales),
                    out = array::unsafe_weak_copy(out),
                    nbits]() mutable {
    int dim = out.shape(-1);
    int64_t rows = out.size() / dim;
    dispatch_float(out.dtype(), [&](auto t) {
      using T = decltype(t);
      decode_rows<T>(
          packed.data<uint32_t>(),
          scales.data<T>(),
          out.data<T>(),
          rows,
          dim,
          nbits);
    });
  });
}

} // namespace turbo

} // namespace mlx::core
