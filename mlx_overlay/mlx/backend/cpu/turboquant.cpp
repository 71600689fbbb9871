// Copyright © 2026 TurboQuant-MLX contributors.
//
// CPU encode / decode kernels for mx.quantize and mx.dequantize with the
// turbo modes.

#include <algorithm>
#include <cmath>
#include <optional>

#include "mlx/backend/cpu/turboquant.h"
#include "mlx/turboquant.h"
#include "mlx/types/half_types.h"

namespace mlx::core {

namespace {

using namespace turbo_cpu;

// Encodes one vector: the float32 values in y (dim of them, overwritten)
// into the packed words w and the scale.
class VectorEncoder {
 public:
  VectorEncoder(int dim, int bits)
      : dim_(dim),
        bits_(bits),
        levels_(1 << bits),
        width_(turbo::packed_width(dim, bits)),
        sqrt_dim_(std::sqrt(static_cast<float>(dim))),
        c_(turbo::codebook(bits)) {
    for (int j = 0; j < levels_ - 1; ++j) {
      bounds_[j] = (c_[j] + c_[j + 1]) * 0.5f;
    }
  }

  int width() const {
    return width_;
  }

  // Returns the scale (float32, before rounding to the storage dtype).
  float operator()(float* y, uint32_t* w) const {
    uint32_t codes[turbo::kMaxDim];
    float n2 = 0.0f;
    for (int i = 0; i < dim_; ++i) {
      // Separate product and sum: no fused multiply-add, so every
      // backend rounds the norm the same way (docs/format.md).
      float sq = y[i] * y[i];
      n2 += sq;
    }
    float n = std::sqrt(n2);
    for (int i = 0; i < dim_; ++i) {
      y[i] = n > 0.0f ? y[i] / n : 0.0f;
    }
    turbo::rotate(y, dim_, false);
    float rho2 = 0.0f;
    for (int i = 0; i < dim_; ++i) {
      float z = y[i] * sqrt_dim_;
      uint32_t code = 0;
      for (int j = 0; j < levels_ - 1; ++j) {
        code += z > bounds_[j];
      }
      codes[i] = code;
      float c2 = c_[code] * c_[code];
      rho2 += c2;
    }
    std::fill(w, w + width_, 0u);
    for (int i = 0; i < dim_; ++i) {
      if (bits_ == 4) {
        w[i / 8] |= codes[i] << (4 * (i % 8));
      } else {
        w[i / 16] |= (codes[i] & 3u) << (2 * (i % 16));
        w[dim_ / 16 + i / 32] |= (codes[i] >> 2) << (i % 32);
      }
    }
    // A NaN or Inf anywhere makes n non-finite: keep it visible.
    return std::isfinite(n) ? n / std::sqrt(rho2) : NAN;
  }

 private:
  int dim_;
  int bits_;
  int levels_;
  int width_;
  float sqrt_dim_;
  const float* c_;
  float bounds_[15];
};

template <typename T>
void encode_rows(
    const T* x,
    uint32_t* packed,
    T* scales,
    int64_t rows,
    int dim,
    int bits) {
  VectorEncoder encode(dim, bits);
  parallel_for(rows, dim * 16, [&](int64_t r0, int64_t r1) {
    float y[turbo::kMaxDim];
    for (int64_t r = r0; r < r1; ++r) {
      for (int i = 0; i < dim; ++i) {
        y[i] = static_cast<float>(x[r * dim + i]);
      }
      scales[r] = static_cast<T>(encode(y, packed + r * encode.width()));
    }
  });
}

// quantized_cache_update: x (B, H, L, D) with any strides, an optional
// float32 shift with its own strides, into rows offset .. offset + L - 1 of
// the row-contiguous packed codes (B, H, N, W) or, with scales, of the
// scales (B, H, N, 1).
template <typename T>
void encode_into_rows(
    const array& x,
    const array* shift,
    array& out,
    int offset,
    bool scales,
    int bits) {
  int H = x.shape(1);
  int L = x.shape(2);
  int dim = x.shape(3);
  int64_t rows = out.shape(2);
  VectorEncoder encode(dim, bits);
  const T* xp = x.data<T>();
  const float* sp = shift ? shift->data<float>() : nullptr;
  auto xs = x.strides();
  auto ss = shift ? shift->strides() : Strides(4, 0);
  int64_t nvec = int64_t(x.shape(0)) * H * L;
  parallel_for(nvec, dim * 16, [&](int64_t v0, int64_t v1) {
    float y[turbo::kMaxDim];
    uint32_t words[turbo::kMaxDim];
    for (int64_t v = v0; v < v1; ++v) {
      int64_t l = v % L;
      int64_t bh = v / L;
      int64_t h = bh % H;
      int64_t b = bh / H;
      const T* xr = xp + b * xs[0] + h * xs[1] + l * xs[2];
      for (int i = 0; i < dim; ++i) {
        y[i] = static_cast<float>(xr[i * xs[3]]);
      }
      if (sp) {
        const float* sr = sp + b * ss[0] + h * ss[1] + l * ss[2];
        for (int i = 0; i < dim; ++i) {
          y[i] = static_cast<float>(static_cast<T>(y[i] - sr[i * ss[3]]));
        }
      }
      int64_t r = bh * rows + offset + l;
      if (scales) {
        out.data<T>()[r] = static_cast<T>(encode(y, words));
      } else {
        encode(y, out.data<uint32_t>() + r * encode.width());
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

// fast::QuantizedKVDequantize rows (mlx/turboquant.h, dequantize_kv_cpu):
// each (b, h) block of F + L rows of out from packed / scales rows with
// strides (elements; the packed words of a row contiguous).
template <typename T>
void decode_kv_rows(
    const array& packed,
    const array& scales,
    const T* first,
    const float* shift,
    const uint32_t* freqs,
    const float* waves,
    int P,
    T* out,
    int bits) {
  const int H = packed.shape(1);
  const int64_t L = packed.shape(2);
  const int F = first != nullptr;
  const int dim = turbo::dim_from_packed_width(packed.shape(3), bits);
  const float* c = turbo::codebook(bits);
  const auto& ps = packed.strides();
  const auto& ss = scales.strides();
  const uint32_t* pw = packed.data<uint32_t>();
  const T* sc = scales.data<T>();
  const TurnTables& tables = turn_tables();
  const int64_t heads = int64_t(packed.shape(0)) * H;
  parallel_for(heads * L, dim * 16, [&](int64_t r0, int64_t r1) {
    float y[turbo::kMaxDim];
    float phases[2 * turbo::kMaxKeyWaves];
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t bh = r / L, i = r % L;
      const int64_t b = bh / H, h = bh % H;
      const uint32_t* w = pw + b * ps[0] + h * ps[1] + i * ps[2];
      const float s = static_cast<float>(sc[b * ss[0] + h * ss[1] + i * ss[2]]);
      for (int d = 0; d < dim; ++d) {
        y[d] = s * c[turbo::unpack_code(w, d, dim, bits)];
      }
      turbo::rotate(y, dim, true);
      if (shift) {
        const float* m = shift + bh * dim;
        for (int d = 0; d < dim; ++d) {
          y[d] += m[d];
        }
      }
      if (waves) {
        key_wave_phases(freqs + bh * P, P, uint32_t(i), tables, phases);
        const float* wv = waves + bh * 2 * P * dim;
        for (int j = 0; j < 2 * P; ++j) {
          for (int d = 0; d < dim; ++d) {
            y[d] += phases[j] * wv[j * dim + d];
          }
        }
      }
      T* o = out + (bh * (F + L) + F + i) * dim;
      for (int d = 0; d < dim; ++d) {
        o[d] = static_cast<T>(y[d]);
      }
      if (F && i == 0) {
        std::copy(first + bh * dim, first + (bh + 1) * dim, o - dim);
      }
    }
  });
  if (F && L == 0) {
    std::copy(first, first + heads * dim, out);
  }
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

void quantize_update_cpu(
    const std::vector<array>& inputs,
    array& out,
    QuantizationMode mode,
    int offset,
    bool scales,
    Stream s) {
  auto& encoder = cpu::get_command_encoder(s);
  // The output takes the cache buffer when it can be donated (as
  // SliceUpdate does); the kernel then writes the new rows only.
  auto& buf = inputs[0];
  copy_cpu(
      buf,
      out,
      buf.flags().row_contiguous ? CopyType::Vector : CopyType::General,
      s);
  const array& x = inputs[1];
  std::optional<array> shift;
  if (inputs.size() > 2) {
    shift = inputs[2];
    encoder.set_input_array(*shift);
  }
  encoder.set_input_array(x);
  encoder.set_output_array(out);
  int nbits = bits(mode);
  encoder.dispatch([x = array::unsafe_weak_copy(x),
                    shift = shift ? std::optional<array>(
                                        array::unsafe_weak_copy(*shift))
                                  : std::nullopt,
                    out = array::unsafe_weak_copy(out),
                    offset,
                    scales,
                    nbits]() mutable {
    dispatch_float(x.dtype(), [&](auto t) {
      using T = decltype(t);
      encode_into_rows<T>(
          x, shift ? &*shift : nullptr, out, offset, scales, nbits);
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

void dequantize_kv_cpu(
    const std::vector<array>& inputs,
    array& out,
    QuantizationMode mode,
    KVDequantizeLayout layout,
    Stream s) {
  auto& encoder = cpu::get_command_encoder(s);
  // The cache is read in place (usually a slice of a larger buffer); only
  // the words of a row must be contiguous.
  auto packed = inputs[0];
  if (packed.strides().back() != 1) {
    packed = contiguous_copy_cpu(packed, s);
    encoder.add_temporary(packed);
  }
  const array& scales = inputs[1];
  out.set_data(allocator::malloc(out.nbytes()));
  for (const auto& x : inputs) {
    encoder.set_input_array(x);
  }
  encoder.set_output_array(out);
  int i = 2;
  auto next = [&](bool present) -> std::optional<array> {
    return present ? std::optional<array>(array::unsafe_weak_copy(inputs[i++]))
                   : std::nullopt;
  };
  auto first = next(layout.has_first);
  auto shift = next(layout.has_shift);
  auto freqs = next(layout.has_waves);
  auto waves = next(layout.has_waves);
  encoder.dispatch([packed = array::unsafe_weak_copy(packed),
                    scales = array::unsafe_weak_copy(scales),
                    first,
                    shift,
                    freqs,
                    waves,
                    out = array::unsafe_weak_copy(out),
                    nbits = bits(mode)]() mutable {
    dispatch_float(out.dtype(), [&](auto t) {
      using T = decltype(t);
      decode_kv_rows<T>(
          packed,
          scales,
          first ? first->data<T>() : nullptr,
          shift ? shift->data<float>() : nullptr,
          freqs ? freqs->data<uint32_t>() : nullptr,
          waves ? waves->data<float>() : nullptr,
          freqs ? freqs->shape(-1) : 0,
          out.data<T>(),
          nbits);
    });
  });
}

} // namespace turbo

} // namespace mlx::core
