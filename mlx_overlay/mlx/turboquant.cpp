// Copyright © 2026 TurboQuant-MLX contributors.

#include <cmath>
#include <limits>
#include <numeric>
#include <sstream>

#include "mlx/backend/common/slicing.h"
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
    auto shifts =
        multiply(arange(0, per_word, uint32, s), array(width, uint32), s);
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
    auto shifts =
        multiply(arange(0, per_word, uint32, s), array(width, uint32), s);
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

QuantizationMode parse_mode(std::string_view tag, const std::string& mode) {
  if (mode != "turbo3" && mode != "turbo4") {
    std::ostringstream msg;
    msg << "[" << tag << "] Unsupported mode '" << mode
        << "'. Supported modes are 'turbo3' and 'turbo4'.";
    throw std::invalid_argument(msg.str());
  }
  return string_to_quantization_mode(mode, tag);
}

array per_query_head(const array& t, int gqa, StreamOrDevice s) {
  auto f = astype(t, float32, s);
  return gqa == 1 ? f : repeat(f, gqa, 1, s);
}

constexpr double kTwoPi = 6.283185307179586;

array key_wave_phases(const array& freqs, int n0, int kL, StreamOrDevice s) {
  int Bf = freqs.shape(0);
  int Hkv = freqs.shape(1);
  int P = freqs.shape(2);
  // Whole fractions of a turn: (k n) mod 2^24 exactly (uint32 products
  // wrap modulo 2^32, a multiple of 2^24), then one float32 rounding.
  auto n = astype(arange(n0, n0 + kL, int32, s), uint32, s);
  auto turns = bitwise_and(
      multiply(
          reshape(freqs, {Bf, Hkv, 1, P}, s), reshape(n, {1, 1, kL, 1}, s), s),
      array((1u << kKeyWaveBits) - 1, uint32),
      s);
  auto angle = multiply(
      astype(turns, float32, s),
      array(float(kTwoPi / (1 << kKeyWaveBits)), float32),
      s);
  return concatenate({cos(angle, s), sin(angle, s)}, 3, s);
}

array key_wave_shift(
    const array& freqs,
    const array& waves,
    int n0,
    int kL,
    StreamOrDevice s) {
  return matmul(
      key_wave_phases(freqs, n0, kL, s), astype(waves, float32, s), s);
}

array key_wave_coefficients(
    const array& q,
    const array& waves,
    float scale,
    StreamOrDevice s) {
  int B = q.shape(0), Hq = q.shape(1), qL = q.shape(2), D = q.shape(3);
  int Hkv = waves.shape(1);
  int rows = Hq / Hkv * qL;
  auto qg = reshape(astype(q, float32, s), {B, Hkv, rows, D}, s);
  auto coef = matmul(
      multiply(qg, array(scale, float32), s),
      swapaxes(astype(waves, float32, s), 2, 3, s),
      s);
  return reshape(coef, {B, Hq, qL, waves.shape(2)}, s);
}

array key_wave_bias(
    const array& coef,
    const array& freqs,
    int kL,
    StreamOrDevice s) {
  int B = coef.shape(0), Hq = coef.shape(1), qL = coef.shape(2);
  int Hkv = freqs.shape(1);
  // (B, Hkv, rows, 2P) times the phases (B or 1, Hkv, 2P, kL).
  auto cg = reshape(coef, {B, Hkv, Hq / Hkv * qL, coef.shape(3)}, s);
  auto bias =
      matmul(cg, swapaxes(key_wave_phases(freqs, 0, kL, s), 2, 3, s), s);
  return reshape(bias, {B, Hq, qL, kL}, s);
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

array leading_rows(const array& a, int n) {
  if (a.shape(2) == n) {
    return a;
  }
  Shape shape = a.shape();
  shape[2] = n;
  array rows(std::move(shape), a.dtype(), nullptr, {});
  slice(a, rows, Shape(a.ndim(), 0), Shape(a.ndim(), 1));
  return rows;
}

AttentionExtras attention_extras(
    const std::vector<array>& inputs,
    bool has_sinks,
    bool has_sink_values,
    bool has_key_shift,
    bool has_first_key,
    bool has_key_waves) {
  const bool has_mask = inputs.size() >
      size_t(
          5 + has_sinks + has_sink_values + has_key_shift + has_first_key +
          2 * has_key_waves);
  size_t next = 5;
  auto take = [&](bool present) {
    return present ? std::optional<array>(inputs[next++]) : std::nullopt;
  };
  AttentionExtras x;
  x.mask = take(has_mask);
  x.sinks = take(has_sinks);
  x.sink_values = take(has_sink_values);
  x.key_shift = take(has_key_shift);
  x.first_key = take(has_first_key);
  x.key_waves = take(has_key_waves);
  x.key_freqs = take(has_key_waves);
  return x;
}

std::tuple<array, array, array> sink_as_key(
    const array& q,
    const array& k,
    const array& v,
    const std::optional<array>& mask,
    const array& sinks,
    const array& sink_values,
    StreamOrDevice s) {
  int B = q.shape(0), Hq = q.shape(1), qL = q.shape(2);
  int Hkv = k.shape(1), kL = k.shape(2);
  auto dtype = q.dtype();
  Shape shape{B, Hq, qL, kL};
  array m = mask ? *mask : zeros(shape, dtype, s);
  if (m.dtype() == bool_) {
    m = where(
        m,
        array(0.0f, dtype),
        array(-std::numeric_limits<float>::max(), dtype),
        s);
  }
  m = broadcast_to(astype(m, dtype, s), shape, s);
  auto column = broadcast_to(
      reshape(astype(sinks, dtype, s), {1, Hq, 1, 1}, s), {B, Hq, qL, 1}, s);
  auto sv = broadcast_to(
      astype(sink_values, v.dtype(), s), {B, Hkv, 1, v.shape(3)}, s);
  return {
      concatenate({zeros({B, Hkv, 1, k.shape(3)}, k.dtype(), s), k}, 2, s),
      concatenate({sv, v}, 2, s),
      concatenate({column, m}, 3, s)};
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

} // namespace mlx::core
