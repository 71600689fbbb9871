// Copyright © 2026 TurboQuant-MLX contributors.
//
// Launches of the TurboQuant quantize / dequantize kernels and the
// parameters of the decode attention (planned by device/turboquant_plan.cuh;
// the launches themselves are instantiated per head dimension in
// turboquant_attn_d*.cu).

#include "mlx/backend/cuda/device.h"
#include "mlx/backend/cuda/device/turboquant.cuh"
#include "mlx/backend/cuda/kernel_utils.cuh"
#include "mlx/backend/cuda/turboquant.h"
#include "mlx/backend/cuda/turboquant_attn.cuh"
#include "mlx/backend/gpu/copy.h"
#include "mlx/dtype_utils.h"
#include "mlx/turboquant.h"

#include <optional>
#include <sstream>
#include <stdexcept>

namespace mlx::core {

// The primitive reaches the decode kernels only (eval_gpu, use_fallback).
static_assert(cu::turbo::kVectorMaxQL == turbo::kFusedMaxQueries);

namespace {

template <typename F>
void dispatch_turbo_dim(int d, F&& f) {
  switch (d) {
    case 64:
      f(std::integral_constant<int, 64>{});
      break;
    case 80:
      f(std::integral_constant<int, 80>{});
      break;
    case 96:
      f(std::integral_constant<int, 96>{});
      break;
    case 128:
      f(std::integral_constant<int, 128>{});
      break;
    case 192:
      f(std::integral_constant<int, 192>{});
      break;
    case 256:
      f(std::integral_constant<int, 256>{});
      break;
    default: {
      std::ostringstream msg;
      msg << "[turboquant] Unsupported head dimension " << d << ".";
      throw std::invalid_argument(msg.str());
    }
  }
}

template <typename F>
void dispatch_turbo_bits(int bits, F&& f) {
  if (bits == 3) {
    f(std::integral_constant<int, 3>{});
  } else {
    f(std::integral_constant<int, 4>{});
  }
}

int num_sms(cu::CommandEncoder& enc) {
  // Cached per CUDA device.
  static int cache[64] = {0};
  int dev = enc.device().cuda_device();
  if (dev < 0 || dev >= 64) {
    return 132;
  }
  if (cache[dev] == 0) {
    int n = 0;
    CHECK_CUDA_ERROR(
        cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
    cache[dev] = n > 0 ? n : 1;
  }
  return cache[dev];
}

// Elements between the batch entries of x (B, ...): 0 where x is shared by
// the batch (leading size 1) or absent.
int64_t batch_stride(const std::optional<array>& x) {
  return x && x->shape(0) != 1 ? x->size() / x->shape(0) : 0;
}

} // namespace

bool turbo_cuda_supported_dim(int d) {
  return d == 64 || d == 80 || d == 96 || d == 128 || d == 192 || d == 256;
}

namespace {

// x's dtype is T; packed or scales may be null (not written).
template <typename T>
void launch_encode(
    const T* x,
    uint32_t* packed,
    T* scales,
    int d,
    int bits,
    cu::turbo::EncodeRows rows, // by value: add_kernel_node takes its address
    cu::CommandEncoder& enc) {
  if (rows.n_vec == 0) {
    return;
  }
  dim3 grid(
      (rows.n_vec + cu::turbo::kEncodeWarps - 1) / cu::turbo::kEncodeWarps);
  dim3 block(32 * cu::turbo::kEncodeWarps);
  dispatch_turbo_dim(d, [&](auto dim) {
    dispatch_turbo_bits(bits, [&](auto b) {
      enc.add_kernel_node(
          cu::turbo::turbo_encode<T, dim.value, b.value>,
          grid,
          block,
          x,
          packed,
          scales,
          rows);
    });
  });
}

} // namespace

void turbo_quantize_gpu(
    const array& x,
    array& packed,
    array& scales,
    int bits,
    cu::CommandEncoder& enc) {
  int d = x.shape(-1);
  enc.set_input_array(x);
  enc.set_output_array(packed);
  enc.set_output_array(scales);
  dispatch_float_types(x.dtype(), "turbo_quantize", [&](auto type_tag) {
    using T = cuda_type_t<MLX_GET_TYPE(type_tag)>;
    launch_encode(
        gpu_ptr<T>(x),
        gpu_ptr<uint32_t>(packed),
        gpu_ptr<T>(scales),
        d,
        bits,
        cu::turbo::EncodeRows::contiguous(x.size() / d, d),
        enc);
  });
}

void turbo_quantize_update_gpu(
    const std::vector<array>& inputs,
    array& out,
    int bits,
    int offset,
    bool has_shift,
    bool has_waves,
    bool scales,
    cu::CommandEncoder& enc,
    const Stream& s) {
  // The output takes the cache buffer when it can be donated (as
  // SliceUpdate does); the kernel then writes the new rows only.
  auto& buf = inputs[0];
  copy_gpu(
      buf,
      out,
      buf.flags().row_contiguous ? CopyType::Vector : CopyType::General,
      s);
  auto last_contiguous = [&](const array& a) {
    if (a.strides(-1) == 1) {
      return a;
    }
    array c = contiguous_copy_gpu(a, s);
    enc.add_temporary(c);
    return c;
  };
  array x = last_contiguous(inputs[1]);
  std::optional<array> shift, freqs, waves;
  int i = 2;
  if (has_shift) {
    shift = last_contiguous(inputs[i++]);
    enc.set_input_array(*shift);
  }
  if (has_waves) {
    freqs = turbo_row_dense(inputs[i++], enc, s);
    waves = turbo_row_dense(inputs[i++], enc, s);
    enc.set_input_array(*freqs);
    enc.set_input_array(*waves);
  }
  enc.set_input_array(x);
  enc.set_output_array(out);
  cu::turbo::EncodeRows rows{
      x.size() / x.shape(3),
      x.shape(2),
      x.shape(1),
      {x.strides(0), x.strides(1), x.strides(2)},
      shift ? gpu_ptr<float>(*shift) : nullptr,
      {0, 0, 0},
      out.shape(2),
      offset,
      freqs ? gpu_ptr<uint32_t>(*freqs) : nullptr,
      waves ? gpu_ptr<float>(*waves) : nullptr,
      freqs ? freqs->shape(2) : 0,
      freqs && freqs->shape(0) > 1 ? 1 : 0};
  if (shift) {
    // (B or 1, H or 1, L or 1, D): size-1 axes are read with stride 0.
    for (int j = 0; j < 3; ++j) {
      rows.s_str[j] = shift->shape(j) == 1 ? 0 : shift->strides(j);
    }
  }
  dispatch_float_types(x.dtype(), "quantized_cache_update", [&](auto tag) {
    using T = cuda_type_t<MLX_GET_TYPE(tag)>;
    launch_encode(
        gpu_ptr<T>(x),
        scales ? nullptr : gpu_ptr<uint32_t>(out),
        scales ? gpu_ptr<T>(out) : nullptr,
        x.shape(3),
        bits,
        rows,
        enc);
  });
}

namespace {

template <typename T>
void launch_decode(
    const array& packed,
    const array& scales,
    const array* first,
    array& out,
    int bits,
    cu::turbo::DecodeRows rows, // by value: add_kernel_node takes its address
    cu::CommandEncoder& enc) {
  const int64_t blocks = rows.heads * cu::turbo::decode_tiles(rows.L);
  if (blocks == 0 || out.size() == 0) {
    return;
  }
  dim3 grid(blocks);
  dim3 block(32 * cu::turbo::kDecodeWarps);
  const T* first_ptr = first ? gpu_ptr<T>(*first) : nullptr;
  dispatch_turbo_dim(out.shape(-1), [&](auto dim) {
    dispatch_turbo_bits(bits, [&](auto b) {
      enc.add_kernel_node(
          cu::turbo::turbo_decode<T, dim.value, b.value>,
          grid,
          block,
          gpu_ptr<uint32_t>(packed),
          gpu_ptr<T>(scales),
          first_ptr,
          gpu_ptr<T>(out),
          rows);
    });
  });
}

} // namespace

void turbo_dequantize_gpu(
    const array& packed,
    const array& scales,
    array& x,
    int bits,
    cu::CommandEncoder& enc,
    const Stream& s) {
  int d = x.shape(-1);
  int64_t n = x.size() / d;
  if (n == 0) {
    return;
  }
  // The op casts the scales to the output type before the primitive.
  if (scales.dtype() != x.dtype()) {
    throw std::invalid_argument(
        "[turbo_dequantize_gpu] scales must have the output dtype.");
  }
  enc.set_input_array(packed);
  enc.set_input_array(scales);
  enc.set_output_array(x);
  auto rows = cu::turbo::DecodeRows::contiguous(n, packed.shape(-1));
  dispatch_float_types(x.dtype(), "turbo_dequantize", [&](auto type_tag) {
    using T = cuda_type_t<MLX_GET_TYPE(type_tag)>;
    launch_decode<T>(packed, scales, nullptr, x, bits, rows, enc);
  });
}

void turbo_dequantize_kv_gpu(
    const std::vector<array>& inputs,
    array& out,
    int bits,
    turbo::KVDequantizeLayout layout,
    cu::CommandEncoder& enc,
    const Stream& s) {
  out.set_data(cu::malloc_async(out.nbytes(), enc));
  // The cache is read in place (usually a slice of a larger buffer); only
  // the words of a row must be contiguous.
  array packed = inputs[0];
  if (packed.strides().back() != 1) {
    packed = contiguous_copy_gpu(packed, s);
    enc.add_temporary(packed);
  }
  const array& scales = inputs[1];
  // The codes as the kernel reads them (the copy when one was made).
  enc.set_input_array(packed);
  for (size_t j = 1; j < inputs.size(); ++j) {
    enc.set_input_array(inputs[j]);
  }
  enc.set_output_array(out);
  int i = 2;
  auto next = [&](bool present) { return present ? &inputs[i++] : nullptr; };
  const array* first = next(layout.has_first);
  const array* shift = next(layout.has_shift);
  const array* freqs = next(layout.has_waves);
  const array* waves = next(layout.has_waves);
  const auto& ps = packed.strides();
  const auto& ss = scales.strides();
  cu::turbo::DecodeRows rows{
      packed.shape(2),
      int64_t(packed.shape(0)) * packed.shape(1),
      packed.shape(1),
      {ps[0], ps[1], ps[2]},
      {ss[0], ss[1], ss[2]},
      shift ? gpu_ptr<float>(*shift) : nullptr,
      freqs ? gpu_ptr<uint32_t>(*freqs) : nullptr,
      waves ? gpu_ptr<float>(*waves) : nullptr,
      freqs ? freqs->shape(-1) : 0};
  dispatch_float_types(out.dtype(), "turbo_dequantize_kv", [&](auto type_tag) {
    using T = cuda_type_t<MLX_GET_TYPE(type_tag)>;
    launch_decode<T>(packed, scales, first, out, bits, rows, enc);
  });
}

void turbo_rotate_gpu(
    const array& x,
    array& y,
    bool inverse,
    cu::CommandEncoder& enc) {
  int d = x.shape(-1);
  int64_t n = x.size() / d;
  if (n == 0) {
    return;
  }
  // One side is float32: the queries go to float32, the output comes back.
  const array& other = inverse ? y : x;
  if ((inverse ? x : y).dtype() != float32) {
    throw std::invalid_argument(
        "[turbo_rotate_gpu] the rotated side must be float32.");
  }
  enc.set_input_array(x);
  enc.set_output_array(y);
  dim3 grid((n + cu::turbo::kEncodeWarps - 1) / cu::turbo::kEncodeWarps);
  dim3 block(32 * cu::turbo::kEncodeWarps);
  dispatch_float_types(other.dtype(), "turbo_rotate", [&](auto type_tag) {
    using T = cuda_type_t<MLX_GET_TYPE(type_tag)>;
    dispatch_turbo_dim(d, [&](auto dim) {
      if (inverse) {
        enc.add_kernel_node(
            cu::turbo::turbo_rotate<float, T, dim.value, true>,
            grid,
            block,
            gpu_ptr<float>(x),
            gpu_ptr<T>(y),
            n);
      } else {
        enc.add_kernel_node(
            cu::turbo::turbo_rotate<T, float, dim.value, false>,
            grid,
            block,
            gpu_ptr<T>(x),
            gpu_ptr<float>(y),
            n);
      }
    });
  });
}

void turbo_attention_prep_gpu(
    const array& q,
    array& q_rot,
    const std::optional<array>& sv,
    array* sv_rot,
    const std::optional<array>& sinks,
    const std::optional<array>& key_shift,
    const std::optional<array>& first_key,
    array* row_sinks,
    const std::optional<array>& waves,
    array* wave_coef,
    float scale,
    cu::CommandEncoder& enc) {
  const int Hq = q.shape(1);
  const int qL = q.shape(2);
  const int d = q.shape(3);
  const int64_t n_q = q.size() / d;
  const int64_t n_sv = sv ? sv->size() / d : 0;
  for (auto* x : {&sv, &key_shift, &first_key}) {
    if (*x && (*x)->dtype() != q.dtype()) {
      throw std::invalid_argument(
          "[turbo_attention_prep_gpu] the sink values and the key bias must "
          "have the queries' dtype.");
    }
  }
  enc.set_input_array(q);
  enc.set_output_array(q_rot);
  if (sv) {
    enc.set_input_array(*sv);
    enc.set_output_array(*sv_rot);
  }
  for (auto* x : {&sinks, &key_shift, &first_key}) {
    if (*x) {
      enc.set_input_array(**x);
    }
  }
  if (row_sinks) {
    enc.set_output_array(*row_sinks);
  }
  if (waves) {
    enc.set_input_array(*waves);
    enc.set_output_array(*wave_coef);
  }
  dim3 grid(
      (n_q + n_sv + cu::turbo::kEncodeWarps - 1) / cu::turbo::kEncodeWarps);
  dim3 block(32 * cu::turbo::kEncodeWarps);
  dispatch_float_types(q.dtype(), "turbo_attention_prep", [&](auto type_tag) {
    using T = cuda_type_t<MLX_GET_TYPE(type_tag)>;
    auto ptr = [](const std::optional<array>& x) {
      return x ? gpu_ptr<T>(*x) : static_cast<const T*>(nullptr);
    };
    int Hkv = Hq;
    for (auto* x : {&key_shift, &first_key, &waves}) {
      if (*x) {
        Hkv = (*x)->shape(1);
      }
    }
    cu::turbo::PrepArgs<T> a{
        n_q,
        n_sv,
        Hq,
        qL,
        Hq / Hkv,
        scale,
        sinks ? gpu_ptr<float>(*sinks) : nullptr,
        ptr(key_shift),
        ptr(first_key),
        batch_stride(key_shift),
        batch_stride(first_key),
        row_sinks ? gpu_ptr<float>(*row_sinks) : nullptr,
        waves ? gpu_ptr<float>(*waves) : nullptr,
        batch_stride(waves),
        waves ? waves->shape(2) / 2 : 0,
        wave_coef ? gpu_ptr<float>(*wave_coef) : nullptr};
    dispatch_turbo_dim(d, [&](auto dim) {
      enc.add_kernel_node(
          cu::turbo::turbo_attention_prep<T, dim.value>,
          grid,
          block,
          gpu_ptr<T>(q),
          gpu_ptr<float>(q_rot),
          ptr(sv),
          sv_rot ? gpu_ptr<float>(*sv_rot) : nullptr,
          a);
    });
  });
}

namespace {

// The strides of a decode call's cache (B, H, L) in p: what plan_decode's
// choice of kernel depends on.
void set_cache_strides(
    cu::turbo::AttnParams& p,
    const array& k,
    const array& ks,
    const array& v,
    const array& vs) {
  auto strides3 = [](const array& a, int64_t* st) {
    st[0] = a.strides(0);
    st[1] = a.strides(1);
    st[2] = a.strides(2);
  };
  strides3(k, p.k_str);
  strides3(ks, p.ks_str);
  strides3(v, p.v_str);
  strides3(vs, p.vs_str);
}

bool half_type(Dtype t) {
  return t == float16 || t == bfloat16;
}

} // namespace

bool turbo_sdpa_preps_in_kernel(
    const array& q,
    const array& k,
    const array& ks,
    const array& v,
    const array& vs,
    int key_bits,
    int value_bits,
    bool low_precision) {
  cu::turbo::AttnParams p{};
  set_cache_strides(p, k, ks, v, vs);
  cu::turbo::DecodePlan plan{};
  plan.tc = cu::turbo::decode_uses_tc(
      p,
      q.shape(-1),
      key_bits,
      value_bits,
      low_precision,
      half_type(ks.dtype()));
  return cu::turbo::decode_preps_in_kernel(plan, q.dtype() == ks.dtype());
}

void turbo_sdpa_gpu(
    const array& q,
    const array& k,
    const array& ks,
    const array& v,
    const array& vs,
    const std::optional<array>& mask,
    const std::optional<array>& sinks,
    const std::optional<array>& sink_values,
    const std::optional<array>& wave_coef,
    const std::optional<array>& wave_freqs,
    array& out,
    float scale,
    bool do_causal,
    int key_bits,
    int value_bits,
    bool low_precision,
    array* final_out,
    const TurboKernelPrep* kprep,
    cu::CommandEncoder& enc) {
  namespace tb = cu::turbo;
  const int B = q.shape(0);
  const int Hq = q.shape(1);
  const int qL = q.shape(2);
  const int D = q.shape(3);
  const int Hkv = k.shape(1);
  const int kL = k.shape(2);

  turbo_detail::AttnLaunch L{};
  auto& p = L.params;
  p.B = B;
  p.Hq = Hq;
  p.Hkv = Hkv;
  p.qL = qL;
  p.kL = kL;
  p.gqa = Hq / Hkv;
  p.scale_log2 = scale * tb::kLog2e;
  p.causal = do_causal;
  p.causal_offset = kL - qL;
  p.has_sinks = sinks.has_value();
  auto strides3 = [](const array& a, int64_t* st) {
    st[0] = a.strides(0);
    st[1] = a.strides(1);
    st[2] = a.strides(2);
  };
  strides3(q, p.q_str);
  set_cache_strides(p, k, ks, v, vs);
  strides3(out, p.o_str);
  p.mask_kind = tb::kMaskNone;
  if (mask) {
    const array& m = *mask;
    p.mask_kind = m.dtype() == bool_ ? tb::kMaskBool : tb::kMaskFloat;
    // Right-aligned broadcast to (B, Hq, qL, kL).
    int nd = m.ndim();
    for (int i = 0; i < 4; i++) {
      int ax = nd - 4 + i;
      p.m_str[i] = (ax >= 0 && m.shape(ax) != 1) ? m.strides(ax) : 0;
    }
    L.mask = gpu_ptr<void>(m);
  }
  L.sinks = sinks ? gpu_ptr<float>(*sinks) : nullptr;
  // Per head (Hq) or per query row (B, Hq, qL).
  const bool row_sinks = sinks && sinks->ndim() == 3;
  p.sk_str[0] = row_sinks ? int64_t(Hq) * qL : 0;
  p.sk_str[1] = row_sinks ? qL : 1;
  p.sk_str[2] = row_sinks ? 1 : 0;
  if (sink_values) {
    // With kprep the rows as given (the queries' dtype), else rotated
    // float32.
    if (kprep) {
      if (sink_values->dtype() != q.dtype()) {
        throw std::invalid_argument(
            "[turbo_sdpa_gpu] the sink values must have the queries' dtype.");
      }
      p.sv_in = gpu_ptr<void>(*sink_values);
    } else {
      p.sink_values = gpu_ptr<float>(*sink_values);
    }
    p.sv_b_str = batch_stride(sink_values);
  }

  enc.set_input_array(q);
  enc.set_input_array(k);
  enc.set_input_array(ks);
  enc.set_input_array(v);
  enc.set_input_array(vs);
  if (mask) {
    enc.set_input_array(*mask);
  }
  if (sinks) {
    enc.set_input_array(*sinks);
  }
  if (sink_values) {
    enc.set_input_array(*sink_values);
  }
  if (wave_freqs) {
    p.waves = wave_freqs->shape(2);
    p.wave_freqs = gpu_ptr<uint32_t>(*wave_freqs);
    p.wf_b_str = batch_stride(wave_freqs);
    enc.set_input_array(*wave_freqs);
    if (!kprep) {
      p.wave_coef = gpu_ptr<float>(*wave_coef);
      enc.set_input_array(*wave_coef);
    }
  }
  if (kprep) {
    // The kernel rotates the queries as given and computes what
    // turbo_attention_prep would (AttnParams::q_in).
    for (auto* x : {&kprep->key_shift, &kprep->first_key}) {
      if (*x && (*x)->dtype() != q.dtype()) {
        throw std::invalid_argument(
            "[turbo_sdpa_gpu] the key bias must have the queries' dtype.");
      }
    }
    p.q_in = gpu_ptr<void>(q);
    p.scale = scale;
    p.row_bias = kprep->key_shift || kprep->first_key;
    if (kprep->key_shift) {
      p.key_shift = gpu_ptr<void>(*kprep->key_shift);
      p.ksh_b_str = batch_stride(kprep->key_shift);
      enc.set_input_array(*kprep->key_shift);
    }
    if (kprep->first_key) {
      p.first_key = gpu_ptr<void>(*kprep->first_key);
      p.fk_b_str = batch_stride(kprep->first_key);
      enc.set_input_array(*kprep->first_key);
    }
    if (p.row_bias) {
      p.has_sinks = true; // logits per row, from the per-head ones if any
    }
    if (p.waves > 0) {
      p.wave_rows = gpu_ptr<float>(*kprep->waves);
      p.wr_b_str = batch_stride(kprep->waves);
      enc.set_input_array(*kprep->waves);
    }
  }

  L.plan = tb::plan_decode(
      p,
      D,
      key_bits,
      value_bits,
      low_precision,
      half_type(ks.dtype()),
      num_sms(enc));
  if (kprep && !tb::decode_preps_in_kernel(L.plan, q.dtype() == ks.dtype())) {
    throw std::logic_error(
        "[turbo_sdpa_gpu] the decode kernel cannot prepare these queries.");
  }
  // Split-K partials (float32 o, and m, l per row and split).
  std::optional<array> part_o;
  std::optional<array> part_ml;
  if (p.num_splits > 1) {
    int64_t prow = int64_t(p.num_splits) * B * Hq * qL;
    part_o = array({static_cast<int>(prow * D)}, float32, nullptr, {});
    part_ml = array({static_cast<int>(prow * 2)}, float32, nullptr, {});
    part_o->set_data(cu::malloc_async(part_o->nbytes(), enc));
    part_ml->set_data(cu::malloc_async(part_ml->nbytes(), enc));
    enc.add_temporary(*part_o);
    enc.add_temporary(*part_ml);
    enc.set_output_array(*part_o);
    enc.set_output_array(*part_ml);
    L.part_o = &*part_o;
    L.part_ml = &*part_ml;
  }
  enc.set_output_array(out);
  // The split-K combine rotates back in place of a separate launch.
  const bool combine_rotates = final_out && p.num_splits > 1;
  L.final_out = combine_rotates ? final_out : nullptr;

  dispatch_turbo_dim(D, [&](auto dim) {
    turbo_detail::launch_attention<dim.value>(
        q, k, ks, v, vs, out, L, key_bits, value_bits, enc);
  });
  if (final_out && !combine_rotates) {
    turbo_rotate_gpu(out, *final_out, true, enc);
  }
}

} // namespace mlx::core
