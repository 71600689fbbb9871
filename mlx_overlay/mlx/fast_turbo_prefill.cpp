// Copyright © 2026 TurboQuant-MLX contributors.
//
// The route of fast::quantized_scaled_dot_product_attention for many queries
// (prefill): the cache dequantized by fast::QuantizedKVDequantize into a
// transient copy, then MLX's own attention.

#include "mlx/fast.h"
#include "mlx/fast_primitives.h"
#include "mlx/ops.h"
#include "mlx/turboquant.h"

namespace mlx::core {

namespace {

// The rows (B, H, L, W) of a quantized cache in `dtype` for MLX's attention,
// as fast::QuantizedKVDequantize computes them (mlx/turboquant.h,
// dequantize_kv_cpu): [first,] then each vector plus shift and the moving
// shift of its row, in float32, rounded once. Per-channel key scales (rare)
// multiply the vectors before the shifts; only the op-composed path has them.
array dequantize_kv(
    const array& w,
    const array& sc,
    QuantizationMode mode,
    Dtype dtype,
    std::optional<array> first,
    std::optional<array> shift,
    const std::optional<array>& channel_scales,
    std::optional<array> freqs,
    std::optional<array> waves,
    const Stream& s) {
  const int B = w.shape(0);
  const int H = w.shape(1);
  const int L = w.shape(2);
  const int D = turbo::dim_from_packed_width(w.shape(3), turbo::bits(mode));
  // The small inputs, per (batch, head) and contiguous for the kernels.
  auto per_head = [&](const array& x, Dtype t, Shape shape) {
    return contiguous(
        broadcast_to(astype(x, t, s), std::move(shape), s), false, s);
  };
  if (first) {
    first = per_head(*first, dtype, {B, H, 1, D});
  }
  if (shift) {
    shift = per_head(*shift, float32, {B, H, 1, D});
  }
  if (freqs) {
    const int P = freqs->shape(-1);
    freqs = per_head(*freqs, uint32, {B, H, P});
    waves = per_head(*waves, float32, {B, H, 2 * P, D});
  }
  const turbo::KVDequantizeLayout layout{
      first.has_value(), shift.has_value(), freqs.has_value()};
  auto fallback = [mode, dtype, layout, channel_scales, s](
                      const std::vector<array>& inputs) {
    auto x = turbo::dequantize(inputs[0], inputs[1], mode, float32, s);
    if (channel_scales) {
      x = multiply(x, astype(*channel_scales, float32, s), s);
    }
    int i = 2;
    std::optional<array> row0;
    if (layout.has_first) {
      row0 = inputs[i++];
    }
    if (layout.has_shift) {
      x = add(x, inputs[i++], s);
    }
    if (layout.has_waves) {
      const auto& f = inputs[i];
      const auto& wv = inputs[i + 1];
      x = add(x, turbo::key_wave_shift(f, wv, 0, x.shape(2), s), s);
    }
    x = astype(x, dtype, s);
    if (row0) {
      x = concatenate({*row0, x}, 2, s);
    }
    return std::vector<array>{x};
  };
  std::vector<array> inputs{w, astype(sc, dtype, s)};
  for (const auto& x : {first, shift, freqs, waves}) {
    if (x) {
      inputs.push_back(*x);
    }
  }
  if (channel_scales) {
    return fallback(inputs)[0];
  }
  return array(
      {B, H, L + layout.has_first, D},
      dtype,
      std::make_shared<fast::QuantizedKVDequantize>(
          s,
          fallback,
          mode,
          layout.has_first,
          layout.has_shift,
          layout.has_waves),
      std::move(inputs));
}

} // namespace

namespace turbo {

// Many queries (prefill) are compute bound: dequantizing the cache is
// O(kL * D) next to the O(qL * kL * D) of attention, so the cache is
// dequantized into a transient copy in the queries' dtype (at most the fp16
// size of this call's K/V, freed after it) and MLX's own attention runs on it
// (cuDNN on CUDA, steel on Metal). One rule for every backend. One pass per
// K and V writes the copy: the exact first token as row 0, the key shifts
// added back to every cached key.
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
    const Stream& stream) {
  const int B = queries.shape(0);
  const int qL = queries.shape(2);
  const int kL = keys.shape(2);
  const bool has_sinks = sinks.has_value();
  auto dtype = queries.dtype();
  // Without sinks the constant key shift moves every score of a row equally,
  // so it changes nothing: the cached keys go without it and the exact first
  // token as first_key - key_shift (the same scores up to that common
  // shift). With sinks the absolute scores matter and every key gets it.
  std::optional<array> k0 = first_key;
  if (first_key && key_shift && !has_sinks) {
    k0 = subtract(
        astype(*first_key, float32, stream),
        astype(*key_shift, float32, stream),
        stream);
  }
  // The shift that moves with the position differs per key: always added.
  auto k = dequantize_kv(
      keys,
      key_scales,
      kmode,
      dtype,
      k0,
      has_sinks ? key_shift : std::nullopt,
      key_channel_scales,
      key_shift_freqs,
      key_shift_waves,
      stream);
  auto v = dequantize_kv(
      values,
      value_scales,
      vmode,
      dtype,
      first_value,
      std::nullopt,
      std::nullopt,
      std::nullopt,
      std::nullopt,
      stream);
  if (first_key && mask_arr) {
    // The first token, exact, is key 0; a mask covers the cached keys only
    // (key 0 is always visible).
    auto m = *mask_arr;
    while (m.ndim() < 4) {
      m = expand_dims(m, 0, stream);
    }
    Shape shape{B, m.shape(1), qL, kL};
    m = broadcast_to(m, shape, stream);
    shape.back() = 1;
    auto visible = m.dtype() == bool_ ? full(shape, true, stream)
                                      : zeros(shape, m.dtype(), stream);
    mask_arr = concatenate({visible, m}, 3, stream);
  }
  // MLX's attention takes sinks in the output's dtype.
  std::optional<array> sinks_q;
  if (sinks) {
    sinks_q = astype(*sinks, dtype, stream);
  }
  return mlx_attention(
      &fast::scaled_dot_product_attention,
      queries,
      k,
      v,
      scale,
      mask_mode,
      mask_arr,
      sinks_q,
      stream);
}

} // namespace turbo

namespace fast {

bool QuantizedKVDequantize::is_equivalent(const Primitive& other) const {
  const auto& o = static_cast<const QuantizedKVDequantize&>(other);
  return mode_ == o.mode_ && has_first_ == o.has_first_ &&
      has_shift_ == o.has_shift_ && has_waves_ == o.has_waves_;
}

std::vector<Shape> QuantizedKVDequantize::output_shapes(
    const std::vector<array>& inputs) {
  auto shape = inputs[0].shape();
  shape[2] += has_first_;
  shape[3] = turbo::dim_from_packed_width(shape[3], turbo::bits(mode_));
  return {shape};
}

} // namespace fast

} // namespace mlx::core
