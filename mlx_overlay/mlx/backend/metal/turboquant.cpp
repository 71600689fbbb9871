// Copyright © 2026 TurboQuant-MLX authors.
//
// Metal dispatch of the TurboQuant codec ops: the turbo modes of
// fast::Quantize, the cache update (turbo::quantize_update_gpu, called by
// fast::QuantizedCacheUpdate::eval_gpu in turboquant_cache.cpp) and the cache
// dequantize of the attention of many queries (fast::QuantizedKVDequantize,
// turbo::dequantize_kv_gpu); the attention on the packed cache is in
// turboquant_attention.cpp. Buffer indices, function constants, kernel names
// and launch geometry come from kernels/turbo_bindings.h, which the Linux
// harness in tests/metal uses as well.

#include <stdexcept>

#include "mlx/backend/gpu/copy.h"
#include "mlx/backend/metal/device.h"
#include "mlx/backend/metal/kernels/turbo_bindings.h"
#include "mlx/backend/metal/turboquant.h"
#include "mlx/backend/metal/turboquant_dispatch.h"
#include "mlx/backend/metal/utils.h"
#include "mlx/fast_primitives.h"
#include "mlx/turboquant.h"

namespace mlx::core {

namespace tb = turbo_bindings;
using namespace turbo::metal_dispatch;

namespace turbo {

bool gpu_quantize_supported() {
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

} // namespace fast

} // namespace mlx::core
