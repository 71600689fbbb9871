// Copyright © 2026 TurboQuant-MLX contributors.
//
// Decode attention (few queries) on the SIMT cores: AttnParams, the mask /
// sink helpers shared by every attention kernel, the decode preparation's
// per-row helpers (prep_bias_dot, prep_wave_coefs: turbo_attention_prep and
// the tensor-core kernel's prologue) and turbo_sdpa_vector.

#pragma once

#include "mlx/backend/cuda/device/turboquant_format.cuh"

namespace mlx::core::cu::turbo {

// ---------------------------------------------------------------------------
// Attention
// ---------------------------------------------------------------------------

enum MaskKind : int { kMaskNone = 0, kMaskBool = 1, kMaskFloat = 2 };

struct AttnParams {
  int B;
  int Hq;
  int Hkv;
  int qL;
  int kL;
  int gqa; // Hq / Hkv
  float scale_log2; // scale * log2(e)
  int causal; // bottom-right aligned causal mask
  int causal_offset; // kL - qL
  int mask_kind;
  int has_sinks;
  int num_splits; // vector kernel: > 1 writes partials
  int keys_per_split;
  int row_groups; // vector kernel: ceil(gqa * qL / NQ)
  // Strides in elements for dims (B, H, L); the last dim is contiguous.
  int64_t q_str[3];
  int64_t k_str[3];
  int64_t ks_str[3];
  int64_t v_str[3];
  int64_t vs_str[3];
  int64_t o_str[3];
  int64_t m_str[4]; // (B, Hq, qL, kL), 0 for broadcast
  // Sink logits (natural log): per head {0, 1, 0}, or per row (B, Hq, qL)
  // {Hq qL, qL, 1} with the key bias of the exact transforms folded in.
  int64_t sk_str[3];
  // Decode: the sinks' values, float32 (B or 1, Hkv, D) in the rotated
  // domain, or nullptr (a sink of value 0). sv_b_str is 0 when shared.
  const float* sink_values;
  int64_t sv_b_str;
  // The moving key shift (docs/format.md section 7), waves = P planes (0:
  // none): per query row (B, Hq, qL) the 2P log2-domain coefficients
  // scale log2(e) q . waves[i] (cos planes, then sin planes; written by
  // turbo_attention_prep), and the frequencies (B or 1, Hkv, P) in turns of
  // 2^-24 per key; wf_b_str is 0 when shared by the batch.
  int waves;
  const float* wave_coef;
  const uint32_t* wave_freqs;
  int64_t wf_b_str;
  // The decode preparation inside the tensor-core kernel (plan_decode's
  // prep_in_kernel), instead of turbo_attention_prep: q_in holds the queries
  // as given, (B, Hq, qL) rows of D in the kernel's T with strides q_str,
  // which each block rotates in its prologue; the kernel's q is then unused.
  // With row_bias, the sink logit of each row is sinks[h] (0 without sinks)
  // - scale q . (key_shift - first_key) (rows of D in T, (B or 1, Hkv), either
  // may be nullptr); with waves > 0, the moving key shift's coefficients come
  // from q and wave_rows (B or 1, Hkv, 2P, D) float32 instead of wave_coef.
  const void* q_in;
  int row_bias;
  const void* key_shift;
  const void* first_key;
  int64_t ksh_b_str; // 0 when shared by the batch
  int64_t fk_b_str;
  const float* wave_rows;
  int64_t wr_b_str;
  float scale;
  // The sinks' values as given, (B or 1, Hkv, D) in T (sv_b_str), rotated by
  // split 0's blocks; nullptr: none, or p.sink_values (rotated float32).
  const void* sv_in;
};

constexpr int kMaxKeyWaves = 32;

// Row r's coefficient i of the moving key shift, as the kernels index them.
__device__ inline const float*
wave_coef_row(const AttnParams& p, int b, int h, int qi) {
  return p.wave_coef + ((int64_t(b) * p.Hq + h) * p.qL + qi) * 2 * p.waves;
}

// The decode preparation of one query row, shared by turbo_attention_prep
// and the tensor-core kernel's prologue: lane l holds the row's coordinates
// l, l + 32, ... as given (qv, 0 past D).
template <int D>
constexpr int kPrepPerLane = (D + 31) / 32;

// q . (key_shift - first_key), either row may be nullptr: lane l adds its
// coordinates in turn, then a butterfly; every lane gets the sum.
template <int D, typename T>
__device__ inline float prep_bias_dot(
    const float (&qv)[kPrepPerLane<D>],
    const T* mu,
    const T* k0,
    int lane) {
  float dot = 0.0f;
#pragma unroll
  for (int j = 0; j < kPrepPerLane<D>; j++) {
    const int k = lane + 32 * j;
    if (k < D) {
      float bias =
          (mu ? to_float(mu[k]) : 0.0f) - (k0 ? to_float(k0[k]) : 0.0f);
      dot += qv[j] * bias;
    }
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    dot += __shfl_xor_sync(0xffffffff, dot, off);
  }
  return dot;
}

// R x into buf (D floats of shared memory) for the row x held as qv is:
// the signs applied as it is stored, then the warp rotation.
template <int D>
__device__ inline void
prep_rotate_row(float* buf, const float (&x)[kPrepPerLane<D>], int lane) {
#pragma unroll
  for (int j = 0; j < kPrepPerLane<D>; j++) {
    const int k = lane + 32 * j;
    if (k < D) {
      buf[k] = x[j] * rot_sign(1, k);
    }
  }
  __syncwarp();
  warp_rotate_presigned<D>(buf, lane);
}

// Moving-shift coefficients computed together.
constexpr int kPrepWaves = 8;

// The moving key shift's n_coef coefficients scale_log2 q . w[i] (w: n_coef
// rows of D, float32); store(i, c) is called by lane 0. kPrepWaves at a
// time, their loads issued together (one at a time, each waited on its loads
// and butterfly). Each sum keeps its order: lane l adds coordinates l,
// l + 32, ... in turn, then the butterfly.
template <int D, typename F>
__device__ inline void prep_wave_coefs(
    const float (&qv)[kPrepPerLane<D>],
    const float* w,
    int n_coef,
    float scale_log2,
    int lane,
    F&& store) {
  for (int i0 = 0; i0 < n_coef; i0 += kPrepWaves) {
    float c[kPrepWaves];
#pragma unroll
    for (int u = 0; u < kPrepWaves; u++) {
      c[u] = 0.0f;
      if (i0 + u < n_coef) {
#pragma unroll
        for (int j = 0; j < kPrepPerLane<D>; j++) {
          const int k = lane + 32 * j;
          if (k < D) {
            c[u] += qv[j] * w[(i0 + u) * D + k];
          }
        }
      }
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
#pragma unroll
      for (int u = 0; u < kPrepWaves; u++) {
        c[u] += __shfl_xor_sync(0xffffffff, c[u], off);
      }
    }
    if (lane == 0) {
#pragma unroll
      for (int u = 0; u < kPrepWaves; u++) {
        if (i0 + u < n_coef) {
          store(i0 + u, scale_log2 * c[u]);
        }
      }
    }
  }
}

// The sink logit of query row (b, h, qi).
__device__ inline float
sink_logit(const AttnParams& p, const float* sinks, int b, int h, int qi) {
  return sinks[b * p.sk_str[0] + h * p.sk_str[1] + qi * p.sk_str[2]];
}

// The sink's share of a decode row's output before normalization, in the
// merged frame of maximum mb (log2 domain): its weight times its value, for
// split 0 (which holds the sink), 0 without a sink value.
template <int D>
__device__ inline float sink_value_term(
    const AttnParams& p,
    const float* sinks,
    int split,
    int b,
    int h,
    int qi,
    int d,
    float mb) {
  if (p.sink_values == nullptr || split != 0) {
    return 0.0f;
  }
  const float* sv = p.sink_values + b * p.sv_b_str + int64_t(h / p.gqa) * D;
  return exp2f(kLog2e * sink_logit(p, sinks, b, h, qi) - mb) * sv[d];
}

// Applies mask / causality to a log2-domain score.
__device__ inline float apply_mask(
    float s,
    const AttnParams& p,
    const void* mask,
    int b,
    int h,
    int qi,
    int j) {
  if (p.causal && j > qi + p.causal_offset) {
    return -FLT_MAX;
  }
  if (p.mask_kind == kMaskBool) {
    const bool* m = static_cast<const bool*>(mask);
    if (!m[b * p.m_str[0] + h * p.m_str[1] + qi * p.m_str[2] +
           j * p.m_str[3]]) {
      return -FLT_MAX;
    }
  } else if (p.mask_kind == kMaskFloat) {
    const float* m = static_cast<const float*>(mask);
    s += kLog2e *
        m[b * p.m_str[0] + h * p.m_str[1] + qi * p.m_str[2] + j * p.m_str[3]];
  }
  return s;
}

// Online softmax step helpers; m may be -inf only while nothing (or only
// -inf scores from a float mask) was seen.
__device__ inline float safe_max_ref(float m) {
  return m == -INFINITY ? 0.0f : m;
}

constexpr int kVecThreads = 128;

__host__ __device__ constexpr int pow2_ceil(int n) {
  int p = 1;
  while (p < n) {
    p *= 2;
  }
  return p;
}

// Coordinates per thread in the vector kernel for NQ rows per block: fewer
// threads per key (fewer shuffles, less redundant softmax work) where the
// registers allow (q and the accumulator take 2 * CPT * NQ registers).
__host__ __device__ constexpr int vec_cpt(int d, int nq) {
  return nq >= 8 ? 8 : (nq >= 4 ? 16 : (d % 32 == 0 ? 32 : 16));
}

// Spreads the eight 2-bit fields of x (bits 0..15) to bits 4i..4i+1.
__device__ inline uint32_t spread2to4(uint32_t x) {
  x &= 0xFFFFu;
  x = (x | (x << 8)) & 0x00FF00FFu;
  x = (x | (x << 4)) & 0x0F0F0F0Fu;
  x = (x | (x << 2)) & 0x33333333u;
  return x;
}

// Spreads the eight bits of x (bits 0..7) to bits 4i.
__device__ inline uint32_t spread1to4(uint32_t x) {
  x &= 0xFFu;
  x = (x | (x << 12)) & 0x000F000Fu;
  x = (x | (x << 6)) & 0x03030303u;
  x = (x | (x << 3)) & 0x11111111u;
  return x;
}

// The codes of the CPT consecutive coordinates [CPT t, CPT t + CPT) of one
// packed vector, held by thread t as nibbles: code c is bits 4(c % 8)..+3 of
// nib[c / 8] (turbo3 planes are merged into nibbles once after the load, so
// extracting a code costs the same for both modes).
template <int BITS, int D, int CPT>
struct SlotCodes {
  static constexpr int NW = CPT / 8;
  uint32_t nib[NW];

  __device__ inline void load(const uint32_t* vec, int t) {
    if constexpr (BITS == 4) {
#pragma unroll
      for (int k = 0; k < NW; k++) {
        nib[k] = __ldg(vec + NW * t + k);
      }
    } else {
      constexpr int NLO = CPT >= 16 ? CPT / 16 : 1;
      constexpr int NHI = CPT >= 32 ? CPT / 32 : 1;
      uint32_t lo[NLO];
      uint32_t hi[NHI];
      if constexpr (CPT >= 16) {
#pragma unroll
        for (int k = 0; k < NLO; k++) {
          lo[k] = __ldg(vec + NLO * t + k);
        }
      } else { // CPT == 8: half a word
        lo[0] = __ldg(vec + (t >> 1)) >> (16 * (t & 1));
      }
      if constexpr (CPT >= 32) {
#pragma unroll
        for (int k = 0; k < NHI; k++) {
          hi[k] = __ldg(vec + D / 16 + NHI * t + k);
        }
      } else {
        constexpr int per = 32 / CPT; // threads sharing a high-plane word
        hi[0] = __ldg(vec + D / 16 + t / per) >> (CPT * (t % per));
      }
#pragma unroll
      for (int k = 0; k < NW; k++) {
        uint32_t l16 = lo[k >> 1] >> (16 * (k & 1));
        uint32_t h8 = hi[k >> 2] >> (8 * (k & 3));
        nib[k] = spread2to4(l16) | (spread1to4(h8) << 2);
      }
    }
  }
  __device__ inline void clear() {
#pragma unroll
    for (int k = 0; k < NW; k++) {
      nib[k] = 0;
    }
  }
  // Code of coordinate c (compile-time after unrolling) of the slot.
  __device__ inline int code(int c) const {
    return (nib[c >> 3] >> (4 * (c & 7))) & 15u;
  }
};

// Vector (decode) attention. Grid: (num_splits, Hkv * row_groups, B).
// Block: 128 threads = NSG subgroups of TPK threads; thread t of a subgroup
// owns coordinates [CPT t, CPT t + CPT); subgroup g processes the keys
// j = start + g, start + g + NSG, ... of its split for all NQ rows, U keys at
// a time, the codes of the next U keys loaded while the current ones are
// used. Rows r of a KV head enumerate (query head within group, position).
// MASKED = false skips the mask / causal logic (no mask, or qL = 1 causal).
template <int KB, int VB, int D, int NQ, int CPT, bool MASKED, typename T>
__global__ void __launch_bounds__(kVecThreads) turbo_sdpa_vector(
    const float* __restrict__ q,
    const uint32_t* __restrict__ kc,
    const T* __restrict__ ks,
    const uint32_t* __restrict__ vc,
    const T* __restrict__ vs,
    const void* __restrict__ mask,
    const float* __restrict__ sinks,
    float* __restrict__ out,
    float* __restrict__ part_o, // (splits, B*Hq*qL, D)
    float* __restrict__ part_ml, // (splits, B*Hq*qL, 2)
    const AttnParams p) {
  constexpr int NT = D / CPT; // active threads per key
  static_assert(NT * CPT == D, "CPT must divide D");
  constexpr int TPK = pow2_ceil(NT);
  constexpr int NSG = kVecThreads / TPK;
  constexpr int U = NQ >= 8 ? 2 : 4; // keys in flight per subgroup

  __shared__ float klut[16];
  __shared__ float vlut[16];
  __shared__ float s_m[NSG][NQ];
  __shared__ float s_l[NSG][NQ];
  __shared__ float s_o[NSG][NQ][D];
  __shared__ float s_wc[NQ][2 * kMaxKeyWaves]; // moving key shift
  __shared__ uint32_t s_wf[kMaxKeyWaves];

  const int tid = threadIdx.x;
  const int sg = tid / TPK;
  const int t = tid % TPK;
  const bool active = t < NT;
  const int split = blockIdx.x;
  const int hk = blockIdx.y / p.row_groups;
  const int rg = blockIdx.y % p.row_groups;
  const int b = blockIdx.z;
  const int nrows = p.gqa * p.qL;

  if (tid < 16) {
    klut[tid] = centroid(KB, tid & ((1 << KB) - 1));
    vlut[tid] = centroid(VB, tid & ((1 << VB) - 1));
  }

  // Query rows of this block.
  int row_h[NQ];
  int row_q[NQ];
  bool row_ok[NQ];
  float qr[NQ][CPT];
#pragma unroll
  for (int r = 0; r < NQ; r++) {
    int row = rg * NQ + r;
    row_ok[r] = row < nrows;
    int rr = row_ok[r] ? row : 0;
    row_h[r] = hk * p.gqa + rr / p.qL;
    row_q[r] = rr % p.qL;
    const float* qp = q + b * p.q_str[0] + row_h[r] * p.q_str[1] +
        row_q[r] * p.q_str[2] + CPT * (active ? t : 0);
#pragma unroll
    for (int c = 0; c < CPT; c++) {
      qr[r][c] = (active && row_ok[r]) ? qp[c] * p.scale_log2 : 0.0f;
    }
  }

  float acc[NQ][CPT];
  float m[NQ];
  float l[NQ];
#pragma unroll
  for (int r = 0; r < NQ; r++) {
    m[r] = -INFINITY;
    l[r] = 0.0f;
#pragma unroll
    for (int c = 0; c < CPT; c++) {
      acc[r][c] = 0.0f;
    }
    // The sink joins the softmax once per row: in split 0, subgroup 0.
    if (p.has_sinks && split == 0 && sg == 0 && row_ok[r]) {
      m[r] = kLog2e * sink_logit(p, sinks, b, row_h[r], row_q[r]);
      l[r] = 1.0f;
    }
  }
  // The moving key shift: thread t of a subgroup adds planes t, t + NT, ...
  // of each key's bias to its share of the score.
  const int P = p.waves;
  for (int e = tid; e < NQ * 2 * P; e += kVecThreads) {
    const int r = e / (2 * P);
    const int row = rg * NQ + r;
    s_wc[r][e % (2 * P)] = row < nrows
        ? wave_coef_row(p, b, hk * p.gqa + row / p.qL, row % p.qL)[e % (2 * P)]
        : 0.0f;
  }
  if (tid < P) {
    s_wf[tid] = p.wave_freqs[b * p.wf_b_str + hk * P + tid];
  }
  __syncthreads();

  const int k_begin = split * p.keys_per_split;
  const int k_end = min(p.kL, k_begin + p.keys_per_split);

  const uint32_t* kbase = kc + b * p.k_str[0] + hk * p.k_str[1];
  const uint32_t* vbase = vc + b * p.v_str[0] + hk * p.v_str[1];
  const T* ksb = ks + b * p.ks_str[0] + hk * p.ks_str[1];
  const T* vsb = vs + b * p.vs_str[0] + hk * p.vs_str[1];

  SlotCodes<KB, D, CPT> kn[U];
  SlotCodes<VB, D, CPT> vn[U];
  float ksn[U], vsn[U];
  auto load_batch = [&](int jb) {
#pragma unroll
    for (int u = 0; u < U; u++) {
      int j = jb + sg + u * NSG;
      int jj = j < k_end ? j : k_begin;
      if (active) {
        kn[u].load(kbase + jj * p.k_str[2], t);
        vn[u].load(vbase + jj * p.v_str[2], t);
      } else {
        kn[u].clear();
        vn[u].clear();
      }
      ksn[u] = to_float(ksb[jj * p.ks_str[2]]);
      vsn[u] = to_float(vsb[jj * p.vs_str[2]]);
    }
  };
  if (k_begin < k_end) {
    load_batch(k_begin);
  }

  // The loop bound is warp-uniform (the shuffles below need every lane).
  for (int jb = k_begin; jb < k_end; jb += NSG * U) {
    SlotCodes<KB, D, CPT> kcur[U];
    SlotCodes<VB, D, CPT> vcur[U];
    float ksc[U], vsc[U];
#pragma unroll
    for (int u = 0; u < U; u++) {
      kcur[u] = kn[u];
      vcur[u] = vn[u];
      ksc[u] = ksn[u];
      vsc[u] = vsn[u];
    }
    if (jb + NSG * U < k_end) {
      load_batch(jb + NSG * U);
    }
    // Scores.
    float s[U][NQ];
#pragma unroll
    for (int u = 0; u < U; u++) {
      float d[NQ];
#pragma unroll
      for (int r = 0; r < NQ; r++) {
        d[r] = 0.0f;
      }
#pragma unroll
      for (int c = 0; c < CPT; c++) {
        float kv = klut[kcur[u].code(c)];
#pragma unroll
        for (int r = 0; r < NQ; r++) {
          d[r] += qr[r][c] * kv;
        }
      }
      // The key scale is uniform over the subgroup: scaling each share
      // before the sum lets the shift's bias join the same reduction.
#pragma unroll
      for (int r = 0; r < NQ; r++) {
        d[r] *= ksc[u];
      }
      if (active) {
        const int j = jb + sg + u * NSG;
        for (int i = t; i < P; i += NT) {
          float sn, cs;
          key_wave_sincos(s_wf[i], j, sn, cs);
#pragma unroll
          for (int r = 0; r < NQ; r++) {
            d[r] += cs * s_wc[r][i] + sn * s_wc[r][P + i];
          }
        }
      }
#pragma unroll
      for (int r = 0; r < NQ; r++) {
#pragma unroll
        for (int off = TPK / 2; off > 0; off >>= 1) {
          d[r] += __shfl_xor_sync(0xffffffffu, d[r], off);
        }
        s[u][r] = d[r];
      }
    }
    // Online softmax; s becomes p * value scale.
#pragma unroll
    for (int r = 0; r < NQ; r++) {
      float mnew = m[r];
#pragma unroll
      for (int u = 0; u < U; u++) {
        int j = jb + sg + u * NSG;
        float sc = s[u][r];
        if constexpr (MASKED) {
          // Only keys of this split: past kL the mask must not be read.
          if (j < k_end) {
            sc = apply_mask(sc, p, mask, b, row_h[r], row_q[r], j);
          }
        }
        sc = j < k_end ? sc : -INFINITY;
        s[u][r] = sc;
        mnew = fmaxf(mnew, sc);
      }
      float mref = safe_max_ref(mnew);
      if (mnew != m[r]) { // uniform in the subgroup; rare once warm
        float alpha = exp2f(m[r] - mref);
        l[r] *= alpha;
#pragma unroll
        for (int c = 0; c < CPT; c++) {
          acc[r][c] *= alpha;
        }
        m[r] = mnew;
      }
#pragma unroll
      for (int u = 0; u < U; u++) {
        float pu = exp2f(s[u][r] - mref);
        l[r] += pu;
        s[u][r] = pu * vsc[u];
      }
    }
    // Values.
#pragma unroll
    for (int u = 0; u < U; u++) {
#pragma unroll
      for (int c = 0; c < CPT; c++) {
        float vv = vlut[vcur[u].code(c)];
#pragma unroll
        for (int r = 0; r < NQ; r++) {
          acc[r][c] += s[u][r] * vv;
        }
      }
    }
  }

  // Merge the subgroups of the block.
  if (t == 0) {
#pragma unroll
    for (int r = 0; r < NQ; r++) {
      s_m[sg][r] = m[r];
    }
  }
  __syncthreads();
#pragma unroll
  for (int r = 0; r < NQ; r++) {
    float mb = -INFINITY;
#pragma unroll
    for (int g = 0; g < NSG; g++) {
      mb = fmaxf(mb, s_m[g][r]);
    }
    float f = exp2f(m[r] - safe_max_ref(mb));
    if (t == 0) {
      s_l[sg][r] = l[r] * f;
    }
    if (active) {
#pragma unroll
      for (int c = 0; c < CPT; c++) {
        s_o[sg][r][CPT * t + c] = acc[r][c] * f;
      }
    }
  }
  __syncthreads();

  for (int e = tid; e < NQ * D; e += kVecThreads) {
    int r = e / D;
    int d = e % D;
    int row = rg * NQ + r;
    if (row >= nrows) {
      continue;
    }
    float o = 0.0f;
    float lsum = 0.0f;
    float mb = -INFINITY;
#pragma unroll
    for (int g = 0; g < NSG; g++) {
      o += s_o[g][r][d];
      lsum += s_l[g][r];
      mb = fmaxf(mb, s_m[g][r]);
    }
    int h = hk * p.gqa + row / p.qL;
    int qi = row % p.qL;
    o += sink_value_term<D>(p, sinks, split, b, h, qi, d, mb);
    if (p.num_splits == 1) {
      out[b * p.o_str[0] + h * p.o_str[1] + qi * p.o_str[2] + d] = o / lsum;
    } else {
      int64_t grow = (int64_t(b) * p.Hq + h) * p.qL + qi;
      int64_t prow = int64_t(split) * p.B * p.Hq * p.qL + grow;
      part_o[prow * D + d] = o;
      if (d == 0) {
        part_ml[2 * prow] = mb;
        part_ml[2 * prow + 1] = lsum;
      }
    }
  }
}

} // namespace mlx::core::cu::turbo
