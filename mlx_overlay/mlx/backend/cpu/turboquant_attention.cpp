// Copyright © 2026 TurboQuant-MLX contributors.
//
// Fused CPU attention reading the TurboQuant-packed cache directly: one pass
// over the keys per task with an online softmax, tasks over (batch, kv head,
// query block) and, when they are fewer than the threads, over key chunks
// (split-K) merged at the end.

#include <cfloat>
#include <cmath>
#include <stdexcept>

#include "mlx/backend/cpu/turboquant.h"
#include "mlx/fast_primitives.h"
#include "mlx/turboquant.h"

namespace mlx::core {

namespace {

using namespace turbo_cpu;

// Decodes the codes of one vector into centroid values (no scale).
template <int BITS>
inline void decode_centroids(const uint32_t* w, float* out, int dim) {
  if constexpr (BITS == 4) {
    for (int i = 0; i < dim; i += 8) {
      uint32_t word = w[i / 8];
      for (int k = 0; k < 8; ++k) {
        out[i + k] = turbo::kCodebook4[(word >> (4 * k)) & 0xFu];
      }
    }
  } else {
    const uint32_t* hi = w + dim / 16;
    for (int i = 0; i < dim; i += 16) {
      uint32_t lo = w[i / 16];
      uint32_t h = hi[i / 32] >> (i % 32);
      for (int k = 0; k < 16; ++k) {
        uint32_t code = ((lo >> (2 * k)) & 3u) | (((h >> k) & 1u) << 2);
        out[i + k] = turbo::kCodebook3[code];
      }
    }
  }
}

// Dot product with independent partial sums so that it vectorizes without
// -ffast-math (dims are multiples of 16).
inline float dot(const float* a, const float* b, int n) {
  float p[8] = {0.0f};
  for (int i = 0; i < n; i += 8) {
    for (int k = 0; k < 8; ++k) {
      p[k] += a[i + k] * b[i + k];
    }
  }
  return ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
}

struct AttnArgs {
  const float* q; // [B, Hq, qL, Dk] contiguous
  const uint32_t* k;
  const uint32_t* v;
  int64_t k_str[3]; // batch, head, seq strides (elements); last dim unit
  int64_t v_str[3];
  const void* ks;
  const void* vs;
  int64_t ks_str[3];
  int64_t vs_str[3];
  Dtype scale_type = float32;
  const void* mask; // bool or float32, strided
  bool mask_is_bool;
  int64_t m_str[4];
  // Sink logits, float32: per head (sk_str {0, 1, 0}) or per row (B, Hq, qL)
  // with the key bias of the exact transforms folded in; nullptr if none.
  const float* sinks;
  int64_t sk_str[3];
  // The sinks' values (B or 1, Hkv, Dv), rotated, or nullptr (value 0).
  const float* sink_values;
  int64_t sv_b_str; // 0 when shared by the batch
  float* out; // [B, Hq, qL, Dv]
  // The position-dependent key shift (docs/format.md section 7): per row
  // scale * q . waves[j] (B, Hq, qL, 2P) and the frequencies (B or 1, Hkv,
  // P), or nullptr.
  const float* wave_coef;
  const uint32_t* wave_freqs;
  int64_t wf_b_str; // 0 when shared by the batch
  int P;
  int B, Hq, Hkv, qL, kL, Dk, Dv;
  float scale;
  bool causal;
};

// Keys between two phases read from the tables; the turned phases drift by
// about a float32 rounding per key.
constexpr int kPhaseReseed = 32;

template <typename S>
inline float load_scale(const void* p, int64_t off) {
  return static_cast<float>(static_cast<const S*>(p)[off]);
}

// One task: all query heads of one KV head, a block of queries, a range of
// keys. Writes partial (m, l, acc) for each row.
template <int KBITS, int VBITS, typename S>
void attention_task(
    const AttnArgs& a,
    int b,
    int kvh,
    int q0,
    int q1,
    int j0,
    int j1,
    float* m_out,
    float* l_out,
    float* acc_out) {
  int G = a.Hq / a.Hkv;
  int nq = q1 - q0;
  int rows = G * nq;
  std::vector<float> kbuf(a.Dk), vbuf(a.Dv);
  std::vector<float> m(rows, -INFINITY), l(rows, 0.0f), score(rows);
  // The moving key shift's phases: from the tables every kPhaseReseed keys,
  // in between turned by one key's angle (step), float32 accurate.
  std::vector<float> phases(2 * a.P), step(2 * a.P);
  const TurnTables& tables = turn_tables();
  const uint32_t* freqs =
      a.wave_freqs ? a.wave_freqs + b * a.wf_b_str + kvh * a.P : nullptr;
  if (freqs) {
    key_wave_phases(freqs, a.P, 1u, tables, step.data());
  }
  std::fill(acc_out, acc_out + int64_t(rows) * a.Dv, 0.0f);

  // Causal: keys past the last visible one contribute exactly zero when every
  // row of the block sees at least one key.
  int offset = a.kL - a.qL;
  if (a.causal && offset + q0 >= 0) {
    j1 = std::min(j1, offset + q1);
  }
  const uint32_t* kbase = a.k + b * a.k_str[0] + kvh * a.k_str[1];
  const uint32_t* vbase = a.v + b * a.v_str[0] + kvh * a.v_str[1];
  int64_t ks_base = b * a.ks_str[0] + kvh * a.ks_str[1];
  int64_t vs_base = b * a.vs_str[0] + kvh * a.vs_str[1];
  for (int j = j0; j < j1; ++j) {
    decode_centroids<KBITS>(kbase + j * a.k_str[2], kbuf.data(), a.Dk);
    float ks = load_scale<S>(a.ks, ks_base + j * a.ks_str[2]) * a.scale;
    if (freqs) {
      if ((j - j0) % kPhaseReseed == 0) {
        key_wave_phases(freqs, a.P, uint32_t(j), tables, phases.data());
      } else {
        for (int p = 0; p < a.P; ++p) {
          float c = phases[p], sn = phases[a.P + p];
          phases[p] = c * step[p] - sn * step[a.P + p];
          phases[a.P + p] = sn * step[p] + c * step[a.P + p];
        }
      }
    }
    for (int g = 0; g < G; ++g) {
      int h = kvh * G + g;
      for (int qi = q0; qi < q1; ++qi) {
        int r = g * nq + (qi - q0);
        float s;
        if (a.causal && j > offset + qi) {
          s = -FLT_MAX;
        } else {
          const float* q = a.q + ((int64_t(b) * a.Hq + h) * a.qL + qi) * a.Dk;
          s = dot(q, kbuf.data(), a.Dk) * ks;
          if (freqs) {
            const float* c = a.wave_coef +
                ((int64_t(b) * a.Hq + h) * a.qL + qi) * 2 * a.P;
            for (int p = 0; p < 2 * a.P; ++p) {
              s += c[p] * phases[p];
            }
          }
          if (a.mask) {
            int64_t mo = b * a.m_str[0] + h * a.m_str[1] + qi * a.m_str[2] +
                j * a.m_str[3];
            if (a.mask_is_bool) {
              if (!static_cast<const bool*>(a.mask)[mo]) {
                s = -FLT_MAX;
              }
            } else {
              s += static_cast<const float*>(a.mask)[mo];
            }
          }
        }
        score[r] = s;
      }
    }
    decode_centroids<VBITS>(vbase + j * a.v_str[2], vbuf.data(), a.Dv);
    float vsc = load_scale<S>(a.vs, vs_base + j * a.vs_str[2]);
    for (int r = 0; r < rows; ++r) {
      float s = score[r];
      float* acc = acc_out + int64_t(r) * a.Dv;
      if (s > m[r]) {
        float f = std::exp(m[r] - s);
        l[r] *= f;
        for (int i = 0; i < a.Dv; ++i) {
          acc[i] *= f;
        }
        m[r] = s;
      }
      // A key masked with -inf adds nothing, also while every key so far
      // was -inf (exp(-inf - -inf) would be NaN).
      float p = s == -INFINITY ? 0.0f : std::exp(s - m[r]);
      l[r] += p;
      float pv = p * vsc;
      for (int i = 0; i < a.Dv; ++i) {
        acc[i] += pv * vbuf[i];
      }
    }
  }
  std::copy(m.begin(), m.end(), m_out);
  std::copy(l.begin(), l.end(), l_out);
}

template <int KBITS, int VBITS, typename S>
void attention(const AttnArgs& a) {
  int G = a.Hq / a.Hkv;
  // Query blocks keep the per-task accumulators small for prefill.
  int qblock = std::max(1, std::min(a.qL, 64 / G > 0 ? 64 / G : 1));
  int nqb = (a.qL + qblock - 1) / qblock;
  int64_t items = int64_t(a.B) * a.Hkv * nqb;
  int64_t nthreads = std::max(1u, std::thread::hardware_concurrency());
  // Split the keys (two-pass) when there are fewer items than threads.
  int nsplit = 1;
  if (items < nthreads && a.kL >= 1024) {
    nsplit = std::min<int64_t>((nthreads + items - 1) / items, a.kL / 512);
  }
  int kchunk = (a.kL + nsplit - 1) / nsplit;
  int rows_max = G * qblock;
  int64_t tasks = items * nsplit;
  std::vector<float> part_m(tasks * rows_max), part_l(tasks * rows_max);
  std::vector<float> part_acc(tasks * rows_max * int64_t(a.Dv));

  auto decompose = [&](int64_t t, int& b, int& kvh, int& qb, int& sp) {
    sp = t % nsplit;
    t /= nsplit;
    qb = t % nqb;
    t /= nqb;
    kvh = t % a.Hkv;
    b = t / a.Hkv;
  };
  parallel_for(
      tasks,
      int64_t(kchunk) * rows_max * (a.Dk + a.Dv),
      [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
          int b, kvh, qb, sp;
          decompose(t, b, kvh, qb, sp);
          int q0 = qb * qblock, q1 = std::min(a.qL, q0 + qblock);
          int j0 = sp * kchunk, j1 = std::min(a.kL, j0 + kchunk);
          attention_task<KBITS, VBITS, S>(
              a,
              b,
              kvh,
              q0,
              q1,
              j0,
              j1,
              part_m.data() + t * rows_max,
              part_l.data() + t * rows_max,
              part_acc.data() + t * rows_max * a.Dv);
        }
      });

  // Merge the key splits and the sink, normalize, write out.
  for (int64_t it = 0; it < items; ++it) {
    int b, kvh, qb, sp;
    decompose(it * nsplit, b, kvh, qb, sp);
    int q0 = qb * qblock, q1 = std::min(a.qL, q0 + qblock);
    int nq = q1 - q0;
    for (int g = 0; g < G; ++g) {
      int h = kvh * G + g;
      for (int qi = q0; qi < q1; ++qi) {
        int r = g * nq + (qi - q0);
        const float sink = a.sinks
            ? a.sinks[b * a.sk_str[0] + h * a.sk_str[1] + qi * a.sk_str[2]]
            : -INFINITY;
        float mx = sink;
        for (int s = 0; s < nsplit; ++s) {
          mx = std::max(mx, part_m[(it * nsplit + s) * rows_max + r]);
        }
        float l = a.sinks ? std::exp(sink - mx) : 0.0f;
        float* o = a.out + ((int64_t(b) * a.Hq + h) * a.qL + qi) * a.Dv;
        if (a.sink_values) {
          const float* sv = a.sink_values + b * a.sv_b_str + kvh * a.Dv;
          for (int i = 0; i < a.Dv; ++i) {
            o[i] = l * sv[i];
          }
        } else {
          std::fill(o, o + a.Dv, 0.0f);
        }
        for (int s = 0; s < nsplit; ++s) {
          int64_t t = it * nsplit + s;
          float pm = part_m[t * rows_max + r];
          float f = pm == -INFINITY ? 0.0f : std::exp(pm - mx);
          l += part_l[t * rows_max + r] * f;
          const float* acc = part_acc.data() + (t * rows_max + r) * a.Dv;
          for (int i = 0; i < a.Dv; ++i) {
            o[i] += acc[i] * f;
          }
        }
        float inv = 1.0f / l;
        for (int i = 0; i < a.Dv; ++i) {
          o[i] *= inv;
        }
      }
    }
  }
}

template <typename S>
void attention_dispatch_bits(const AttnArgs& a, int kbits, int vbits) {
  if (kbits == 3 && vbits == 3) {
    attention<3, 3, S>(a);
  } else if (kbits == 3 && vbits == 4) {
    attention<3, 4, S>(a);
  } else if (kbits == 4 && vbits == 3) {
    attention<4, 3, S>(a);
  } else {
    attention<4, 4, S>(a);
  }
}

// y = R x (inverse: R^T x) for rows of dim contiguous values, in float32
// (the primitive's fused_rotation of the queries and the output).
template <typename TI, typename TO>
void rotate_rows(const TI* x, TO* y, int64_t rows, int dim, bool inverse) {
  parallel_for(rows, dim * 16, [&](int64_t r0, int64_t r1) {
    float buf[turbo::kMaxDim];
    for (int64_t r = r0; r < r1; ++r) {
      for (int i = 0; i < dim; ++i) {
        buf[i] = static_cast<float>(x[r * dim + i]);
      }
      turbo::rotate(buf, dim, inverse);
      for (int i = 0; i < dim; ++i) {
        y[r * dim + i] = static_cast<TO>(buf[i]);
      }
    }
  });
}

// Sink logits per query row (B, Hq, qL) with the key bias of the exact
// transforms: sinks[h] (0 without sinks) - scale * q . (key_shift -
// first_key), q as given (unrotated), key_shift / first_key (B or 1, Hkv, D)
// contiguous in the queries' dtype T, either may be absent.
// scale * q . waves[j] for every query row (B, Hq, qL, 2P): q as given
// (unrotated, dtype T), waves (B or 1, Hkv, 2P, Dk) float32 contiguous.
template <typename T>
void key_wave_coefficients(
    const T* q,
    const float* waves,
    int64_t w_b_str,
    const AttnArgs& a,
    float* out) {
  const int G = a.Hq / a.Hkv;
  for (int b = 0; b < a.B; ++b) {
    for (int h = 0; h < a.Hq; ++h) {
      const float* w = waves + b * w_b_str + int64_t(h / G) * 2 * a.P * a.Dk;
      for (int qi = 0; qi < a.qL; ++qi) {
        const int64_t row = (int64_t(b) * a.Hq + h) * a.qL + qi;
        const T* qr = q + row * a.Dk;
        for (int p = 0; p < 2 * a.P; ++p) {
          float d = 0.0f;
          for (int i = 0; i < a.Dk; ++i) {
            d += static_cast<float>(qr[i]) * w[p * a.Dk + i];
          }
          out[row * 2 * a.P + p] = a.scale * d;
        }
      }
    }
  }
}

template <typename T>
void row_sink_logits(
    const T* q,
    const float* sinks,
    const T* key_shift,
    const T* first_key,
    int64_t ksh_b_str,
    int64_t fk_b_str,
    const AttnArgs& a,
    float* out) {
  const int G = a.Hq / a.Hkv;
  std::vector<float> bias(a.Dk);
  for (int b = 0; b < a.B; ++b) {
    for (int h = 0; h < a.Hq; ++h) {
      const int kvh = h / G;
      for (int i = 0; i < a.Dk; ++i) {
        float mu = key_shift
            ? static_cast<float>(key_shift[b * ksh_b_str + kvh * a.Dk + i])
            : 0.0f;
        float k0 = first_key
            ? static_cast<float>(first_key[b * fk_b_str + kvh * a.Dk + i])
            : 0.0f;
        bias[i] = mu - k0;
      }
      for (int qi = 0; qi < a.qL; ++qi) {
        const int64_t row = (int64_t(b) * a.Hq + h) * a.qL + qi;
        const T* qr = q + row * a.Dk;
        float dot = 0.0f;
        for (int i = 0; i < a.Dk; ++i) {
          dot += static_cast<float>(qr[i]) * bias[i];
        }
        out[row] = (sinks ? sinks[h] : 0.0f) - a.scale * dot;
      }
    }
  }
}

} // namespace

namespace fast {

void QuantizedScaledDotProductAttention::eval_cpu(
    const std::vector<array>& inputs,
    std::vector<array>& outputs) {
  auto& encoder = cpu::get_command_encoder(stream());
  auto q = ensure_contiguous(inputs[0], encoder, stream());
  // The packed cache is read in place (it is often a strided view of a
  // larger buffer); only its last axis must be unit-stride.
  auto last_dense = [&](const array& a) {
    if (a.strides().back() == 1 || a.shape(-1) == 1) {
      return a;
    }
    auto c = contiguous_copy_cpu(a, stream());
    encoder.add_temporary(c);
    return c;
  };
  // (a cache's buffers: the first key_length_ rows, in place)
  auto k = last_dense(turbo::leading_rows(inputs[1], key_length_));
  auto ks = turbo::leading_rows(inputs[2], key_length_);
  auto v = last_dense(turbo::leading_rows(inputs[3], key_length_));
  auto vs = turbo::leading_rows(inputs[4], key_length_);
  auto [mask, sinks, sv, key_shift, first_key, waves, freqs] =
      turbo::attention_extras(
          inputs,
          has_sinks_,
          has_sink_values_,
          has_key_shift_,
          has_first_key_,
          has_key_waves_);
  auto contiguous = [&](std::optional<array>& x) {
    if (x) {
      x = ensure_contiguous(*x, encoder, stream());
    }
  };
  contiguous(sv);
  contiguous(key_shift);
  contiguous(first_key);
  contiguous(waves);
  contiguous(freqs);
  auto& out = outputs[0];
  out.set_data(allocator::malloc(out.nbytes()));
  // fused_rotation: q (in its dtype) is rotated into a float32 temporary and
  // the kernel's float32 output rotated back into out (the queries' dtype).
  std::optional<array> q_rot;
  std::optional<array> o_rot;
  if (fused_rotation_) {
    auto temporary = [&](const Shape& shape) {
      array t(shape, float32, nullptr, {});
      t.set_data(allocator::malloc(t.nbytes()));
      encoder.add_temporary(t);
      return t;
    };
    q_rot = temporary(q.shape());
    o_rot = temporary(out.shape());
  }
  // The sinks' values, (B or 1, Hkv, 1, Dv): in the queries' domain (rotated
  // here with fused_rotation, float32 already rotated otherwise).
  std::optional<array> sv_rot;
  if (sv) {
    if (fused_rotation_) {
      sv_rot = array(sv->shape(), float32, nullptr, {});
      sv_rot->set_data(allocator::malloc(sv_rot->nbytes()));
      encoder.add_temporary(*sv_rot);
    }
  }

  for (auto& a : inputs) {
    encoder.set_input_array(a);
  }
  encoder.set_output_array(out);

  AttnArgs args{};
  args.B = q.shape(0);
  args.Hq = q.shape(1);
  args.qL = q.shape(2);
  args.Dk = q.shape(3);
  args.Hkv = k.shape(1);
  args.kL = k.shape(2);
  args.Dv = out.shape(3);
  args.scale = scale_;
  args.causal = do_causal_;
  for (int i = 0; i < 3; ++i) {
    args.k_str[i] = k.strides()[i];
    args.v_str[i] = v.strides()[i];
    args.ks_str[i] = ks.strides()[i];
    args.vs_str[i] = vs.strides()[i];
  }
  if (ks.dtype() != vs.dtype()) {
    throw std::invalid_argument(
        "[quantized_scaled_dot_product_attention] key and value scales "
        "must have the same dtype.");
  }
  args.scale_type = ks.dtype();
  if (mask) {
    args.mask_is_bool = mask->dtype() == bool_;
    for (int i = 0; i < 4; ++i) {
      args.m_str[i] = mask->strides()[i];
    }
  }
  // The key bias makes the sink logits per row (computed in the task).
  std::optional<array> row_sinks;
  if (key_shift || first_key) {
    row_sinks = array({args.B, args.Hq, args.qL}, float32, nullptr, {});
    row_sinks->set_data(allocator::malloc(row_sinks->nbytes()));
    encoder.add_temporary(*row_sinks);
    args.sk_str[0] = int64_t(args.Hq) * args.qL;
    args.sk_str[1] = args.qL;
    args.sk_str[2] = 1;
  } else {
    args.sk_str[0] = 0;
    args.sk_str[1] = 1;
    args.sk_str[2] = 0;
  }
  if (sv) {
    args.sv_b_str = sv->shape(0) == 1 ? 0 : int64_t(args.Hkv) * args.Dv;
  }
  // The key shift that follows the position: per-row coefficients.
  std::optional<array> wave_coef;
  if (waves) {
    args.P = freqs->shape(2);
    args.wf_b_str = freqs->shape(0) == 1 ? 0 : int64_t(args.Hkv) * args.P;
    wave_coef =
        array({args.B, args.Hq, args.qL, 2 * args.P}, float32, nullptr, {});
    wave_coef->set_data(allocator::malloc(wave_coef->nbytes()));
    encoder.add_temporary(*wave_coef);
  }
  int kbits = turbo::bits(key_mode_);
  int vbits = turbo::bits(value_mode_);
  encoder.dispatch(
      [args,
       q = array::unsafe_weak_copy(q),
       k = array::unsafe_weak_copy(k),
       ks = array::unsafe_weak_copy(ks),
       v = array::unsafe_weak_copy(v),
       vs = array::unsafe_weak_copy(vs),
       mask = mask ? std::optional<array>(array::unsafe_weak_copy(*mask))
                   : std::nullopt,
       sinks = sinks ? std::optional<array>(array::unsafe_weak_copy(*sinks))
                     : std::nullopt,
       out = array::unsafe_weak_copy(out),
       q_rot = q_rot ? std::optional<array>(array::unsafe_weak_copy(*q_rot))
                     : std::nullopt,
       o_rot = o_rot ? std::optional<array>(array::unsafe_weak_copy(*o_rot))
                     : std::nullopt,
       sv = sv ? std::optional<array>(array::unsafe_weak_copy(*sv))
               : std::nullopt,
       key_shift = key_shift
           ? std::optional<array>(array::unsafe_weak_copy(*key_shift))
           : std::nullopt,
       first_key = first_key
           ? std::optional<array>(array::unsafe_weak_copy(*first_key))
           : std::nullopt,
       row_sinks = row_sinks
           ? std::optional<array>(array::unsafe_weak_copy(*row_sinks))
           : std::nullopt,
       sv_rot = sv_rot ? std::optional<array>(array::unsafe_weak_copy(*sv_rot))
                       : std::nullopt,
       waves = waves ? std::optional<array>(array::unsafe_weak_copy(*waves))
                     : std::nullopt,
       freqs = freqs ? std::optional<array>(array::unsafe_weak_copy(*freqs))
                     : std::nullopt,
       wave_coef = wave_coef
           ? std::optional<array>(array::unsafe_weak_copy(*wave_coef))
           : std::nullopt,
       kbits,
       vbits]() mutable {
        if (q_rot) {
          dispatch_float(q.dtype(), [&](auto t) {
            using T = decltype(t);
            rotate_rows(
                q.data<T>(),
                q_rot->data<float>(),
                q.size() / args.Dk,
                args.Dk,
                false);
          });
        }
        args.q = (q_rot ? *q_rot : q).data<float>();
        args.k = k.data<uint32_t>();
        args.v = v.data<uint32_t>();
        args.ks = ks.data<void>();
        args.vs = vs.data<void>();
        args.mask = mask ? mask->data<void>() : nullptr;
        args.sinks = sinks ? sinks->data<float>() : nullptr;
        if (row_sinks) {
          dispatch_float(q.dtype(), [&](auto t) {
            using T = decltype(t);
            auto b_str = [&](const std::optional<array>& x) {
              return x && x->shape(0) != 1 ? int64_t(args.Hkv) * args.Dk : 0;
            };
            row_sink_logits<T>(
                q.data<T>(),
                args.sinks,
                key_shift ? key_shift->data<T>() : nullptr,
                first_key ? first_key->data<T>() : nullptr,
                b_str(key_shift),
                b_str(first_key),
                args,
                row_sinks->data<float>());
          });
          args.sinks = row_sinks->data<float>();
        }
        if (sv_rot) {
          dispatch_float(sv->dtype(), [&](auto t) {
            using T = decltype(t);
            rotate_rows(
                sv->data<T>(),
                sv_rot->data<float>(),
                sv->size() / args.Dv,
                args.Dv,
                false);
          });
        }
        args.sink_values =
            sv ? (sv_rot ? *sv_rot : *sv).data<float>() : nullptr;
        if (wave_coef) {
          dispatch_float(q.dtype(), [&](auto t) {
            using T = decltype(t);
            key_wave_coefficients<T>(
                q.data<T>(),
                waves->data<float>(),
                waves->shape(0) == 1 ? 0 : int64_t(args.Hkv) * 2 * args.P * args.Dk,
                args,
                wave_coef->data<float>());
          });
          args.wave_coef = wave_coef->data<float>();
          args.wave_freqs = freqs->data<uint32_t>();
        }
        args.out = (o_rot ? *o_rot : out).data<float>();
        dispatch_float(args.scale_type, [&](auto t) {
          attention_dispatch_bits<decltype(t)>(args, kbits, vbits);
        });
        if (o_rot) {
          dispatch_float(out.dtype(), [&](auto t) {
            using T = decltype(t);
            rotate_rows(
                o_rot->data<float>(),
                out.data<T>(),
                out.size() / args.Dv,
                args.Dv,
                true);
          });
        }
      });
}

void QuantizedKVDequantize::eval_cpu(
    const std::vector<array>& inputs,
    std::vector<array>& outputs) {
  turbo::dequantize_kv_cpu(
      inputs,
      outputs[0],
      mode_,
      {has_first_, has_shift_, has_waves_},
      stream());
}

} // namespace fast

} // namespace mlx::core
