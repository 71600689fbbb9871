// Copyright © 2026 TurboQuant-MLX authors.
//
// Metal dispatch of the attention on the packed cache
// (fast::QuantizedScaledDotProductAttention): the 1-pass / 2-pass vector
// kernels for decode (and the tiled prefill kernel), with fused_rotation the
// preparation launch before them and the output rotation after them. Buffer
// indices, function constants, kernel names and launch geometry come from
// kernels/turbo_bindings.h, which the Linux harness in tests/metal uses as
// well.

#include <optional>
#include <stdexcept>

#include "mlx/backend/metal/device.h"
#include "mlx/backend/metal/kernels/turbo_bindings.h"
#include "mlx/backend/metal/turboquant_dispatch.h"
#include "mlx/backend/metal/utils.h"
#include "mlx/fast_primitives.h"
#include "mlx/turboquant.h"

namespace mlx::core {

namespace tb = turbo_bindings;
using namespace turbo::metal_dispatch;

namespace turbo {

// The primitive rotates the queries and the output itself
// (turbo_attention_prep and turbo_rotate_out around the decode kernels).
bool gpu_attention_rotates() {
  return true;
}

} // namespace turbo

namespace fast {

bool QuantizedScaledDotProductAttention::use_fallback(
    const array& q,
    int key_dim,
    int value_dim,
    Stream /* s */) {
  // Vector kernels for up to 8 queries (as MLX's sdpa_vector), the tiled
  // prefill kernel above that.
  return !(tb::attn_dims_supported(key_dim, value_dim) && q.ndim() == 4);
}

namespace {

// fused_rotation: one launch of turbo_attention_prep makes the decode
// kernels' inputs from the queries as given: the rotated float32 queries,
// the rotated sink values (B, Hkv, 1, Dv), with the key bias of the exact
// transforms the per-row sink logits (B, Hq, qL), and with the moving key
// shift its per-row coefficients (B, Hq, qL, 2P). `extras` is updated to
// hold them (the sinks become the per-row logits); returns the queries.
const array& prepare_fused(
    const array& q_in,
    turbo::AttentionExtras& extras,
    int Hkv,
    int Dv,
    float scale,
    Copies& copies,
    metal::Device& d,
    metal::CommandEncoder& enc) {
  const Dtype t = q_in.dtype();
  const int B = q_in.shape(0), Hq = q_in.shape(1), qL = q_in.shape(2);
  const int Dk = q_in.shape(3);
  // (B or 1, Hkv, rows, D) in `dtype`: checked before anything is encoded.
  auto per_kv_head = [&](const std::optional<array>& a, Dtype dtype, int D) {
    return !a ||
        (a->dtype() == dtype && a->ndim() == 4 &&
         (a->shape(0) == B || a->shape(0) == 1) && a->shape(1) == Hkv &&
         a->shape(3) == D);
  };
  const int P = extras.key_waves ? extras.key_waves->shape(2) / 2 : 0;
  if ((t != float32 && t != float16 && t != bfloat16) ||
      !per_kv_head(extras.sink_values, t, Dv) ||
      !per_kv_head(extras.key_shift, t, Dk) ||
      !per_kv_head(extras.first_key, t, Dk) ||
      !per_kv_head(extras.key_waves, float32, Dk) ||
      (extras.key_waves && extras.key_waves->shape(2) != 2 * P) ||
      (extras.sinks &&
       (extras.sinks->dtype() != float32 || extras.sinks->size() != Hq))) {
    throw std::invalid_argument(
        "[quantized_scaled_dot_product_attention] unsupported inputs of the "
        "rotation (fused_rotation).");
  }
  auto batch = [](const std::optional<array>& a) {
    return a && a->shape(0) > 1 ? 1 : 0;
  };
  const array& q = copies.row_contiguous(q_in);
  bool has_sinks = extras.sinks.has_value();
  bool has_sink_values = extras.sink_values.has_value();
  bool has_key_shift = extras.key_shift.has_value();
  bool has_first_key = extras.first_key.has_value();
  bool row_sinks = has_key_shift || has_first_key;
  bool has_waves = extras.key_waves.has_value();

  TurboPrepParams p{};
  p.Hq = Hq;
  p.qL = qL;
  p.Hkv = Hkv;
  p.gqa_factor = Hq / Hkv;
  p.scale = scale;
  p.waves = P;
  p.n_q = int64_t(B) * Hq * qL;
  p.n_sv = has_sink_values ? int64_t(B) * Hkv : 0;
  p.sv_b = batch(extras.sink_values);
  p.key_shift_b = batch(extras.key_shift);
  p.first_key_b = batch(extras.first_key);
  p.waves_b = batch(extras.key_waves);

  array& q_rot = copies.temporary(q.shape());
  auto kname = tb::prep_kernel_name(type_to_name(t), Dk, Dv);
  auto hash_name = tb::prep_hash_name(
      kname,
      has_sinks,
      has_sink_values,
      has_key_shift,
      has_first_key,
      has_waves);
  metal::MTLFCList func_consts = {
      {&has_sinks, MTL::DataType::DataTypeBool, TURBO_FC_HAS_SINKS},
      {&has_sink_values, MTL::DataType::DataTypeBool, TURBO_FC_SINK_VALUES},
      {&has_waves, MTL::DataType::DataTypeBool, TURBO_FC_KEY_WAVES},
      {&row_sinks, MTL::DataType::DataTypeBool, TURBO_FC_ROW_SINKS},
      {&has_key_shift, MTL::DataType::DataTypeBool, TURBO_FC_KEY_SHIFT},
      {&has_first_key, MTL::DataType::DataTypeBool, TURBO_FC_FIRST_KEY},
  };
  auto kernel = d.get_kernel(kname, hash_name, func_consts);
  enc.set_compute_pipeline_state(kernel);
  enc.set_input_array(q, TURBO_PREP_BUF_Q);
  enc.set_output_array(q_rot, TURBO_PREP_BUF_Q_ROT);
  enc.set_bytes(p, TURBO_PREP_BUF_PARAMS);
  if (has_sinks) {
    enc.set_input_array(
        copies.row_contiguous(*extras.sinks), TURBO_PREP_BUF_SINKS);
  }
  if (has_sink_values) {
    const array& sv = copies.row_contiguous(*extras.sink_values);
    array& sv_rot = copies.temporary({B, Hkv, 1, Dv});
    enc.set_input_array(sv, TURBO_PREP_BUF_SV);
    enc.set_output_array(sv_rot, TURBO_PREP_BUF_SV_ROT);
    extras.sink_values = sv_rot;
  }
  if (has_key_shift) {
    enc.set_input_array(
        copies.row_contiguous(*extras.key_shift), TURBO_PREP_BUF_KEY_SHIFT);
  }
  if (has_first_key) {
    enc.set_input_array(
        copies.row_contiguous(*extras.first_key), TURBO_PREP_BUF_FIRST_KEY);
  }
  if (row_sinks) {
    array& rs = copies.temporary({B, Hq, qL});
    enc.set_output_array(rs, TURBO_PREP_BUF_ROW_SINKS);
    extras.sinks = rs;
  }
  if (has_waves) {
    array& coef = copies.temporary({B, Hq, qL, 2 * P});
    enc.set_input_array(
        copies.row_contiguous(*extras.key_waves), TURBO_PREP_BUF_WAVES);
    enc.set_output_array(coef, TURBO_PREP_BUF_WAVE_COEF);
    extras.key_waves = coef;
  }
  auto dims = tb::row_dims(p.n_q + p.n_sv);
  enc.dispatch_threadgroups(to_size(dims.grid), to_size(dims.group));
  return q_rot;
}

// fused_rotation: out = R^T rot (rows of Dv float32), rounded to out's type.
void rotate_out(
    const array& rot,
    array& out,
    metal::Device& d,
    metal::CommandEncoder& enc) {
  const int Dv = out.shape(-1);
  int64_t nrows = int64_t(out.size() / Dv);
  auto kernel =
      d.get_kernel(tb::rotate_out_kernel_name(type_to_name(out.dtype()), Dv));
  enc.set_compute_pipeline_state(kernel);
  enc.set_input_array(rot, TURBO_ROT_BUF_IN);
  enc.set_output_array(out, TURBO_ROT_BUF_OUT);
  enc.set_bytes(nrows, TURBO_ROT_BUF_NROWS);
  auto dims = tb::row_dims(nrows);
  enc.dispatch_threadgroups(to_size(dims.grid), to_size(dims.group));
}

} // namespace

void QuantizedScaledDotProductAttention::eval_gpu(
    const std::vector<array>& inputs,
    std::vector<array>& outputs) {
  auto& s = stream();
  auto& d = metal::device(s.device);
  auto& enc = metal::get_command_encoder(s);
  Copies copies{s, {}};

  // With fused_rotation the queries come as given, with key_shift /
  // first_key and the moving key shift's waves: turbo_attention_prep makes
  // the kernels' inputs from them and turbo_rotate_out rotates the output
  // back. Without it the op has rotated the queries, folded key_shift /
  // first_key into the sinks or the mask and made the moving shift's per-row
  // coefficients; the output is the rotated float32 one.
  auto extras = turbo::attention_extras(
      inputs,
      has_sinks_,
      has_sink_values_,
      has_key_shift_,
      has_first_key_,
      has_key_waves_);
  auto& out = outputs[0];
  const int kb = mode_bits(key_mode_), vb = mode_bits(value_mode_);
  const int B = inputs[0].shape(0), Hq = inputs[0].shape(1);
  const int qL = inputs[0].shape(2), Dk = inputs[0].shape(3);
  const int Hkv = inputs[1].shape(1), kL = key_length_;
  const int Dv = out.shape(3);
  const bool prefill = tb::attn_use_prefill(qL);
  if (!tb::attn_dims_supported(Dk, Dv) ||
      inputs[1].shape(3) != tb::words(kb, Dk) ||
      inputs[3].shape(3) != tb::words(vb, Dv) || Hq % Hkv != 0) {
    throw std::invalid_argument(
        "[quantized_scaled_dot_product_attention] unsupported shapes.");
  }
  if (prefill && (fused_rotation_ || has_sink_values_ || has_key_waves_)) {
    throw std::invalid_argument(
        "[quantized_scaled_dot_product_attention] fused_rotation, sink values "
        "and the moving key shift are only supported by the decode kernels.");
  }
  if (!fused_rotation_ && has_sink_values_ &&
      extras.sink_values->shape(0) != B) {
    throw std::invalid_argument(
        "[quantized_scaled_dot_product_attention] sink values must have "
        "the queries' batch size on this backend.");
  }
  out.set_data(allocator::malloc(out.nbytes()));
  if (out.size() == 0) {
    return;
  }

  const array& q = fused_rotation_
      ? prepare_fused(inputs[0], extras, Hkv, Dv, scale_, copies, d, enc)
      : copies.row_contiguous(copies.as_type(inputs[0], float32));
  // (a cache's buffers: the first key_length_ rows, in place)
  const array& k = copies.last_contiguous(
      copies.keep(turbo::leading_rows(inputs[1], key_length_)));
  const array& v = copies.last_contiguous(
      copies.keep(turbo::leading_rows(inputs[3], key_length_)));
  const array& ks = copies.keep(turbo::leading_rows(inputs[2], key_length_));
  const array& vs = copies.as_type(
      copies.keep(turbo::leading_rows(inputs[4], key_length_)), ks.dtype());
  // fused_rotation: the kernels write the rotated float32 output to a
  // temporary, rotated back into out.
  array& kernel_out = fused_rotation_ ? copies.temporary(out.shape()) : out;

  TurboAttnParams p{};
  p.B = B;
  p.Hq = Hq;
  p.Hkv = Hkv;
  p.qL = qL;
  p.kL = kL;
  p.gqa_factor = Hq / Hkv;
  p.scale = scale_;
  bhl_strides(k, p.k_strides);
  bhl_strides(ks, p.ks_strides);
  bhl_strides(v, p.v_strides);
  bhl_strides(vs, p.vs_strides);

  std::optional<array> mask;
  bool bool_mask = false, float_mask = false;
  if (extras.mask) {
    const array& m0 = *extras.mask;
    mask = m0.dtype() == bool_ ? m0 : copies.as_type(m0, float32);
    bool_mask = mask->dtype() == bool_;
    float_mask = !bool_mask;
    int off = 4 - mask->ndim();
    for (int i = 0; i < 4; ++i) {
      int ax = i - off;
      p.m_strides[i] =
          (ax >= 0 && mask->shape(ax) > 1) ? int64_t(mask->strides(ax)) : 0;
    }
  }
  bool has_mask = mask.has_value();
  bool do_causal = do_causal_;
  // Logits per head (Hq), or per query row (B, Hq, qL) from the preparation.
  bool has_sinks = extras.sinks.has_value();
  bool row_sinks = fused_rotation_ && (has_key_shift_ || has_first_key_);
  const array* sinks = has_sinks
      ? &copies.row_contiguous(copies.as_type(*extras.sinks, float32))
      : nullptr;
  // The sinks' values, rotated, (B, Hkv, 1, Dv): dense float32.
  bool has_sink_values = has_sink_values_;
  const array* sink_values = has_sink_values
      ? &copies.row_contiguous(copies.as_type(*extras.sink_values, float32))
      : nullptr;
  // The moving key shift: coefficients (B, Hq, qL, 2P) float32 and the
  // frequencies (B or 1, Hkv, P), dense.
  bool has_key_waves = has_key_waves_;
  const array* wave_coef = nullptr;
  const array* wave_freqs = nullptr;
  if (has_key_waves) {
    wave_coef =
        &copies.row_contiguous(copies.as_type(*extras.key_waves, float32));
    wave_freqs = &copies.row_contiguous(*extras.key_freqs);
    p.waves = wave_freqs->shape(2);
    p.wf_b_stride = wave_freqs->shape(0) == 1 ? 0 : int64_t(Hkv) * p.waves;
  }

  metal::MTLFCList func_consts = {
      {&has_mask, MTL::DataType::DataTypeBool, TURBO_FC_HAS_MASK},
      {&do_causal, MTL::DataType::DataTypeBool, TURBO_FC_DO_CAUSAL},
      {&bool_mask, MTL::DataType::DataTypeBool, TURBO_FC_BOOL_MASK},
      {&float_mask, MTL::DataType::DataTypeBool, TURBO_FC_FLOAT_MASK},
      {&has_sinks, MTL::DataType::DataTypeBool, TURBO_FC_HAS_SINKS},
      {&has_sink_values, MTL::DataType::DataTypeBool, TURBO_FC_SINK_VALUES},
      {&has_key_waves, MTL::DataType::DataTypeBool, TURBO_FC_KEY_WAVES},
      {&row_sinks, MTL::DataType::DataTypeBool, TURBO_FC_ROW_SINKS},
  };
  std::string fc_suffix;
  fc_suffix += has_mask ? (bool_mask ? "_boolmask" : "_floatmask") : "_nomask";
  fc_suffix += do_causal ? "_c" : "_nc";
  fc_suffix += has_sinks ? (row_sinks ? "_rowsinks" : "_sinks") : "_nosinks";
  fc_suffix += has_sink_values ? "_sv" : "";
  fc_suffix += has_key_waves ? "_waves" : "";

  const std::string stype = type_to_name(ks.dtype());
  char devc = d.get_architecture().back();
  const bool two_pass = !prefill && tb::attn_use_2pass(kL, Hq, Hkv, qL, devc);

  auto bind_common = [&]() {
    enc.set_input_array(q, TURBO_ATTN_BUF_Q);
    enc.set_input_array(k, TURBO_ATTN_BUF_K);
    enc.set_input_array(ks, TURBO_ATTN_BUF_KS);
    enc.set_input_array(v, TURBO_ATTN_BUF_V);
    enc.set_input_array(vs, TURBO_ATTN_BUF_VS);
    enc.set_bytes(p, TURBO_ATTN_BUF_PARAMS);
    if (bool_mask) {
      enc.set_input_array(*mask, TURBO_ATTN_BUF_BMASK);
    }
    if (float_mask) {
      enc.set_input_array(*mask, TURBO_ATTN_BUF_FMASK);
    }
    if (has_sinks) {
      enc.set_input_array(*sinks, TURBO_ATTN_BUF_SINKS);
    }
    if (has_sink_values) {
      enc.set_input_array(*sink_values, TURBO_ATTN_BUF_SINK_VALUES);
    }
    if (has_key_waves) {
      enc.set_input_array(*wave_coef, TURBO_ATTN_BUF_WAVE_COEF);
      enc.set_input_array(*wave_freqs, TURBO_ATTN_BUF_WAVE_FREQS);
    }
  };

  if (!two_pass) {
    auto kname = tb::attn_kernel_name(prefill ? 2 : 0, kb, vb, stype, Dk, Dv);
    auto hash_name = kname + fc_suffix;
    auto kernel = d.get_kernel(kname, hash_name, func_consts);
    auto dims = prefill ? tb::attn_prefill_dims(B, Hq, qL)
                        : tb::attn_1pass_dims(B, Hq, qL);
    check_kernel_threadgroup_size(kernel, to_size(dims.group), hash_name);
    enc.set_compute_pipeline_state(kernel);
    bind_common();
    enc.set_output_array(kernel_out, TURBO_ATTN_BUF_OUT);
    enc.dispatch_threadgroups(to_size(dims.grid), to_size(dims.group));
  } else {
    int blocks = tb::attn_2pass_blocks(kL, p.gqa_factor * qL, devc);
    p.blocks = blocks;
    Shape ishape = {B, Hq, qL, blocks, Dv};
    array partials(ishape, float32, nullptr, {});
    ishape.pop_back();
    array sums(ishape, float32, nullptr, {});
    array maxs(ishape, float32, nullptr, {});
    partials.set_data(allocator::malloc(partials.nbytes()));
    sums.set_data(allocator::malloc(sums.nbytes()));
    maxs.set_data(allocator::malloc(maxs.nbytes()));
    enc.add_temporary(partials);
    enc.add_temporary(sums);
    enc.add_temporary(maxs);

    auto kname = tb::attn_kernel_name(1, kb, vb, stype, Dk, Dv);
    auto hash_name = kname + fc_suffix;
    auto kernel = d.get_kernel(kname, hash_name, func_consts);
    auto dims = tb::attn_2pass_1_dims(B, Hkv, p.gqa_factor, qL, blocks);
    check_kernel_threadgroup_size(kernel, to_size(dims.group), hash_name);
    enc.set_compute_pipeline_state(kernel);
    bind_common();
    enc.set_output_array(partials, TURBO_ATTN_BUF_OUT);
    enc.set_output_array(sums, TURBO_ATTN_BUF_SUMS);
    enc.set_output_array(maxs, TURBO_ATTN_BUF_MAXS);
    enc.dispatch_threadgroups(to_size(dims.grid), to_size(dims.group));

    auto aname = tb::agg_kernel_name(Dv);
    auto agg = d.get_kernel(aname);
    auto adims = tb::attn_2pass_2_dims(B, Hq, qL);
    check_kernel_threadgroup_size(agg, to_size(adims.group), aname);
    enc.set_compute_pipeline_state(agg);
    enc.set_input_array(partials, TURBO_AGG_BUF_PARTIALS);
    enc.set_input_array(sums, TURBO_AGG_BUF_SUMS);
    enc.set_input_array(maxs, TURBO_AGG_BUF_MAXS);
    enc.set_output_array(kernel_out, TURBO_AGG_BUF_OUT);
    enc.set_bytes(blocks, TURBO_AGG_BUF_BLOCKS);
    enc.dispatch_threadgroups(to_size(adims.grid), to_size(adims.group));
  }
  if (fused_rotation_) {
    rotate_out(kernel_out, out, d, enc);
  }
  copies.finish(enc);
}

} // namespace fast

} // namespace mlx::core
