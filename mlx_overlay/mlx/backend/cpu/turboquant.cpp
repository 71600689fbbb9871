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

// quantized_cache_update: x (B, H, L, D) with any strides, minus an optional
// float32 shift (B or 1, H or 1, L or 1, D) with its own strides and the
// moving shift of cache row offset + l (freqs (B or 1, H, P) uint32, waves (B
// or 1, H, 2P, D) float32, row contiguous), summed in float32 and subtracted,
// the difference rounded to T, into rows offset .. offset + L - 1 of the
// row-contiguous packed codes (B, H, N, W) or, with scales, of the scales (B,
// H, N, 1).
template <typename T>
void encode_into_rows(
    const array& x,
    const array* shift,
    const array* freqs,
    const array* waves,
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
  Strides ss(4, 0);
  for (int i = 0; shift && i < 4; ++i) {
    ss[i] = shift->shape(i) == 1 ? 0 : shift->strides(i);
  }
  const uint32_t* fp = freqs ? freqs->data<uint32_t>() : nullptr;
  const float* wp = waves ? waves->data<float>() : nullptr;
  const int P = freqs ? freqs->shape(2) : 0;
  const bool wave_batch = freqs && freqs->shape(0) > 1;
  const TurnTables* tables = fp ? &turn_tables() : nullptr;
  int64_t nvec = int64_t(x.shape(0)) * H * L;
  parallel_for(nvec, dim * 16, [&](int64_t v0, int64_t v1) {
    float y[turbo::kMaxDim];
    float m[turbo::kMaxDim];
    float phases[2 * turbo::kMaxKeyWaves];
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
      if (sp || fp) {
        // The shift of this row, then one subtraction and one rounding.
        std::fill(m, m + dim, 0.0f);
        if (sp) {
          const float* sr = sp + b * ss[0] + h * ss[1] + l * ss[2];
          for (int i = 0; i < dim; ++i) {
            m[i] = sr[i * ss[3]];
          }
        }
        if (fp) {
          const int64_t wh = (wave_batch ? b * H : 0) + h;
          key_wave_phases(
              fp + wh * P, P, uint32_t(offset + l), *tables, phases);
          add_key_wave_shift(phases, wp + wh * 2 * P * dim, P, dim, m);
        }
        for (int i = 0; i < dim; ++i) {
          y[i] = static_cast<float>(static_cast<T>(y[i] - m[i]));
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

// Where decode_rows reads and what it adds: code row i of (b, h) at
// packed + b w_str[0] + h w_str[1] + i w_str[2] (words; a row's words
// contiguous), its scale likewise; output row F + i of the (b, h) block of F
// + L rows (F = 1 with a first row). shift (B H, D) float32, freqs (B H, P)
// and waves (B H, 2P, D) float32 may be null.
template <typename T>
struct DecodeRows {
  int64_t B, H, L;
  int64_t w_str[3];
  int64_t s_str[3];
  const T* first;
  const float* shift;
  const uint32_t* freqs;
  const float* waves;
  int P;
};

// mx.dequantize (contiguous rows) and fast::QuantizedKVDequantize
// (mlx/turboquant.h, dequantize_kv_cpu): R^T (scale * c[code]), plus the
// shifts in float32, rounded once to T.
template <typename T>
void decode_rows(
    const uint32_t* packed,
    const T* scales,
    T* out,
    const DecodeRows<T>& r,
    int dim,
    int bits) {
  const float* c = turbo::codebook(bits);
  const int F = r.first != nullptr;
  const int64_t heads = r.B * r.H;
  const TurnTables* tables = r.waves ? &turn_tables() : nullptr;
  parallel_for(heads * r.L, dim * 16, [&](int64_t r0, int64_t r1) {
    float y[turbo::kMaxDim];
    float phases[2 * turbo::kMaxKeyWaves];
    for (int64_t row = r0; row < r1; ++row) {
      const int64_t bh = row / r.L, i = row % r.L;
      const int64_t b = bh / r.H, h = bh % r.H;
      const uint32_t* w =
          packed + b * r.w_str[0] + h * r.w_str[1] + i * r.w_str[2];
      const float s = static_cast<float>(
          scales[b * r.s_str[0] + h * r.s_str[1] + i * r.s_str[2]]);
      for (int d = 0; d < dim; ++d) {
        y[d] = s * c[turbo::unpack_code(w, d, dim, bits)];
      }
      turbo::rotate(y, dim, true);
      if (r.shift) {
        const float* m = r.shift + bh * dim;
        for (int d = 0; d < dim; ++d) {
          y[d] += m[d];
        }
      }
      if (r.waves) {
        key_wave_phases(r.freqs + bh * r.P, r.P, uint32_t(i), *tables, phases);
        add_key_wave_shift(phases, r.waves + bh * 2 * r.P * dim, r.P, dim, y);
      }
      T* o = out + (bh * (F + r.L) + F + i) * dim;
      for (int d = 0; d < dim; ++d) {
        o[d] = static_cast<T>(y[d]);
      }
      if (F && i == 0) {
        std::copy(r.first + bh * dim, r.first + (bh + 1) * dim, o - dim);
      }
    }
  });
  if (F && r.L == 0) {
    std::copy(r.first, r.first + heads * dim, out);
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
    bool has_shift,
    bool has_waves,
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
  encoder.set_input_array(x);
  int i = 2;
  auto next = [&](bool present, bool row_contiguous) -> std::optional<array> {
    if (!present) {
      return std::nullopt;
    }
    auto a =
        row_contiguous ? ensure_contiguous(inputs[i], encoder, s) : inputs[i];
    ++i;
    encoder.set_input_array(a);
    return array::unsafe_weak_copy(a);
  };
  auto shift = next(has_shift, false);
  auto freqs = next(has_waves, true);
  auto waves = next(has_waves, true);
  encoder.set_output_array(out);
  int nbits = bits(mode);
  encoder.dispatch([x = array::unsafe_weak_copy(x),
                    shift,
                    freqs,
                    waves,
                    out = array::unsafe_weak_copy(out),
                    offset,
                    scales,
                    nbits]() mutable {
    dispatch_float(x.dtype(), [&](auto t) {
      using T = decltype(t);
      encode_into_rows<T>(
          x,
          shift ? &*shift : nullptr,
          freqs ? &*freqs : nullptr,
          waves ? &*waves : nullptr,
          out,
          offset,
          scales,
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
      const int64_t W = packed.shape(-1);
      DecodeRows<T> r{
          1, 1, rows, {0, 0, W}, {0, 0, 1}, nullptr, nullptr, nullptr, nullptr};
      decode_rows<T>(
          packed.data<uint32_t>(),
          scales.data<T>(),
          out.data<T>(),
          r,
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
  encoder.set_input_array(packed);
  for (size_t j = 1; j < inputs.size(); ++j) {
    encoder.set_input_array(inputs[j]);
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
      const auto& ps = packed.strides();
      const auto& ss = scales.strides();
      DecodeRows<T> r{
          packed.shape(0),
          packed.shape(1),
          packed.shape(2),
          {ps[0], ps[1], ps[2]},
          {ss[0], ss[1], ss[2]},
          first ? first->data<T>() : nullptr,
          shift ? shift->data<float>() : nullptr,
          freqs ? freqs->data<uint32_t>() : nullptr,
          waves ? waves->data<float>() : nullptr,
          freqs ? freqs->shape(-1) : 0};
      decode_rows<T>(
          packed.data<uint32_t>(),
          scales.data<T>(),
          out.data<T>(),
          r,
          out.shape(3),
          nbits);
    });
  });
}

} // namespace turbo

} // namespace mlx::core
