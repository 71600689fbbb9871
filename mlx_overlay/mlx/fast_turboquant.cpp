// Copyright © 2026 TurboQuant-MLX contributors.
//
// fast::quantized_scaled_dot_product_attention: validation, the op-composed
// fallback and the QuantizedScaledDotProductAttention primitive.

#include <cmath>
#include <limits>
#include <sstream>

#include "mlx/fast.h"
#include "mlx/fast_primitives.h"
#include "mlx/ops.h"
#include "mlx/primitives.h"
#include "mlx/turboquant.h"

namespace mlx::core {

namespace fast {

namespace {

// Shapes of a validated call.
struct AttentionShape {
  int B;
  int n_q_heads;
  int n_kv_heads;
  int qL;
  int kL;
  int dk;
  int dv;
};

// Checks every argument of quantized_scaled_dot_product_attention; throws
// std::invalid_argument naming the op.
AttentionShape validate_inputs(
    const array& queries,
    const array& keys,
    const array& key_scales,
    const array& values,
    const array& value_scales,
    const float scale,
    const std::string& mask_mode,
    const std::optional<array>& mask_arr,
    const std::optional<array>& sinks,
    QuantizationMode kmode,
    QuantizationMode vmode,
    const std::optional<array>& key_shift,
    const std::optional<array>& key_channel_scales,
    const std::optional<array>& first_key,
    const std::optional<array>& first_value,
    const std::optional<array>& key_shift_freqs,
    const std::optional<array>& key_shift_waves) {
  constexpr std::string_view tag = "quantized_scaled_dot_product_attention";
  auto fail = [&](const auto&... parts) {
    std::ostringstream msg;
    msg << "[" << tag << "] ";
    (msg << ... << parts);
    throw std::invalid_argument(msg.str());
  };
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
    fail(
        "queries must be float32, float16 or bfloat16 but got ",
        queries.dtype(),
        ".");
  }
  if (keys.dtype() != uint32 || values.dtype() != uint32) {
    fail(
        "keys and values must be the packed uint32 arrays returned by "
        "mx.quantize but got ",
        keys.dtype(),
        " and ",
        values.dtype(),
        ".");
  }
  for (auto* sc : {&key_scales, &value_scales}) {
    if (!issubdtype(sc->dtype(), floating) || sc->dtype() == float64) {
      fail(
          "scales must be float32, float16 or bfloat16 but got ",
          sc->dtype(),
          ".");
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
      fail(
          "mismatching batch dimension: queries have ",
          B,
          " but ",
          name,
          " have shape ",
          a->shape(),
          ".");
    }
  }
  for (auto* a : {&key_scales, &values, &value_scales}) {
    if (a->shape(1) != n_kv_heads || a->shape(2) != kL) {
      fail(
          "keys, values and their scales must share (batch, kv_heads, "
          "length); got keys ",
          keys.shape(),
          ", key_scales ",
          key_scales.shape(),
          ", values ",
          values.shape(),
          ", value_scales ",
          value_scales.shape(),
          ".");
    }
  }
  if (key_scales.shape(3) != 1 || value_scales.shape(3) != 1) {
    fail("scales must have a last dimension of 1 (one scale per vector).");
  }
  if (n_kv_heads == 0 || n_q_heads % n_kv_heads != 0) {
    fail(
        "n_heads must be a multiple of n_kv_heads, found n_heads ",
        n_q_heads,
        " for n_kv_heads ",
        n_kv_heads,
        ".");
  }
  // An empty cache is allowed when the exact first token is all there is.
  if (qL == 0 || (kL == 0 && !first_key) || B == 0 || n_q_heads == 0) {
    fail(
        "empty inputs are not supported (queries ",
        queries.shape(),
        ", keys ",
        keys.shape(),
        ").");
  }
  turbo::check_dim(tag, dk);
  if (keys.shape(3) != turbo::packed_width(dk, kbits)) {
    fail(
        "keys have packed width ",
        keys.shape(3),
        " but mode '",
        quantization_mode_to_string(kmode),
        "' with head_dim ",
        dk,
        " needs ",
        turbo::packed_width(dk, kbits),
        ".");
  }
  int dv = turbo::dim_from_packed_width(values.shape(3), vbits);
  if (dv < 0) {
    fail(
        "values have packed width ",
        values.shape(3),
        " which matches no supported head_dim for mode '",
        quantization_mode_to_string(vmode),
        "'.");
  }

  // Exact cache transforms (docs/format.md, section 7): one vector per
  // (batch or 1, kv head). Values are not transformed: centering them was
  // measured to raise the error (docs/format.md).
  auto check_float = [&](const array& t, const char* name) {
    if (!issubdtype(t.dtype(), floating) || t.dtype() == float64) {
      fail(
          name,
          " must be float32, float16 or bfloat16 but got ",
          t.dtype(),
          ".");
    }
  };
  auto check_transform = [&](const std::optional<array>& t,
                             const char* name,
                             int dim) {
    if (!t) {
      return;
    }
    if (t->ndim() != 4 || (t->shape(0) != 1 && t->shape(0) != B) ||
        t->shape(1) != n_kv_heads || t->shape(2) != 1 || t->shape(3) != dim) {
      fail(
          name,
          " with shape ",
          t->shape(),
          " expected shape (",
          B,
          " or 1, ",
          n_kv_heads,
          ", 1, ",
          dim,
          ").");
    }
    check_float(*t, name);
  };
  check_transform(key_shift, "key_shift", dk);
  check_transform(key_channel_scales, "key_channel_scales", dk);
  // The exact first token (an attention sink in practice): its key and value
  // precede the cache (the kernels give it the sink's slot, value included).
  check_transform(first_key, "first_key", dk);
  check_transform(first_value, "first_value", dv);
  if (first_key.has_value() != first_value.has_value()) {
    fail("first_key and first_value must be given together.");
  }
  if (first_key && sinks) {
    fail(
        "first_key / first_value cannot be combined with sinks (the first "
        "token takes the sink's place in the kernels).");
  }
  // A key shift that moves with the position (docs/format.md, section 7):
  // frequencies (B or 1, N_kv, P) and amplitudes (B or 1, N_kv, 2P, D).
  if (key_shift_freqs.has_value() != key_shift_waves.has_value()) {
    fail("key_shift_freqs and key_shift_waves must be given together.");
  }
  if (key_shift_freqs) {
    const auto& f = *key_shift_freqs;
    const auto& w = *key_shift_waves;
    if (f.ndim() != 3 || (f.shape(0) != 1 && f.shape(0) != B) ||
        f.shape(1) != n_kv_heads || f.shape(2) < 1 ||
        f.shape(2) > turbo::kMaxKeyWaves) {
      fail(
          "key_shift_freqs with shape ",
          f.shape(),
          " expected shape (",
          B,
          " or 1, ",
          n_kv_heads,
          ", P) with 1 <= P <= ",
          turbo::kMaxKeyWaves,
          ".");
    }
    if (f.dtype() != uint32) {
      fail(
          "key_shift_freqs must be uint32 (turns of 2^-24 per key) but got ",
          f.dtype(),
          ".");
    }
    int P = f.shape(2);
    if (w.ndim() != 4 || (w.shape(0) != 1 && w.shape(0) != B) ||
        w.shape(1) != n_kv_heads || w.shape(2) != 2 * P || w.shape(3) != dk) {
      fail(
          "key_shift_waves with shape ",
          w.shape(),
          " expected shape (",
          B,
          " or 1, ",
          n_kv_heads,
          ", ",
          2 * P,
          ", ",
          dk,
          ") for ",
          P,
          " frequencies.");
    }
    check_float(w, "key_shift_waves");
  }

  if (mask_mode != "" && mask_mode != "causal" && mask_mode != "array") {
    fail(
        "Invalid mask_mode ",
        mask_mode,
        ". mask_mode must be 'causal', 'array' or ''.");
  }
  bool do_causal = mask_mode == "causal";
  if (do_causal && mask_arr) {
    fail(
        "Invalid mask_arr for mask_mode 'causal'. No array mask should be "
        "passed.");
  }
  bool has_arr_mask = mask_arr.has_value();
  bool has_sinks = sinks.has_value();
  if (has_arr_mask) {
    if (mask_arr->ndim() > 4) {
      fail(
          "the mask with shape ",
          mask_arr->shape(),
          " expected to have at most rank 4.");
    }
    Shape mask_shape{B, n_q_heads, qL, kL};
    bool broadcastable;
    try {
      broadcastable =
          broadcast_shapes(mask_arr->shape(), mask_shape) == mask_shape;
    } catch (const std::invalid_argument&) {
      broadcastable = false;
    }
    if (!broadcastable) {
      fail(
          "the mask with shape ",
          mask_arr->shape(),
          " cannot be broadcast to ",
          mask_shape,
          ".");
    }
    if (mask_arr->dtype() != bool_ &&
        (!issubdtype(mask_arr->dtype(), floating) ||
         promote_types(mask_arr->dtype(), queries.dtype()) !=
             queries.dtype())) {
      fail(
          "Mask type must be bool or promote to the queries type ",
          queries.dtype(),
          " but got ",
          mask_arr->dtype(),
          ".");
    }
  }
  if (has_sinks) {
    if (sinks->ndim() != 1 || sinks->shape(0) != n_q_heads) {
      fail(
          "Received invalid shape for sinks ",
          sinks->shape(),
          "; expected (",
          n_q_heads,
          ",).");
    }
    if (!issubdtype(sinks->dtype(), floating)) {
      fail("sinks must be floating point but got ", sinks->dtype(), ".");
    }
  }
  return {B, n_q_heads, n_kv_heads, qL, kL, dk, dv};
}

// Adds a float32 bias (B, Hq, qL, kL) to an optional mask (bool or additive).
void add_to_mask(std::optional<array>& mask, const array& bias, const Stream& s) {
  if (!mask) {
    mask = bias;
  } else if (mask->dtype() == bool_) {
    mask = where(
        *mask, bias, array(-std::numeric_limits<float>::max(), float32), s);
  } else {
    mask = add(*mask, bias, s);
  }
}

// The key bias of the exact transforms. Centered keys (key_shift) move every
// score of a query row by the same -scale * q . key_shift; the exact first
// token takes the sink's place with a sink logit of 0, every cached score
// moved by -scale * q . first_key. A common shift leaves the softmax
// unchanged except against the sink, so it is folded into the sink logits
// (one row per head: B == 1 and qL == 1) or into an additive mask. q and the
// transforms are in one domain. Only needed with sinks or a first key; with
// a first key and no sinks, sinks becomes the sink logits of 0.
void fold_key_bias(
    const array& q,
    const std::optional<array>& key_shift,
    const std::optional<array>& first_key,
    const float scale,
    std::optional<array>& mask,
    std::optional<array>& sinks,
    const Stream& s) {
  const int B = q.shape(0);
  const int n_q_heads = q.shape(1);
  const int qL = q.shape(2);
  const int gqa = n_q_heads / (key_shift ? *key_shift : *first_key).shape(1);
  std::optional<array> key_bias;
  if (key_shift) {
    key_bias = turbo::per_query_head(*key_shift, gqa, s);
  }
  if (first_key) {
    auto k0 = turbo::per_query_head(*first_key, gqa, s);
    key_bias = key_bias ? subtract(*key_bias, k0, s) : negative(k0, s);
    if (!sinks) {
      sinks = zeros({n_q_heads}, float32, s);
    }
  }
  auto bias = multiply(
      array(scale, float32), sum(multiply(q, *key_bias, s), -1, true, s), s);
  if (B == 1 && qL == 1) {
    // One row per head (single-sequence decode): moving the sink logit by
    // -bias is the same and reads no mask.
    sinks =
        subtract(astype(*sinks, float32, s), reshape(bias, {n_q_heads}, s), s);
  } else {
    add_to_mask(mask, bias, s);
  }
}

// What the primitive's inputs hold: (q, k, k_scales, v, v_scales), then, in
// this order, [mask] [sinks] [sink_values] [key_shift] [first_key]
// [key_shift_waves key_shift_freqs]; without fused_rotation (the queries come
// rotated) the moving key shift comes as its per-row coefficients
// (turbo::key_wave_coefficients) in place of key_shift_waves.
struct PrimitiveInputs {
  float scale;
  bool do_causal;
  bool has_mask;
  bool has_sinks;
  bool has_sink_values;
  bool has_key_shift;
  bool has_first_key;
  bool has_key_waves;
  QuantizationMode kmode;
  QuantizationMode vmode;
  bool fused_rotation;
  Dtype out_type;
  int key_length;
  Stream stream;
};

// A KV cache passes its stored rows as the leading-row slice buf[:, :, :n]
// of its buffers. The primitive reads such a buffer in place (its first
// key_length rows), so the slice is no node of the step's graph: the
// buffer, or a when it is not such a slice.
array cache_buffer(const array& a) {
  if (!a.has_primitive()) {
    return a;
  }
  auto* s = dynamic_cast<const Slice*>(&a.primitive());
  if (!s) {
    return a;
  }
  const array& buf = a.inputs()[0];
  const auto& [start, end, strides] = s->state();
  if (buf.ndim() != 4 || buf.dtype() != a.dtype()) {
    return a;
  }
  for (int i = 0; i < 4; ++i) {
    if (start[i] != 0 || strides[i] != 1 ||
        (i != 2 && buf.shape(i) != a.shape(i))) {
      return a;
    }
  }
  return buf;
}

// Op-composed attention on the primitive's inputs: the cache reconstructed in
// the rotated domain and MLX's fused attention on it. The primitive's
// fallback (backends without kernels, transformations), also called directly
// where the primitive is not used.
std::vector<array> composed_attention(
    const PrimitiveInputs& a,
    const std::vector<array>& primitive_inputs) {
  const auto& stream = a.stream;
  // The codes and scales may be a cache's buffers: their first key_length
  // rows.
  std::vector<array> inputs = primitive_inputs;
  for (int i = 1; i <= 4; ++i) {
    if (inputs[i].shape(2) != a.key_length) {
      Shape stop = inputs[i].shape();
      stop[2] = a.key_length;
      inputs[i] = slice(inputs[i], Shape(4, 0), std::move(stop), stream);
    }
  }
  auto [mask, sinks, sink_value, key_shift, first_key, waves, freqs] =
      turbo::attention_extras(
          inputs,
          a.has_sinks,
          a.has_sink_values,
          a.has_key_shift,
          a.has_first_key,
          a.has_key_waves);
  // A raw key bias comes with fused_rotation: the queries are as given.
  if (key_shift || first_key) {
    fold_key_bias(
        inputs[0], key_shift, first_key, a.scale, mask, sinks, stream);
  }
  if (waves) {
    auto coef = a.fused_rotation
        ? turbo::key_wave_coefficients(inputs[0], *waves, a.scale, stream)
        : *waves;
    add_to_mask(
        mask,
        turbo::key_wave_bias(coef, *freqs, inputs[1].shape(2), stream),
        stream);
  }
  auto q =
      a.fused_rotation ? turbo::rotate(inputs[0], false, stream) : inputs[0];
  auto k = turbo::dequantize_rotated(inputs[1], inputs[2], a.kmode, stream);
  auto v = turbo::dequantize_rotated(inputs[3], inputs[4], a.vmode, stream);
  // MLX's SDPA takes either mask: fold the causal one into the array (also
  // when the sink's key below needs an array mask).
  if (a.do_causal && (mask || sink_value)) {
    int qL = q.shape(2);
    int kL = k.shape(2);
    auto visible = greater_equal(
        reshape(arange(kL - qL, kL, int32, stream), {qL, 1}, stream),
        arange(kL, int32, stream),
        stream);
    if (!mask) {
      mask = visible;
    } else {
      mask = mask->dtype() == bool_
          ? logical_and(*mask, visible, stream)
          : where(
                visible,
                *mask,
                array(-std::numeric_limits<float>::max(), float32),
                stream);
    }
  }
  if (sink_value) {
    // A sink with a value is a key of score sinks[h] and that value: a zero
    // key (score 0) before the cache whose mask column is the sink logit;
    // every cached key keeps its mask (causal folded in first).
    auto sv = a.fused_rotation ? turbo::rotate(*sink_value, false, stream)
                               : *sink_value;
    std::tie(k, v, mask) =
        turbo::sink_as_key(q, k, v, mask, *sinks, sv, stream);
    sinks = std::nullopt;
  }
  auto mask_mode = a.do_causal && !mask ? "causal" : "";
  auto out = turbo::mlx_attention(
      &scaled_dot_product_attention,
      q,
      k,
      v,
      a.scale,
      mask_mode,
      mask,
      sinks,
      stream);
  if (a.fused_rotation) {
    out = astype(turbo::rotate(out, true, stream), a.out_type, stream);
  }
  return {out};
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
    const std::optional<array>& key_shift /* = {} */,
    const std::optional<array>& key_channel_scales /* = {} */,
    const std::optional<array>& first_key /* = {} */,
    const std::optional<array>& first_value /* = {} */,
    const std::optional<array>& key_shift_freqs /* = {} */,
    const std::optional<array>& key_shift_waves /* = {} */,
    StreamOrDevice s /* = {} */) {
  constexpr std::string_view tag = "quantized_scaled_dot_product_attention";
  auto kmode = turbo::parse_mode(tag, key_mode);
  auto vmode =
      turbo::parse_mode(tag, value_mode.empty() ? key_mode : value_mode);
  const auto [B, n_q_heads, n_kv_heads, qL, kL, dk, dv] = validate_inputs(
      queries,
      keys,
      key_scales,
      values,
      value_scales,
      scale,
      mask_mode,
      mask_arr,
      sinks,
      kmode,
      vmode,
      key_shift,
      key_channel_scales,
      first_key,
      first_value,
      key_shift_freqs,
      key_shift_waves);
  const bool do_causal = mask_mode == "causal";
  const bool has_sinks = sinks.has_value();
  const int gqa = n_q_heads / n_kv_heads;
  auto stream = to_stream(s);

  // Only the exact first token: its softmax weight is 1.
  if (kL == 0) {
    return astype(
        broadcast_to(
            turbo::per_query_head(*first_value, gqa, stream),
            {B, n_q_heads, qL, dv},
            stream),
        queries.dtype(),
        stream);
  }
  // Causal rows before the first token (qL > kL + 1) see no key: MLX's
  // attention gives every key, the first token's included, the same masked
  // score, so they average all values. The kernels keep the first token in
  // the sink's slot, visible to every row, so such calls take the
  // dequantized route, which has it as key 0 under the causal mask.
  const bool rows_before_first = first_key && do_causal && qL > kL + 1;
  if (qL > turbo::kFusedMaxQueries || rows_before_first) {
    return turbo::dequantized_attention(
        queries,
        keys,
        key_scales,
        values,
        value_scales,
        scale,
        mask_mode,
        std::move(mask_arr),
        sinks,
        kmode,
        vmode,
        key_shift,
        key_channel_scales,
        first_key,
        first_value,
        key_shift_freqs,
        key_shift_waves,
        stream);
  }

  // Few queries (decode): the kernels read the packed cache. Both scales
  // share one type in them.
  auto scale_type =
      key_scales.dtype() == value_scales.dtype() ? key_scales.dtype() : float32;
  // The primitive rotates the queries and the output itself on the CPU and
  // where the GPU backend has kernels for it (CUDA and Metal: a preparation
  // launch and the output rotation inside the node); elsewhere the op
  // composes the rotations around it.
  const bool use_primitive = stream.device == Device::cpu ||
      !QuantizedScaledDotProductAttention::use_fallback(
                                 queries, dk, dv, stream);
  const bool fused_rotation = use_primitive &&
      (stream.device == Device::cpu || turbo::gpu_attention_rotates());
  // Balanced keys k / s are scored with the queries q * s (float32).
  // The primitive reads the cache's buffers in place (cache_buffer); scales
  // that need a cast are cast from the slice (only the stored rows).
  auto cached = [&](const array& a) {
    return use_primitive ? cache_buffer(a) : a;
  };
  auto cached_scales = [&](const array& a) {
    return a.dtype() == scale_type ? cached(a) : astype(a, scale_type, stream);
  };
  array q_in = key_channel_scales
      ? multiply(
            queries,
            turbo::per_query_head(*key_channel_scales, gqa, stream),
            stream)
      : queries;
  const Dtype out_type = queries.dtype();
  std::vector<array> inputs = {
      fused_rotation ? q_in : turbo::rotate(q_in, false, stream),
      cached(keys),
      cached_scales(key_scales),
      cached(values),
      cached_scales(value_scales)};
  std::optional<array> mask = mask_arr;
  if (mask && mask->dtype() != bool_) {
    mask = astype(*mask, float32, stream);
  }
  std::optional<array> sink_logits;
  if (has_sinks) {
    sink_logits = astype(*sinks, float32, stream);
  }
  // The key bias (fold_key_bias) matters with sinks or a first key. With
  // fused_rotation the kernels compute it from the queries as given, so
  // key_shift and first_key are inputs of the primitive (no ops per call);
  // otherwise, and for balanced keys (the kernels see q * s), the op folds
  // it here.
  const bool needs_bias = first_key || (key_shift && has_sinks);
  const bool kernel_bias = needs_bias && fused_rotation && !key_channel_scales;
  if (needs_bias && !kernel_bias) {
    fold_key_bias(
        queries, key_shift, first_key, scale, mask, sink_logits, stream);
  }
  // The position-dependent key shift: a bias per query row and cached key,
  // computed by the kernels (from the queries as given with fused_rotation,
  // else from per-row coefficients made here), folded into the mask here for
  // balanced keys (the kernels see q * s).
  const bool kernel_waves = key_shift_freqs && !key_channel_scales;
  if (key_shift_freqs && !kernel_waves) {
    add_to_mask(
        mask,
        turbo::key_wave_bias(
            turbo::key_wave_coefficients(
                queries, *key_shift_waves, scale, stream),
            *key_shift_freqs,
            kL,
            stream),
        stream);
  }
  // The first token's value is the sink's value, in the domain of the
  // primitive's queries: as given with fused_rotation (in the dtype of the
  // primitive's queries, q * s with balanced keys, as the GPU kernels read
  // both), else rotated like the cached values.
  std::optional<array> sink_values;
  if (first_key) {
    sink_values = fused_rotation
        ? astype(*first_value, q_in.dtype(), stream)
        : broadcast_to(
              turbo::rotate(*first_value, false, stream),
              {B, n_kv_heads, 1, dv},
              stream);
  }
  PrimitiveInputs layout{
      scale,
      do_causal,
      mask.has_value(),
      sink_logits.has_value(),
      sink_values.has_value(),
      kernel_bias && key_shift.has_value(),
      kernel_bias && first_key.has_value(),
      kernel_waves,
      kmode,
      vmode,
      fused_rotation,
      out_type,
      kL,
      stream};
  if (mask) {
    inputs.push_back(broadcast_to(*mask, Shape{B, n_q_heads, qL, kL}, stream));
  }
  if (sink_logits) {
    inputs.push_back(*sink_logits);
  }
  if (sink_values) {
    inputs.push_back(*sink_values);
  }
  if (layout.has_key_shift) {
    inputs.push_back(astype(*key_shift, queries.dtype(), stream));
  }
  if (layout.has_first_key) {
    inputs.push_back(astype(*first_key, queries.dtype(), stream));
  }
  if (layout.has_key_waves) {
    inputs.push_back(
        fused_rotation
            ? astype(*key_shift_waves, float32, stream)
            : turbo::key_wave_coefficients(
                  queries, *key_shift_waves, scale, stream));
    inputs.push_back(*key_shift_freqs);
  }

  auto fallback = [layout](const std::vector<array>& inputs) {
    return composed_attention(layout, inputs);
  };
  array out = use_primitive
      ? array(
            Shape{B, n_q_heads, qL, dv},
            fused_rotation ? out_type : float32,
            std::make_shared<QuantizedScaledDotProductAttention>(
                stream,
                fallback,
                scale,
                do_causal,
                layout.has_sinks,
                layout.has_sink_values,
                layout.has_key_shift,
                layout.has_first_key,
                layout.has_key_waves,
                kmode,
                vmode,
                queries.dtype() != float32,
                fused_rotation,
                kL),
            inputs)
      : fallback(inputs)[0];
  if (!fused_rotation) {
    out = turbo::rotate(out, true, stream);
  }
  return astype(out, queries.dtype(), stream);
}

bool QuantizedScaledDotProductAttention::is_equivalent(
    const Primitive& other) const {
  const auto& o = static_cast<const QuantizedScaledDotProductAttention&>(other);
  return scale_ == o.scale_ && do_causal_ == o.do_causal_ &&
      has_sinks_ == o.has_sinks_ && has_sink_values_ == o.has_sink_values_ &&
      has_key_shift_ == o.has_key_shift_ &&
      has_first_key_ == o.has_first_key_ &&
      has_key_waves_ == o.has_key_waves_ && key_mode_ == o.key_mode_ &&
      value_mode_ == o.value_mode_ && low_precision_ == o.low_precision_ &&
      fused_rotation_ == o.fused_rotation_ && key_length_ == o.key_length_;
}

std::vector<Shape> QuantizedScaledDotProductAttention::output_shapes(
    const std::vector<array>& inputs) {
  auto shape = inputs[0].shape();
  shape.back() = turbo::dim_from_packed_width(
      inputs[3].shape(-1), turbo::bits(value_mode_));
  return {shape};
}

} // namespace fast

} // namespace mlx::core
