// Copyright © 2026 TurboQuant-MLX contributors.

#include <cmath>
#include <numeric>
#include <sstream>

#include "mlx/fast.h"
#include "mlx/fast_primitives.h"
#include "mlx/ops.h"
#include "mlx/turboquant.h"

namespace mlx::core {

namespace turbo {

namespace {

array signs(int t, int dim) {
  std::vector<float> s(dim);
  for (int i = 0; i < dim; ++i) {
    s[i] = sign(t, i);
  }
  return array(s.begin(), {dim}, float32);
}

array codebook_array(int bits) {
  int n = 1 << bits;
  return array(codebook(bits), {n}, float32);
}

array boundaries_array(int bits) {
  const float* c = codebook(bits);
  int n = (1 << bits) - 1;
  std::vector<float> b(n);
  for (int j = 0; j < n; ++j) {
    b[j] = (c[j] + c[j + 1]) * 0.5f;
  }
  return array(b.begin(), {n}, float32);
}

// x[..., start:stop]
array slice_last(const array& x, int start, int stop, StreamOrDevice s) {
  Shape lo(x.ndim(), 0);
  Shape hi = x.shape();
  lo.back() = start;
  hi.back() = stop;
  return slice(x, std::move(lo), std::move(hi), s);
}

// One randomized Hadamard stage on x[..., offset : offset + p].
array hadamard_stage(const array& x, int offset, int p, StreamOrDevice s) {
  int dim = x.shape(-1);
  float norm = 1.0f / std::sqrt(static_cast<float>(p));
  if (p == dim) {
    return hadamard_transform(x, norm, s);
  }
  std::vector<array> parts;
  if (offset > 0) {
    parts.push_back(slice_last(x, 0, offset, s));
  }
  parts.push_back(
      hadamard_transform(slice_last(x, offset, offset + p, s), norm, s));
  if (offset + p < dim) {
    parts.push_back(slice_last(x, offset + p, dim, s));
  }
  return concatenate(parts, -1, s);
}

// codes (uint32, [..., D]) -> packed words.
array pack_codes(const array& codes, int dim, int bits, StreamOrDevice s) {
  auto lead = codes.shape();
  lead.pop_back();
  auto with_last = [&](Shape shape, std::initializer_list<int> tail) {
    for (int t : tail) {
      shape.push_back(t);
    }
    return shape;
  };
  auto pack_plane = [&](const array& vals, int per_word, int width) {
    // vals: [..., n] with n a multiple of per_word.
    int n = vals.shape(-1);
    auto shifts = multiply(
        arange(0, per_word, uint32, s), array(width, uint32), s);
    auto v = reshape(vals, with_last(lead, {n / per_word, per_word}), s);
    v = left_shift(v, shifts, s);
    return sum(v, -1, false, s);
  };
  if (bits == 4) {
    return astype(pack_plane(codes, 8, 4), uint32, s);
  }
  auto lo = bitwise_and(codes, array(3, uint32), s);
  auto hi = right_shift(codes, array(2, uint32), s);
  int padded = 32 * ((dim + 31) / 32);
  if (padded != dim) {
    std::vector<std::pair<int, int>> pads(hi.ndim(), {0, 0});
    pads.back() = {0, padded - dim};
    hi = pad(hi, pads, array(0, uint32), "constant", s);
  }
  return astype(
      concatenate({pack_plane(lo, 16, 2), pack_plane(hi, 32, 1)}, -1, s),
      uint32,
      s);
}

// packed words -> codes (uint32, [..., D]).
array unpack_codes(const array& w, int dim, int bits, StreamOrDevice s) {
  auto lead = w.shape();
  lead.pop_back();
  auto plane = [&](const array& words, int per_word, int width, int n) {
    auto shifts = multiply(
        arange(0, per_word, uint32, s), array(width, uint32), s);
    auto v = right_shift(expand_dims(words, -1, s), shifts, s);
    v = bitwise_and(v, array((1u << width) - 1, uint32), s);
    auto shape = lead;
    shape.push_back(-1);
    v = reshape(v, shape, s);
    return slice_last(v, 0, n, s);
  };
  if (bits == 4) {
    return plane(w, 8, 4, dim);
  }
  auto lo = plane(slice_last(w, 0, dim / 16, s), 16, 2, dim);
  auto hi = plane(slice_last(w, dim / 16, w.shape(-1), s), 32, 1, dim);
  return bitwise_or(lo, left_shift(hi, array(2, uint32), s), s);
}

} // namespace

void check_dim(std::string_view tag, int dim) {
  if (!is_supported_dim(dim)) {
    std::ostringstream msg;
    msg << "[" << tag << "] TurboQuant supports head dimensions 64, 80, 96, "
        << "128, 192 and 256 but got " << dim << ".";
    throw std::invalid_argument(msg.str());
  }
}

array rotate(const array& x, bool inverse, StreamOrDevice s) {
  int dim = x.shape(-1);
  int p = stage_size(dim);
  auto y = astype(x, float32, s);
  if (!inverse) {
    y = hadamard_stage(multiply(y, signs(1, dim), s), 0, p, s);
    y = hadamard_stage(multiply(y, signs(2, dim), s), dim - p, p, s);
  } else {
    y = multiply(hadamard_stage(y, dim - p, p, s), signs(2, dim), s);
    y = multiply(hadamard_stage(y, 0, p, s), signs(1, dim), s);
  }
  return y;
}

std::vector<array> quantize(const array& w, QuantizationMode mode, Stream s) {
  int dim = w.shape(-1);
  check_dim("quantize", dim);
  int nbits = bits(mode);
  auto fallback = [dim, nbits, s](const std::vector<array>& inputs) {
    auto& w = inputs[0];
    auto x = astype(w, float32, s);
    auto n = sqrt(sum(square(x, s), -1, true, s), s);
    auto zero = array(0.0f, float32);
    auto u = where(
        greater(n, zero, s),
        divide(x, maximum(n, array(1e-30f, float32), s), s),
        zero,
        s);
    auto z = multiply(
        rotate(u, false, s),
        array(std::sqrt(static_cast<float>(dim)), float32),
        s);
    auto codes = astype(
        sum(greater(expand_dims(z, -1, s), boundaries_array(nbits), s),
            -1,
            false,
            s),
        uint32,
        s);
    auto c = take(codebook_array(nbits), codes, s);
    auto rho = sqrt(sum(square(c, s), -1, true, s), s);
    auto scales = astype(divide(n, rho, s), w.dtype(), s);
    return std::vector<array>{pack_codes(codes, dim, nbits, s), scales};
  };
  auto wq_shape = w.shape();
  wq_shape.back() = packed_width(dim, nbits);
  auto sshape = w.shape();
  sshape.back() = 1;
  if (s.device == Device::cpu || gpu_quantize_supported()) {
    return array::make_arrays(
        {std::move(wq_shape), std::move(sshape)},
        {uint32, w.dtype()},
        std::make_shared<fast::Quantize>(s, fallback, dim, nbits, mode, false),
        {w});
  }
  return fallback({w});
}

array dequantize_rotated(
    const array& w,
    const array& scales,
    QuantizationMode mode,
    StreamOrDevice s) {
  int nbits = bits(mode);
  int dim = dim_from_packed_width(w.shape(-1), nbits);
  // Codes are indices: no gradient flows through them.
  auto codes = stop_gradient(unpack_codes(w, dim, nbits, s), s);
  auto c = take(codebook_array(nbits), codes, s);
  return multiply(c, astype(scales, float32, s), s);
}

array dequantize(
    const array& w,
    const array& scales,
    QuantizationMode mode,
    Dtype out_type,
    Stream s) {
  int nbits = bits(mode);
  int dim = dim_from_packed_width(w.shape(-1), nbits);
  if (dim < 0) {
    std::ostringstream msg;
    msg << "[dequantize] The packed width " << w.shape(-1)
        << " does not match any head dimension supported by mode '"
        << quantization_mode_to_string(mode) << "'.";
    throw std::invalid_argument(msg.str());
  }
  auto expected = w.shape();
  expected.back() = 1;
  if (scales.shape() != expected) {
    std::ostringstream msg;
    msg << "[dequantize] Expected scales with shape " << expected
        << " for packed weights with shape " << w.shape() << " but got "
        << scales.shape() << ".";
    throw std::invalid_argument(msg.str());
  }
  auto sc = astype(scales, out_type, s);
  auto fallback = [mode, out_type, s](const std::vector<array>& inputs) {
    auto y = dequantize_rotated(inputs[0], inputs[1], mode, s);
    return std::vector<array>{astype(rotate(y, true, s), out_type, s)};
  };
  auto out_shape = w.shape();
  out_shape.back() = dim;
  if (s.device == Device::cpu || gpu_quantize_supported()) {
    return array(
        std::move(out_shape),
        out_type,
        std::make_shared<fast::Quantize>(s, fallback, dim, nbits, mode, true),
        {w, sc});
  }
  return fallback({w, sc})[0];
}

} // namespace turbo

namespace fast {

namespace {

QuantizationMode parse_turbo_mode(const std::string& mode) {
  constexpr std::string_view tag = "quantized_scaled_dot_product_attention";
  if (mode != "turbo3" && mode != "turbo4") {
    std::ostringstream msg;
    msg << "[" << tag << "] Unsupported mode '" << mode
        << "'. Supported modes are 'turbo3' and 'turbo4'.";
    throw std::invalid_argument(msg.str());
  }
  return string_to_quantization_mode(mode, tag);
}

} // namespace

array quantized_scaled_dot_product_attention(
    const array& queries,
    const array& keys,
    const array& key_scales,
    const array& values,
    const array& value_scales,
    const float scale,
    const std::string& mask_mode /* = "" */,
    std::optional<array> mask_arr /* = {} */,
    const std::optional<array>& sinks /* = {} */,
    const std::string& key_mode /* = "turbo3" */,
    const std::string& value_mode /* = "" */,
    StreamOrDevice s /* = {} */) {
  constexpr std::string_view tag = "quantized_scaled_dot_product_attention";
  auto fail = [&](const auto&... parts) {
    std::ostringstream msg;
    msg << "[" << tag << "] ";
    (msg << ... << parts);
    throw std::invalid_argument(msg.str());
  };
  auto kmode = parse_turbo_mode(key_mode);
  auto vmode = parse_turbo_mode(value_mode.empty() ? key_mode : value_mode);
  int kbits = turbo::bits(kmode);
  int vbits = turbo::bits(vmode);

  const std::pair<const char*, const array*> named[] = {
      {"queries", &queries},
      {"keys", &keys},
      {"key_scales", &key_scales},
      {"values", &values},
      {"value_scales", &value_scales}};
  for (auto& [name, a] : named) {
    if (a->ndim() != 4) {
      fail(name, " with shape ", a->shape(), " expected to be rank 4.");
    }
  }
  if (queries.dtype() != float32 && queries.dtype() != float16 &&
      queries.dtype() != bfloat16) {
    fail("queries must be float32, float16 or bfloat16 but got ",
         queries.dtype(), ".");
  }
  if (keys.dtype() != uint32 || values.dtype() != uint32) {
    fail("keys and values must be the packed uint32 arrays returned by "
         "mx.quantize but got ",
         keys.dtype(), " and ", values.dtype(), ".");
  }
  for (auto* sc : {&key_scales, &value_scales}) {
    if (!issubdtype(sc->dtype(), floating) || sc->dtype() == float64) {
      fail("scales must be float32, float16 or bfloat16 but got ",
           sc->dtype(), ".");
    }
  }
  if (!std::isfinite(scale)) {
    fail("scale must be finite but got ", scale, ".");
  }
  int B = queries.shape(0);
  int n_q_heads = queries.shape(1);
  int qL = queries.shape(2);
  int dk = queries.shape(3);
  int n_kv_heads = keys.shape(1);
  int kL = keys.shape(2);
  for (auto& [name, a] : named) {
    if (a->shape(0) != B) {
      fail("mismatching batch dimension: queries have ", B, " but ", name,
           " have shape ", a->shape(), ".");
    }
  }
  for (auto* a : {&key_scales, &values, &value_scales}) {
    if (a->shape(1) != n_kv_heads || a->shape(2) != kL) {
      fail("keys, values and their scales must share (batch, kv_heads, "
           "length); got keys ",
           keys.shape(), ", key_scales ", key_scales.shape(), ", values ",
           values.shape(), ", value_scales ", value_scales.shape(), ".");
    }
  }
  if (key_scales.shape(3) != 1 || value_scales.shape(3) != 1) {
    fail("scales must have a last dimension of 1 (one scale per vector).");
  }
  if (n_kv_heads == 0 || n_q_heads % n_kv_heads != 0) {
    fail("n_heads must be a multiple of n_kv_heads, found n_heads ",
         n_q_heads, " for n_kv_heads ", n_kv_heads, ".");
  }
  if (qL == 0 || kL == 0 || B == 0 || n_q_heads == 0) {
    fail("empty inputs are not supported (queries ", queries.shape(),
         ", keys ", keys.shape(), ").");
  }
  turbo::check_dim(tag, dk);
  if (keys.shape(3) != turbo::packed_width(dk, kbits)) {
    fail("keys have packed width ", keys.shape(3), " but mode '",
         quantization_mode_to_string(kmode), "' with head_dim ", dk,
         " needs ", turbo::packed_width(dk, kbits), ".");
  }
  int dv = turbo::dim_from_packed_width(values.shape(3), vbits);
  if (dv < 0) {
    fail("values have packed width ", values.shape(3),
         " which matches no supported head_dim for mode '",
         quantization_mode_to_string(vmode), "'.");
  }

  if (mask_mode != "" && mask_mode != "causal" && mask_mode != "array") {
    fail("Invalid mask_mode ", mask_mode,
         ". mask_mode must be 'causal', 'array' or ''.");
  }
  bool do_causal = mask_mode == "causal";
  if (do_causal && mask_arr) {
    fail("Invalid mask_arr for mask_mode 'causal'. No array mask should be "
         "passed.");
  }
  bool has_arr_mask = mask_arr.has_value();
  bool has_sinks = sinks.has_value();
  auto stream = to_stream(s);

  // Both scales share one type in the kernels.
  auto scale_type = key_scales.dtype() == value_scales.dtype()
      ? key_scales.dtype()
      : float32;
  std::vector<array> inputs = {
      turbo::rotate(queries, false, stream),
      keys,
      astype(key_scales, scale_type, stream),
      values,
      astype(value_scales, scale_type, stream)};
  if (has_arr_mask) {
    if (mask_arr->ndim() > 4) {
      fail("the mask with shape ", mask_arr->shape(),
           " expected to have at most rank 4.");
    }
    Shape mask_shape{B, n_q_heads, qL, kL};
    try {
      broadcast_shapes(mask_arr->shape(), mask_shape);
    } catch (const std::invalid_argument&) {
      fail("the mask with shape ", mask_arr->shape(),
           " cannot be broadcast to ", mask_shape, ".");
    }
    if (broadcast_shapes(mask_arr->shape(), mask_shape) != mask_shape) {
      fail("the mask with shape ", mask_arr->shape(),
           " cannot be broadcast to ", mask_shape, ".");
    }
    auto mask = *mask_arr;
    if (mask.dtype() != bool_) {
      if (!issubdtype(mask.dtype(), floating) ||
          promote_types(mask.dtype(), queries.dtype()) != queries.dtype()) {
        fail("Mask type must be bool or promote to the queries type ",
             queries.dtype(), " but got ", mask.dtype(), ".");
      }
      mask = astype(mask, float32, stream);
    }
    inputs.push_back(broadcast_to(mask, mask_shape, stream));
  }
  if (has_sinks) {
    if (sinks->ndim() != 1 || sinks->shape(0) != n_q_heads) {
      fail("Received invalid shape for sinks ", sinks->shape(),
           "; expected (", n_q_heads, ",).");
    }
    if (!issubdtype(sinks->dtype(), floating)) {
      fail("sinks must be floating point but got ", sinks->dtype(), ".");
    }
    inputs.push_back(astype(*sinks, float32, stream));
  }

  // Op-composed fallback: reconstruct the cache in the rotated domain and use
  // the regular fused attention. Used by backends without kernels and for
  // transformations.
  auto fallback = [scale, do_causal, has_arr_mask, has_sinks, kmode, vmode,
                   stream](const std::vector<array>& inputs) {
    auto k = turbo::dequantize_rotated(inputs[1], inputs[2], kmode, stream);
    auto v = turbo::dequantize_rotated(inputs[3], inputs[4], vmode, stream);
    std::optional<array> mask;
    if (has_arr_mask) {
      mask = inputs[5];
    }
    std::optional<array> sinks;
    if (has_sinks) {
      sinks = inputs.back();
    }
    return std::vector<array>{scaled_dot_product_attention(
        inputs[0],
        k,
        v,
        scale,
        do_causal ? "causal" : "",
        mask,
        sinks,
        stream)};
  };

  array out_rot = (stream.device == Device::cpu ||
                   !QuantizedScaledDotProductAttention::use_fallback(
                       queries, dk, dv, stream))
      ? array(
            Shape{B, n_q_heads, qL, dv},
            float32,
            std::make_shared<QuantizedScaledDotProductAttention>(
                stream, fallback, scale, do_causal, has_sinks, kmode, vmode),
            inputs)
      : fallback(inputs)[0];
  return astype(turbo::rotate(out_rot, true, stream), queries.dtype(), stream);
}

bool QuantizedScaledDotProductAttention::is_equivalent(
    const Primitive& other) const {
  const auto& o = static_cast<const QuantizedScaledDotProductAttention&>(other);
  return scale_ == o.scale_ && do_causal_ == o.do_causal_ &&
      has_sinks_ == o.has_sinks_ && key_mode_ == o.key_mode_ &&
      value_mode_ == o.value_mode_;
}

std::vector<Shape> QuantizedScaledDotProductAttention::output_shapes(
    const std::vector<array>& inputs) {
  auto shape = inputs[0].shape();
  shape.back() =
      turbo::dim_from_packed_width(inputs[3].shape(-1), turbo::bits(value_mode_));
  return {shape};
}

} // namespace fast

} // namespace mlx::core
