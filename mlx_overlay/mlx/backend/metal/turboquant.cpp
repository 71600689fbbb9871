// Copyright © 2026 TurboQuant-MLX authors.
//
// Metal dispatch of the TurboQuant ops: attention on the packed cache
// (fast::QuantizedScaledDotProductAttention), the turbo modes of
// fast::Quantize, the cache update (turbo::quantize_update_gpu, called by
// fast::QuantizedCacheUpdate::eval_gpu in turboquant_cache.cpp) and the cache
// dequantize of the attention of many queries (fast::QuantizedKVDequantize,
// turbo::dequantize_kv_gpu). Buffer
// indices, function constants, kernel names and launch geometry come from
// kernels/turbo_bindings.h, which the Linux harness in tests/metal uses as
// well.

#include <list>
#include <optional>
#include <stdexcept>

#include "mlx/backend/gpu/copy.h"
#include "mlx/backend/metal/device.h"
#include "mlx/backend/metal/kernels/turbo_bindings.h"
#include "mlx/backend/metal/turboquant.h"
#include "mlx/backend/metal/utils.h"
#include "mlx/fast_primitives.h"
#include "mlx/turboquant.h"

namespace mlx::core {

namespace tb = turbo_bindings;

namespace {

int mode_bits(QuantizationMode mode) {
  switch (mode) {
    case QuantizationMode::Turbo3:
      return 3;
    case QuantizationMode::Turbo4:
      return 4;
    default:
      throw std::invalid_argument("[turboquant] expected a turbo mode.");
  }
}

// Keeps copies alive until the command buffer completes (a list: references
// handed out stay valid while more copies are added).
struct Copies {
  const Stream& s;
  std::list<array> arrays;
  const array& keep(array a) {
    arrays.push_back(std::move(a));
    return arrays.back();
  }
  // A float32 array allocated for a kernel to write.
  array& temporary(Shape shape) {
    arrays.emplace_back(
        std::move(shape), float32, nullptr, std::vector<array>{});
    arrays.back().set_data(allocator::malloc(arrays.back().nbytes()));
    return arrays.back();
  }
  const array& row_contiguous(const array& a) {
    return a.flags().row_contiguous ? a : keep(contiguous_copy_gpu(a, s));
  }
  const array& last_contiguous(const array& a) {
    return a.strides(-1) == 1 ? a : keep(contiguous_copy_gpu(a, s));
  }
  const array& as_type(const array& a, Dtype t) {
    if (a.dtype() == t) {
      return a;
    }
    array out(a.shape(), t, nullptr, {});
    copy_gpu(
        a,
        out,
        a.flags().row_contiguous ? CopyType::Vector : CopyType::General,
        s);
    return keep(std::move(out));
  }
  void finish(metal::CommandEncoder& enc) {
    for (auto& a : arrays) {
      enc.add_temporary(a);
    }
  }
};

// Strides of (B, H, L, ...) in elements, 0 for broadcast (size-1) axes.
void bhl_strides(const array& a, int64_t* out) {
  for (int i = 0; i < 3; ++i) {
    out[i] = a.shape(i) > 1 ? int64_t(a.strides(i)) : 0;
  }
}

MTL::Size to_size(const unsigned* d) {
  return MTL::Size(d[0], d[1], d[2]);
}

} // namespace

namespace turbo {

bool gpu_quantize_supported() {
  return true;
}

// The primitive rotates the queries and the output itself
// (turbo_attention_prep and turbo_rotate_out around the decode kernels).
bool gpu_attention_rotates() {
  return true;
}

void quantize_gpu(
    const std::vector<array>& inputs,
    std::vector<array>& outputs,
    QuantizationMode mode,
    bool dequantize,
    const Stream& s) {
  auto& d = metal::device(s.device);
  auto& enc = metal::get_command_encoder(s);
  Copies copies{s, {}};
  const int bits = mode_bits(mode);
  std::string kname;
  int64_t nvec;
  if (dequantize) {
    const array& w = copies.row_contiguous(inputs[0]);
    const array& scales = copies.row_contiguous(inputs[1]);
    auto& out = outputs[0];
    const int D = out.shape(-1);
    if (!tb::quant_dim_supported(D) || w.shape(-1) != tb::words(bits, D)) {
      throw std::invalid_argument("[dequantize] unsupported turbo shape.");
    }
    out.set_data(allocator::malloc(out.nbytes()));
    nvec = D > 0 ? int64_t(out.size() / D) : 0;
    kname = tb::dequantize_kernel_name(
        bits, type_to_name(scales.dtype()), type_to_name(out.dtype()), D);
    auto kernel = d.get_kernel(kname);
    enc.set_compute_pipeline_state(kernel);
    enc.set_input_array(w, TURBO_DQ_BUF_PACKED);
    enc.set_input_array(scales, TURBO_DQ_BUF_SCALES);
    enc.set_output_array(out, TURBO_DQ_BUF_OUT);
    enc.set_bytes(nvec, TURBO_DQ_BUF_NVEC);
  } else {
    const array& x = copies.row_contiguous(inputs[0]);
    auto& packed = outputs[0];
    auto& scales = outputs[1];
    const int D = x.shape(-1);
    if (!tb::quant_dim_supported(D)) {
      throw std::invalid_argument("[quantize] unsupported turbo head dim.");
    }
    packed.set_data(allocator::malloc(packed.nbytes()));
    scales.set_data(allocator::malloc(scales.nbytes()));
    nvec = int64_t(x.size() / D);
    kname = tb::quantize_kernel_name(bits, type_to_name(x.dtype()), D);
    auto kernel = d.get_kernel(kname);
    enc.set_compute_pipeline_state(kernel);
    enc.set_input_array(x, TURBO_Q_BUF_IN);
    enc.set_output_array(packed, TURBO_Q_BUF_PACKED);
    enc.set_output_array(scales, TURBO_Q_BUF_SCALES);
    enc.set_bytes(nvec, TURBO_Q_BUF_NVEC);
  }
  if (nvec > 0) {
    auto dims = tb::quantize_dims(nvec);
    enc.dispatch_threadgroups(to_size(dims.grid), to_size(dims.group));
  }
  copies.finish(enc);
}

void quantize_update_gpu(
    const std::vector<array>& inputs,
    array& out,
    QuantizationMode mode,
    int offset,
    bool has_shift,
    bool has_waves,
    bool scales,
    const Stream& s) {
  const int bits = mode_bits(mode);
  // (checked before any copy is encoded)
  auto supported = [&] {
    if (inputs.size() != 2 + size_t(has_shift) + 2 * size_t(has_waves)) {
      return false;
    }
    const array& buf = inputs[0];
    const array& x = inputs[1];
    if (x.ndim() != 4 || buf.ndim() != 4 ||
        (x.dtype() != float32 && x.dtype() != float16 &&
         x.dtype() != bfloat16) ||
        !tb::quant_dim_supported(x.shape(3)) || buf.shape(0) != x.shape(0) ||
        buf.shape(1) != x.shape(1) || offset < 0 ||
        offset > buf.shape(2) - x.shape(2) || out.shape() != buf.shape() ||
        out.dtype() != buf.dtype()) {
      return false;
    }
    const bool buf_ok = scales ? (buf.shape(3) == 1 && buf.dtype() == x.dtype())
                               : (buf.shape(3) == tb::words(bits, x.shape(3)) &&
                                  buf.dtype() == uint32);
    if (!buf_ok) {
      return false;
    }
    if (has_shift) {
      // (B or 1, H or 1, L or 1, D): size-1 axes are read with stride 0.
      const array& sh = inputs[2];
      if (sh.dtype() != float32 || sh.ndim() != 4 ||
          sh.shape(3) != x.shape(3)) {
        return false;
      }
      for (int i = 0; i < 3; ++i) {
        if (sh.shape(i) != 1 && sh.shape(i) != x.shape(i)) {
          return false;
        }
      }
    }
    if (has_waves) {
      const array& freqs = inputs[2 + has_shift];
      const array& waves = inputs[3 + has_shift];
      if (freqs.ndim() != 3 || freqs.dtype() != uint32) {
        return false;
      }
      const int Bw = freqs.shape(0), P = freqs.shape(2);
      if ((Bw != 1 && Bw != x.shape(0)) || freqs.shape(1) != x.shape(1) ||
          P < 1 || P > TURBO_KVDQ_MAX_WAVES || waves.dtype() != float32 ||
          waves.shape() != Shape{Bw, x.shape(1), 2 * P, x.shape(3)}) {
        return false;
      }
    }
    return true;
  };
  if (!supported()) {
    throw std::invalid_argument(
        scales ? "[quantized_cache_update] unsupported shapes or dtypes "
                 "(scales node)."
               : "[quantized_cache_update] unsupported shapes or dtypes "
                 "(codes node).");
  }
  auto& d = metal::device(s.device);
  auto& enc = metal::get_command_encoder(s);
  Copies copies{s, {}};
  const bool codes = !scales;
  const array& x = copies.last_contiguous(inputs[1]);
  const array* shift = has_shift ? &copies.last_contiguous(inputs[2]) : nullptr;
  const array* freqs =
      has_waves ? &copies.row_contiguous(inputs[2 + has_shift]) : nullptr;
  const array* waves =
      has_waves ? &copies.row_contiguous(inputs[3 + has_shift]) : nullptr;

  // The output takes the input buffer when it can be donated (as
  // SliceUpdate), else a row-contiguous copy; the kernel writes the new rows
  // of this one buffer only (the other node writes the other buffer).
  const array& buf = inputs[0];
  copy_gpu(
      buf,
      out,
      buf.flags().row_contiguous ? CopyType::Vector : CopyType::General,
      s);

  TurboQuantUpdateParams p{};
  p.H = x.shape(1);
  p.L = x.shape(2);
  p.N = out.shape(2);
  p.offset = offset;
  p.nvec = int64_t(x.shape(0)) * x.shape(1) * x.shape(2);
  bhl_strides(x, p.x_strides);
  if (has_shift) {
    bhl_strides(*shift, p.shift_strides);
  }
  p.waves = has_waves ? freqs->shape(2) : 0;
  p.wave_b = has_waves && freqs->shape(0) > 1 ? 1 : 0;
  if (p.nvec > 0) {
    const int D = x.shape(3);
    auto kname =
        tb::quantize_update_kernel_name(bits, type_to_name(x.dtype()), D);
    auto hash_name =
        tb::quantize_update_hash_name(kname, has_shift, scales, has_waves);
    metal::MTLFCList func_consts = {
        {&has_shift, MTL::DataType::DataTypeBool, TURBO_FC_UPDATE_SHIFT},
        {&scales, MTL::DataType::DataTypeBool, TURBO_FC_UPDATE_SCALES},
        {&codes, MTL::DataType::DataTypeBool, TURBO_FC_UPDATE_CODES},
        {&has_waves, MTL::DataType::DataTypeBool, TURBO_FC_UPDATE_WAVES},
    };
    auto kernel = d.get_kernel(kname, hash_name, func_consts);
    enc.set_compute_pipeline_state(kernel);
    enc.set_input_array(x, TURBO_QU_BUF_X);
    if (scales) {
      enc.set_output_array(out, TURBO_QU_BUF_SCALES);
    } else {
      enc.set_output_array(out, TURBO_QU_BUF_PACKED);
    }
    enc.set_bytes(p, TURBO_QU_BUF_PARAMS);
    if (has_shift) {
      enc.set_input_array(*shift, TURBO_QU_BUF_SHIFT);
    }
    if (has_waves) {
      enc.set_input_array(*freqs, TURBO_QU_BUF_FREQS);
      enc.set_input_array(*waves, TURBO_QU_BUF_WAVES);
    }
    auto dims = tb::quantize_dims(p.nvec);
    enc.dispatch_threadgroups(to_size(dims.grid), to_size(dims.group));
  }
  copies.finish(enc);
}

static_assert(
    TURBO_KVDQ_MAX_WAVES == kMaxKeyWaves,
    "the cache dequantize kernel holds kMaxKeyWaves phases per row");

void dequantize_kv_gpu(
    const std::vector<array>& inputs,
    array& out,
    QuantizationMode mode,
    KVDequantizeLayout layout,
    const Stream& s) {
  const int bits = mode_bits(mode);
  const int F = layout.has_first ? 1 : 0;
  const size_t n_inputs =
      2 + size_t(F) + size_t(layout.has_shift) + 2 * size_t(layout.has_waves);
  // (checked before any copy is encoded)
  auto supported = [&] {
    if (inputs.size() != n_inputs || out.ndim() != 4) {
      return false;
    }
    const array& packed = inputs[0];
    const array& scales = inputs[1];
    const Dtype t = out.dtype();
    if ((t != float32 && t != float16 && t != bfloat16) || packed.ndim() != 4 ||
        packed.dtype() != uint32 || scales.dtype() != t) {
      return false;
    }
    const int B = packed.shape(0), H = packed.shape(1), L = packed.shape(2);
    const int D = out.shape(3);
    if (!tb::quant_dim_supported(D) || packed.shape(3) != tb::words(bits, D) ||
        scales.shape() != Shape{B, H, L, 1} ||
        out.shape() != Shape{B, H, F + L, D}) {
      return false;
    }
    int i = 2;
    auto per_head = [&](const array& a, Dtype dt) {
      return a.dtype() == dt && a.shape() == Shape{B, H, 1, D};
    };
    if (layout.has_first && !per_head(inputs[i++], t)) {
      return false;
    }
    if (layout.has_shift && !per_head(inputs[i++], float32)) {
      return false;
    }
    if (layout.has_waves) {
      const array& freqs = inputs[i];
      const array& waves = inputs[i + 1];
      if (freqs.ndim() != 3 || freqs.dtype() != uint32) {
        return false;
      }
      const int P = freqs.shape(2);
      if (freqs.shape(0) != B || freqs.shape(1) != H || P < 1 ||
          P > TURBO_KVDQ_MAX_WAVES || waves.dtype() != float32 ||
          waves.shape() != Shape{B, H, 2 * P, D}) {
        return false;
      }
    }
    return true;
  };
  if (!supported()) {
    throw std::invalid_argument(
        "[QuantizedKVDequantize::eval_gpu] unsupported shapes or dtypes.");
  }
  auto& d = metal::device(s.device);
  auto& enc = metal::get_command_encoder(s);
  Copies copies{s, {}};
  // The cache is read in place (usually a slice of a larger buffer) with its
  // strides; only the words of a row must be contiguous.
  const array& packed = copies.last_contiguous(inputs[0]);
  const array& scales = inputs[1];
  int i = 2;
  auto next = [&](bool present) {
    return present ? &copies.row_contiguous(inputs[i++]) : nullptr;
  };
  const array* first = next(layout.has_first);
  const array* shift = next(layout.has_shift);
  const array* freqs = next(layout.has_waves);
  const array* waves = next(layout.has_waves);
  out.set_data(allocator::malloc(out.nbytes()));

  TurboKVDequantizeParams p{};
  p.H = packed.shape(1);
  p.L = packed.shape(2);
  p.waves = layout.has_waves ? freqs->shape(2) : 0;
  p.nrows = int64_t(packed.shape(0)) * p.H * (F + p.L);
  bhl_strides(packed, p.packed_strides);
  bhl_strides(scales, p.scales_strides);
  if (p.nrows > 0) {
    const int D = out.shape(3);
    const bool has_first = layout.has_first;
    const bool has_shift = layout.has_shift;
    const bool has_waves = layout.has_waves;
    auto kname =
        tb::dequantize_kv_kernel_name(bits, type_to_name(out.dtype()), D);
    auto hash_name =
        tb::dequantize_kv_hash_name(kname, has_first, has_shift, has_waves);
    metal::MTLFCList func_consts = {
        {&has_first, MTL::DataType::DataTypeBool, TURBO_FC_KVDQ_FIRST},
        {&has_shift, MTL::DataType::DataTypeBool, TURBO_FC_KVDQ_SHIFT},
        {&has_waves, MTL::DataType::DataTypeBool, TURBO_FC_KVDQ_WAVES},
    };
    auto kernel = d.get_kernel(kname, hash_name, func_consts);
    enc.set_compute_pipeline_state(kernel);
    enc.set_input_array(packed, TURBO_KVDQ_BUF_PACKED);
    enc.set_input_array(scales, TURBO_KVDQ_BUF_SCALES);
    enc.set_output_array(out, TURBO_KVDQ_BUF_OUT);
    enc.set_bytes(p, TURBO_KVDQ_BUF_PARAMS);
    if (has_first) {
      enc.set_input_array(*first, TURBO_KVDQ_BUF_FIRST);
    }
    if (has_shift) {
      enc.set_input_array(*shift, TURBO_KVDQ_BUF_SHIFT);
    }
    if (has_waves) {
      enc.set_input_array(*freqs, TURBO_KVDQ_BUF_FREQS);
      enc.set_input_array(*waves, TURBO_KVDQ_BUF_WAVES);
    }
    auto dims = tb::quantize_dims(p.nrows);
    enc.dispatch_threadgroups(to_size(dims.grid), to_size(dims.group));
  }
  copies.finish(enc);
}

} // namespace turbo

namespace fast {

void QuantizedKVDequantize::eval_gpu(
    const std::vector<array>& inputs,
    std::vector<array>& outputs) {
  turbo::dequantize_kv_gpu(
      inputs,
      outputs[0],
      mode_,
      turbo::KVDequantizeLayout{has_first_, has_shift_, has_waves_},
      stream());
}

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
