// Execute the TurboQuant attention kernels (sdpa_vector_turbo,
// sdpa_vector_turbo_2pass_1/_2, sdpa_prefill_turbo) on the CPU through mshim and compare them
// with a float64 reference on the dequantized inputs (docs/format.md
// section 6). Every case runs under the 4 lane schedules and must be
// bit-identical across them. Launch geometry, buffer roles, kernel names and
// function constants come from turbo_bindings.h, as in the host dispatch.
// Fused cases run the primitive's fused_rotation sequence: turbo_attention_prep
// on the queries as given, a decode kernel, turbo_rotate_out; the reference
// is then computed in the original domain. The preparation and the output
// rotation are also checked alone for every instantiation (rotation_cases).
//
// Build: tests/metal/build_exec.sh.  Usage: turbo_attn_exec [all|fwd|rev|rand|lockstep] [quick|FILTER]
#include "mlx/backend/metal/kernels/turbo_bindings.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <metal_stdlib>
#include "mlx/backend/metal/kernels/utils.h"
#include "mlx/backend/metal/kernels/sdpa_prefill_turbo.h"
#include "mshim/end_kernels.h"

#include "turbo_reference.h"

using mshim::cdev;
using mshim::cst;
using mshim::dev;
using mshim::u3;
namespace rt = mshim::rt;
namespace tb = turbo_bindings;

static int g_failures = 0, g_cases = 0;
static bool g_all_orders = true;
static rt::Order g_order = rt::Order::Forward;

enum MaskKind { M_NONE = 0, M_CAUSAL = 1, M_BOOL = 2, M_FLOAT = 3, M_CAUSAL_BOOL = 4 };
static const char* mask_name[] = {"none", "causal", "bool", "float", "causal+bool"};
static const char* stype_name[] = {"float32", "float16", "bfloat16"};

struct Case {
  int kb, vb, st, Dk, Dv;
  int B, Hq, Hkv, qL, kL;
  int mask;
  bool sinks;
  int pass;        // 1: 1-pass, 2: 2-pass, 3: prefill
  int blocks;      // 2-pass
  int cap_extra;   // extra KV capacity (non-contiguous seq slice)
  bool seq_major;  // K/V stored (B, L, H, W): batch/head strides not mergeable
  bool mask_bcast; // mask (1, 1, qL, kL) with zero batch/head strides
  bool dead_row;   // one query row with every key masked (bool masks)
  bool sink_values = false; // the sinks carry a value (B, Hkv, Dv)
  int waves = 0; // the moving key shift's planes P (decode kernels)
  // fused_rotation (decode kernels): queries as given in the scale type S,
  // turbo_attention_prep / turbo_rotate_out around the kernel; the key bias
  // of a key shift and of a first key (per-row sink logits), the per-kv-head
  // inputs shared by the batch (batch axis 1) or not.
  bool fused = false;
  bool key_shift = false;
  bool first_key = false;
  bool shared = false;
};

template <typename S>
static S to_s(float x) { return S(x); }

struct Buffers {
  std::vector<float> q, out, partials, sums, maxs, fmask, sinks, sv, wcoef;
  std::vector<uint32_t> k, v, wfreq;
  std::vector<unsigned char> ks, vs; // raw scale bytes
  std::vector<bool> dummy;
  bool* bmask = nullptr;
  size_t n_bmask = 0;
  TurboAttnParams p;
  std::vector<double> ref;
  // fused: the inputs as given (scale type S, raw bytes; waves float32), the
  // per-row sink logits the preparation writes, the output in S and as float
  std::vector<unsigned char> q_in, sv_in, ksh, fk, out_t;
  std::vector<float> waves, row_sinks, fout;
  TurboPrepParams pp;
};

// float64 rotation of one row (docs/format.md section 1): R x, or R^T x.
static void ref_rotate(double* x, int D, bool inverse) {
  const int P = ref::pow2_le(D);
  const double sp = std::sqrt(double(P));
  auto stage = [&](int off) {
    ref::fwht(x + off, P);
    for (int i = off; i < off + P; i++) x[i] /= sp;
  };
  if (!inverse) {
    for (int i = 0; i < D; i++) x[i] *= ref::sign(1, i);
    stage(0);
    for (int i = 0; i < D; i++) x[i] *= ref::sign(2, i);
    stage(D - P);
  } else {
    stage(D - P);
    for (int i = 0; i < D; i++) x[i] *= ref::sign(2, i);
    stage(0);
    for (int i = 0; i < D; i++) x[i] *= ref::sign(1, i);
  }
}

template <typename S>
static void put_s(std::vector<unsigned char>& buf, size_t i, float x) {
  S a = S(x);
  std::memcpy(&buf[i * sizeof(S)], &a, sizeof(S));
}
template <typename S>
static double get_s(const std::vector<unsigned char>& buf, size_t i) {
  S a;
  std::memcpy(&a, &buf[i * sizeof(S)], sizeof(S));
  return double(float(a));
}

// ---------------------------------------------------------------- launch
static rt::Dim3 D3(const unsigned* a) { return rt::Dim3{a[0], a[1], a[2]}; }

// fused_rotation's preparation: b.q (rotated), b.sv, b.row_sinks, b.wcoef
// from the inputs as given, with the host's function constants.
template <typename S, int D, int V>
static void launch_prep(const Case& c, Buffers& b, const rt::LaunchOptions& opt) {
  const bool bias = c.key_shift || c.first_key;
  rt::clear_function_constants();
  mshim::set_fc(TURBO_FC_HAS_SINKS, c.sinks);
  mshim::set_fc(TURBO_FC_SINK_VALUES, c.sink_values);
  mshim::set_fc(TURBO_FC_KEY_WAVES, c.waves > 0);
  mshim::set_fc(TURBO_FC_ROW_SINKS, bias);
  mshim::set_fc(TURBO_FC_KEY_SHIFT, c.key_shift);
  mshim::set_fc(TURBO_FC_FIRST_KEY, c.first_key);
  auto d = tb::row_dims(b.pp.n_q + b.pp.n_sv);
  auto body = [&](const rt::ThreadCtx& t) {
    turbo_attention_prep<S, D, V>(
        cdev((const S*)b.q_in.data()), dev(b.q.data()), cst(b.pp),
        cdev(c.sink_values ? (const S*)b.sv_in.data() : nullptr),
        dev(c.sink_values ? b.sv.data() : nullptr), cdev(c.sinks ? b.sinks.data() : nullptr),
        cdev(c.key_shift ? (const S*)b.ksh.data() : nullptr),
        cdev(c.first_key ? (const S*)b.fk.data() : nullptr),
        dev(bias ? b.row_sinks.data() : nullptr), cdev(c.waves ? b.waves.data() : nullptr),
        dev(c.waves ? b.wcoef.data() : nullptr), t.threadgroup_position_in_grid.x,
        t.simdgroup_index_in_threadgroup, t.thread_index_in_simdgroup);
  };
  rt::dispatch_threadgroups(D3(d.grid), D3(d.group), body, opt);
}

// fused_rotation's output rotation: rows of V float32 -> R^T x in T.
template <typename T, int V>
static void launch_rotate_out(const float* x, T* out, int64_t nrows, const rt::LaunchOptions& opt) {
  auto d = tb::row_dims(nrows);
  auto body = [&](const rt::ThreadCtx& t) {
    turbo_rotate_out<T, V>(cdev(x), dev(out), cst(nrows), t.threadgroup_position_in_grid.x,
                           t.simdgroup_index_in_threadgroup, t.thread_index_in_simdgroup);
  };
  rt::dispatch_threadgroups(D3(d.grid), D3(d.group), body, opt);
}

template <typename S, int D, int V, int KB, int VB>
static void launch(const Case& c, Buffers& b, const rt::LaunchOptions& opt) {
  if (c.fused) launch_prep<S, D, V>(c, b, opt);
  // The kernel's sinks: per head, or per query row from the preparation
  // (then also without sinks of the caller: a first key's logit 0 - bias).
  const bool row_sinks = c.fused && (c.key_shift || c.first_key);
  const bool sinks_on = c.sinks || row_sinks;
  const bool has_mask = c.mask == M_BOOL || c.mask == M_FLOAT || c.mask == M_CAUSAL_BOOL;
  rt::clear_function_constants();
  mshim::set_fc(TURBO_FC_HAS_MASK, has_mask);
  mshim::set_fc(TURBO_FC_DO_CAUSAL, c.mask == M_CAUSAL || c.mask == M_CAUSAL_BOOL);
  mshim::set_fc(TURBO_FC_BOOL_MASK, c.mask == M_BOOL || c.mask == M_CAUSAL_BOOL);
  mshim::set_fc(TURBO_FC_FLOAT_MASK, c.mask == M_FLOAT);
  mshim::set_fc(TURBO_FC_HAS_SINKS, sinks_on);
  mshim::set_fc(TURBO_FC_SINK_VALUES, sinks_on && c.sink_values);
  mshim::set_fc(TURBO_FC_KEY_WAVES, c.waves > 0);
  mshim::set_fc(TURBO_FC_ROW_SINKS, row_sinks);
  const S* ks = (const S*)b.ks.data();
  const S* vs = (const S*)b.vs.data();
  const bool* bm = b.bmask;
  const float* fm = c.mask == M_FLOAT ? b.fmask.data() : nullptr;
  const float* sk = row_sinks ? b.row_sinks.data() : c.sinks ? b.sinks.data() : nullptr;
  const float* sv = sinks_on && c.sink_values ? b.sv.data() : nullptr;
  const float* wc = c.waves ? b.wcoef.data() : nullptr;
  const uint32_t* wf = c.waves ? b.wfreq.data() : nullptr;
  if (c.pass == 1) {
    auto d = tb::attn_1pass_dims(c.B, c.Hq, c.qL);
    auto body = [&](const rt::ThreadCtx& t) {
      sdpa_vector_turbo<S, D, V, KB, VB>(
          cdev(b.q.data()), cdev(b.k.data()), cdev(ks), cdev(b.v.data()), cdev(vs),
          dev(b.out.data()), cst(b.p), cdev(bm), cdev(fm), cdev(sk), cdev(sv), cdev(wc), cdev(wf),
          u3(t.threadgroup_position_in_grid), t.simdgroup_index_in_threadgroup,
          t.thread_index_in_simdgroup);
    };
    rt::dispatch_threadgroups(D3(d.grid), D3(d.group), body, opt);
  } else if (c.pass == 3) {
    auto d = tb::attn_prefill_dims(c.B, c.Hq, c.qL);
    auto body = [&](const rt::ThreadCtx& t) {
      sdpa_prefill_turbo<S, D, V, KB, VB>(
          cdev(b.q.data()), cdev(b.k.data()), cdev(ks), cdev(b.v.data()), cdev(vs),
          dev(b.out.data()), cst(b.p), cdev(bm), cdev(fm), cdev(sk),
          u3(t.threadgroup_position_in_grid), t.thread_index_in_threadgroup,
          t.simdgroup_index_in_threadgroup, t.thread_index_in_simdgroup);
    };
    rt::dispatch_threadgroups(D3(d.grid), D3(d.group), body, opt);
  } else {
    auto d = tb::attn_2pass_1_dims(c.B, c.Hkv, c.Hq / c.Hkv, c.qL, c.blocks);
    auto body1 = [&](const rt::ThreadCtx& t) {
      sdpa_vector_turbo_2pass_1<S, D, V, KB, VB>(
          cdev(b.q.data()), cdev(b.k.data()), cdev(ks), cdev(b.v.data()), cdev(vs),
          dev(b.partials.data()), cst(b.p), cdev(bm), cdev(fm), cdev(sk), cdev(sv), cdev(wc),
          cdev(wf), dev(b.sums.data()), dev(b.maxs.data()), u3(t.thread_position_in_threadgroup),
          u3(t.threadgroup_position_in_grid), t.thread_index_in_simdgroup);
    };
    rt::dispatch_threadgroups(D3(d.grid), D3(d.group), body1, opt);
    auto d2 = tb::attn_2pass_2_dims(c.B, c.Hq, c.qL);
    int blocks = c.blocks;
    auto body2 = [&](const rt::ThreadCtx& t) {
      sdpa_vector_turbo_2pass_2<V>(
          cdev(b.partials.data()), cdev(b.sums.data()), cdev(b.maxs.data()),
          dev(b.out.data()), cst(blocks), u3(t.threadgroup_position_in_grid),
          u3(t.threadgroups_per_grid), t.simdgroup_index_in_threadgroup,
          t.thread_index_in_simdgroup);
    };
    rt::dispatch_threadgroups(D3(d2.grid), D3(d2.group), body2, opt);
  }
  if (c.fused) {
    const int64_t nrows = int64_t(c.B) * c.Hq * c.qL;
    launch_rotate_out<S, V>(b.out.data(), (S*)b.out_t.data(), nrows, opt);
    for (size_t i = 0; i < b.fout.size(); i++) b.fout[i] = float(get_s<S>(b.out_t, i));
  }
}

// ---------------------------------------------------------------- setup
template <typename S>
static void setup(const Case& c, Buffers& b, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> U(-1.f, 1.f), Us(0.2f, 1.0f), Um(-3.f, 0.f);
  std::uniform_int_distribution<uint32_t> Uw;
  const int Wk = ref::words(c.kb, c.Dk), Wv = ref::words(c.vb, c.Dv);
  const int cap = c.kL + c.cap_extra;
  const size_t nkv = size_t(c.B) * c.Hkv * cap;
  b.q.resize(size_t(c.B) * c.Hq * c.qL * c.Dk);
  for (auto& x : b.q) x = 2.0f * U(rng);
  b.k.resize(nkv * Wk);
  b.v.resize(nkv * Wv);
  for (auto& x : b.k) x = Uw(rng);
  for (auto& x : b.v) x = Uw(rng);
  b.ks.resize(nkv * sizeof(S));
  b.vs.resize(nkv * sizeof(S));
  std::vector<double> ksd(nkv), vsd(nkv);
  for (size_t i = 0; i < nkv; i++) {
    S a = to_s<S>(Us(rng)), e = to_s<S>(Us(rng));
    std::memcpy(&b.ks[i * sizeof(S)], &a, sizeof(S));
    std::memcpy(&b.vs[i * sizeof(S)], &e, sizeof(S));
    ksd[i] = double(float(a));
    vsd[i] = double(float(e));
  }
  auto& p = b.p;
  std::memset(&p, 0, sizeof(p));
  p.B = c.B; p.Hq = c.Hq; p.Hkv = c.Hkv; p.qL = c.qL; p.kL = c.kL;
  p.gqa_factor = c.Hq / c.Hkv; p.blocks = c.blocks; p.scale = 1.0f;
  auto strides = [&](int64_t* s, int64_t W) {
    if (!c.seq_major) { s[0] = int64_t(c.Hkv) * cap * W; s[1] = int64_t(cap) * W; s[2] = W; }
    else { s[0] = int64_t(cap) * c.Hkv * W; s[1] = W; s[2] = int64_t(c.Hkv) * W; }
  };
  strides(p.k_strides, Wk); strides(p.ks_strides, 1);
  strides(p.v_strides, Wv); strides(p.vs_strides, 1);
  // masks
  const bool arr_mask = c.mask == M_BOOL || c.mask == M_FLOAT || c.mask == M_CAUSAL_BOOL;
  size_t nm = c.mask_bcast ? size_t(c.qL) * c.kL : size_t(c.B) * c.Hq * c.qL * c.kL;
  if (c.mask_bcast) { p.m_strides[0] = 0; p.m_strides[1] = 0; }
  else { p.m_strides[0] = int64_t(c.Hq) * c.qL * c.kL; p.m_strides[1] = int64_t(c.qL) * c.kL; }
  p.m_strides[2] = c.kL; p.m_strides[3] = 1;
  delete[] b.bmask; b.bmask = nullptr;
  if (c.mask == M_BOOL || c.mask == M_CAUSAL_BOOL) {
    b.bmask = new bool[nm]; b.n_bmask = nm;
    for (size_t i = 0; i < nm; i++) b.bmask[i] = U(rng) < 0.5f; // ~75% kept
    if (c.dead_row) for (int j = 0; j < c.kL; j++) b.bmask[size_t(c.qL - 1) * c.kL + j] = false;
  }
  if (c.mask == M_FLOAT) {
    b.fmask.resize(nm);
    for (auto& x : b.fmask) x = U(rng) < -0.8f ? -INFINITY : Um(rng);
    for (int i = 0; i < c.qL; i++) b.fmask[size_t(i) * c.kL] = 0.0f; // >= 1 finite key / row
  }
  const bool big_sinks = c.sinks && c.sink_values;
  b.sinks.resize(c.Hq);
  // A sink with a value is the first token, which takes a large share of
  // the attention: a large logit, so that its value weighs in the output.
  for (auto& x : b.sinks) x = 2.0f * U(rng) + (big_sinks ? 12.0f : 0.0f);
  b.sv.resize(size_t(c.B) * c.Hkv * c.Dv);
  for (auto& x : b.sv) x = 3.0f * U(rng);
  // The moving key shift: coefficients of a size that moves scores by a
  // few units, per-sequence frequencies over the whole uint32 range (the
  // products wrap), 2 sequences sharing them when B = 1.
  if (c.waves) {
    std::uniform_int_distribution<uint32_t> Uf;
    b.wcoef.resize(size_t(c.B) * c.Hq * c.qL * 2 * c.waves);
    for (auto& x : b.wcoef) x = 1.5f * U(rng);
    b.wfreq.resize(size_t(c.B) * c.Hkv * c.waves);
    for (auto& x : b.wfreq) x = Uf(rng);
    p.waves = c.waves;
    p.wf_b_stride = int64_t(c.Hkv) * c.waves;
  }
  const size_t no = size_t(c.B) * c.Hq * c.qL * c.Dv;
  b.out.assign(no, NAN);
  if (c.pass == 2) {
    b.partials.assign(size_t(c.B) * c.Hq * c.qL * c.blocks * c.Dv, NAN);
    b.sums.assign(size_t(c.B) * c.Hq * c.qL * c.blocks, NAN);
    b.maxs.assign(b.sums.size(), NAN);
  }

  // The decode kernel's inputs in float64: as generated, or with
  // fused_rotation what the preparation must make from the inputs as given
  // (rotated queries, sink logits per row with the key bias, rotated sink
  // values, the moving shift's coefficients).
  const size_t nrows = size_t(c.B) * c.Hq * c.qL;
  std::vector<double> qd(b.q.begin(), b.q.end()), sinkd(nrows, 0.0);
  std::vector<double> svd(b.sv.begin(), b.sv.end()), wcd(b.wcoef.begin(), b.wcoef.end());
  bool sinks_on = c.sinks;
  if (c.sinks)
    for (size_t r = 0; r < nrows; r++) sinkd[r] = b.sinks[(r / c.qL) % c.Hq];
  if (c.fused) {
    const int Bs = c.shared ? 1 : c.B, P = c.waves;
    auto fill = [&](std::vector<unsigned char>& buf, size_t n, float amp) {
      buf.resize(n * sizeof(S));
      for (size_t i = 0; i < n; i++) put_s<S>(buf, i, amp * U(rng));
    };
    p.scale = 1.0f / std::sqrt(float(c.Dk));
    fill(b.q_in, b.q.size(), 2.0f);
    fill(b.sv_in, size_t(Bs) * c.Hkv * c.Dv, 3.0f);
    fill(b.ksh, size_t(Bs) * c.Hkv * c.Dk, 1.0f);
    fill(b.fk, size_t(Bs) * c.Hkv * c.Dk, 2.0f);
    b.waves.resize(size_t(Bs) * c.Hkv * 2 * P * c.Dk);
    for (auto& x : b.waves) x = 0.3f * U(rng);
    std::fill(b.q.begin(), b.q.end(), NAN);
    std::fill(b.sv.begin(), b.sv.end(), NAN);
    std::fill(b.wcoef.begin(), b.wcoef.end(), NAN);
    b.row_sinks.assign(nrows, NAN);
    b.out_t.assign(no * sizeof(S), 0xFF);
    b.fout.assign(no, NAN);
    auto& pp = b.pp;
    std::memset(&pp, 0, sizeof(pp));
    pp.Hq = c.Hq; pp.qL = c.qL; pp.Hkv = c.Hkv; pp.gqa_factor = c.Hq / c.Hkv;
    pp.scale = p.scale; pp.waves = P;
    pp.n_q = int64_t(nrows); pp.n_sv = c.sink_values ? int64_t(c.B) * c.Hkv : 0;
    pp.sv_b = pp.key_shift_b = pp.first_key_b = pp.waves_b = c.shared ? 0 : 1;
    const bool bias = c.key_shift || c.first_key;
    sinks_on = c.sinks || bias;
    for (size_t r = 0; r < nrows; r++) {
      const int h = int((r / c.qL) % c.Hq), bb = int(r / (size_t(c.Hq) * c.qL));
      const size_t kv = (size_t(c.shared ? 0 : bb) * c.Hkv + h / (c.Hq / c.Hkv));
      double* qr = &qd[r * c.Dk];
      double dot = 0;
      for (int d = 0; d < c.Dk; d++) {
        qr[d] = get_s<S>(b.q_in, r * c.Dk + d);
        double bi = (c.key_shift ? get_s<S>(b.ksh, kv * c.Dk + d) : 0.0) -
                    (c.first_key ? get_s<S>(b.fk, kv * c.Dk + d) : 0.0);
        dot += qr[d] * bi;
      }
      if (bias) sinkd[r] -= double(p.scale) * dot;
      for (int j = 0; j < 2 * P; j++) {
        double cj = 0;
        for (int d = 0; d < c.Dk; d++) cj += qr[d] * b.waves[(kv * 2 * P + j) * c.Dk + d];
        wcd[r * 2 * P + j] = double(p.scale) * cj;
      }
      ref_rotate(qr, c.Dk, false);
    }
    for (int bb = 0; bb < c.B; bb++)
      for (int kvh = 0; kvh < c.Hkv; kvh++) {
        double* v = &svd[(size_t(bb) * c.Hkv + kvh) * c.Dv];
        for (int d = 0; d < c.Dv; d++)
          v[d] = get_s<S>(b.sv_in, (size_t(c.shared ? 0 : bb) * c.Hkv + kvh) * c.Dv + d);
        ref_rotate(v, c.Dv, false);
      }
  }

  // float64 reference in the rotated domain
  const double FMIN = -double(3.4028234663852886e38);
  const float* kcb = ref::codebook(c.kb);
  const float* vcb = ref::codebook(c.vb);
  const bool with_sv = sinks_on && c.sink_values;
  b.ref.assign(no, 0.0);
  std::vector<double> s(c.kL);
  for (int bb = 0; bb < c.B; bb++)
    for (int h = 0; h < c.Hq; h++)
      for (int i = 0; i < c.qL; i++) {
        int kvh = h / p.gqa_factor;
        const size_t row = (size_t(bb) * c.Hq + h) * c.qL + i;
        const double* qq = &qd[row * c.Dk];
        double m = sinks_on ? sinkd[row] : -INFINITY;
        for (int j = 0; j < c.kL; j++) {
          int64_t kv = bb * p.ks_strides[0] + kvh * p.ks_strides[1] + j * p.ks_strides[2];
          const uint32_t* kw = &b.k[bb * p.k_strides[0] + kvh * p.k_strides[1] + j * p.k_strides[2]];
          int64_t mo = bb * p.m_strides[0] + h * p.m_strides[1] + i * p.m_strides[2] + j;
          bool masked = false;
          if ((c.mask == M_CAUSAL || c.mask == M_CAUSAL_BOOL) && j > c.kL - c.qL + i) masked = true;
          if ((c.mask == M_BOOL || c.mask == M_CAUSAL_BOOL) && !b.bmask[mo]) masked = true;
          if (masked) { s[j] = FMIN; }
          else {
            double acc = 0;
            for (int d = 0; d < c.Dk; d++) acc += qq[d] * kcb[ref::code(kw, c.kb, c.Dk, d)];
            s[j] = double(p.scale) * ksd[kv] * acc;
            if (c.mask == M_FLOAT) s[j] += double(b.fmask[mo]);
            if (c.waves) {
              const double* cf = &wcd[row * 2 * c.waves];
              for (int l = 0; l < c.waves; l++) {
                uint32_t f = b.wfreq[(size_t(bb) * c.Hkv + kvh) * c.waves + l];
                double a = 2.0 * M_PI * double((f * uint32_t(j)) & 0xFFFFFFu) / 16777216.0;
                s[j] += std::cos(a) * cf[l] + std::sin(a) * cf[c.waves + l];
              }
            }
          }
          m = std::max(m, s[j]);
        }
        double den = sinks_on ? std::exp(sinkd[row] - m) : 0.0;
        for (int j = 0; j < c.kL; j++) den += std::exp(s[j] - m);
        double* oo = &b.ref[row * c.Dv];
        if (with_sv) {
          double ps = std::exp(sinkd[row] - m) / den;
          for (int d = 0; d < c.Dv; d++) oo[d] += ps * svd[(size_t(bb) * c.Hkv + kvh) * c.Dv + d];
        }
        for (int j = 0; j < c.kL; j++) {
          double pj = std::exp(s[j] - m) / den;
          if (pj == 0) continue;
          int64_t kv = bb * p.vs_strides[0] + kvh * p.vs_strides[1] + j * p.vs_strides[2];
          const uint32_t* vw = &b.v[bb * p.v_strides[0] + kvh * p.v_strides[1] + j * p.v_strides[2]];
          for (int d = 0; d < c.Dv; d++) oo[d] += pj * vsd[kv] * vcb[ref::code(vw, c.vb, c.Dv, d)];
        }
        if (c.fused) ref_rotate(oo, c.Dv, true);
      }
}

// Writes a case's inputs and the emulated kernel's output for
// compare_cpu_wheel.py (the patched wheel's CPU backend on the same data).
// Layout: 16 int32 (magic, kb, vb, st, Dk, Dv, B, Hq, Hkv, qL, kL, cap, mask,
// sinks, seq_major, mask_bcast), then q (f32), k (u32), k scales (raw), v,
// v scales, the mask (bool bytes or f32, if any), sinks (f32 Hq), out (f32).
static void dump_case(const char* dir, const Case& c, const Buffers& b, unsigned index) {
  char path[512];
  snprintf(path, sizeof(path), "%s/case_%03u.bin", dir, index);
  FILE* f = fopen(path, "wb");
  if (!f) { printf("cannot write %s\n", path); g_failures++; return; }
  int32_t h[16] = {0x54514D31, c.kb, c.vb, c.st, c.Dk, c.Dv, c.B, c.Hq, c.Hkv, c.qL, c.kL,
                   c.kL + c.cap_extra, c.mask, int32_t(c.sinks), int32_t(c.seq_major), int32_t(c.mask_bcast)};
  fwrite(h, sizeof(h), 1, f);
  auto put = [&](const void* p, size_t n) { if (n) fwrite(p, 1, n, f); };
  put(b.q.data(), b.q.size() * 4);
  put(b.k.data(), b.k.size() * 4);
  put(b.ks.data(), b.ks.size());
  put(b.v.data(), b.v.size() * 4);
  put(b.vs.data(), b.vs.size());
  if (c.mask == M_BOOL || c.mask == M_CAUSAL_BOOL) {
    std::vector<unsigned char> m(b.n_bmask);
    for (size_t i = 0; i < b.n_bmask; i++) m[i] = b.bmask[i];
    put(m.data(), m.size());
  }
  if (c.mask == M_FLOAT) put(b.fmask.data(), b.fmask.size() * 4);
  put(b.sinks.data(), b.sinks.size() * 4);
  put(b.out.data(), b.out.size() * 4);
  fclose(f);
}

template <typename S, int D, int V, int KB, int VB>
static void run_case(const Case& c, unsigned seed) {
  Buffers b;
  setup<S>(c, b, seed);
  const size_t no = b.out.size();
  std::vector<float> outs[4];
  const rt::Order orders[4] = {rt::Order::Forward, rt::Order::Reverse, rt::Order::Random, rt::Order::Lockstep};
  bool order_dependent = false;
  rt::LaunchOptions opt;
  opt.seed = seed;
  auto t0 = std::chrono::steady_clock::now();
  const std::vector<float>& result = c.fused ? b.fout : b.out;
  for (int r = 0; r < (g_all_orders ? 4 : 1); r++) {
    opt.order = g_all_orders ? orders[r] : g_order;
    std::fill(b.out.begin(), b.out.end(), NAN);
    if (c.pass == 2) {
      std::fill(b.partials.begin(), b.partials.end(), NAN);
      std::fill(b.sums.begin(), b.sums.end(), NAN);
      std::fill(b.maxs.begin(), b.maxs.end(), NAN);
    }
    if (c.fused) {
      std::fill(b.q.begin(), b.q.end(), NAN);
      std::fill(b.fout.begin(), b.fout.end(), NAN);
    }
    launch<S, D, V, KB, VB>(c, b, opt);
    outs[r] = result;
    if (r && std::memcmp(outs[r].data(), outs[0].data(), no * sizeof(float)) != 0) order_dependent = true;
  }
  double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  double max_ref = 0;
  for (size_t i = 0; i < no; i++) max_ref = std::max(max_ref, std::fabs(b.ref[i]));
  // The kernels' float32 error; fused: twice that (the float32 rotations
  // of the queries and the output, 2 log2 P + 3 roundings each, about 1e-6
  // of a row's norm, carried through the scores), plus the output's one
  // rounding to S, half an ulp of S (2^-24, 2^-11, 2^-8 relative).
  const double tol = (c.fused ? 4e-5 : 2e-5) * std::max(1.0, max_ref);
  const double half_ulp = !c.fused ? 0.0 : std::is_same<S, float>::value ? 0x1p-24
                                         : std::is_same<S, half>::value  ? 0x1p-11
                                                                         : 0x1p-8;
  double max_err = 0, max_ratio = 0;
  size_t bad = 0;
  for (size_t i = 0; i < no; i++) {
    double o = result[i];
    if (!std::isfinite(o)) { bad++; continue; }
    double e = std::fabs(o - b.ref[i]);
    max_err = std::max(max_err, e);
    max_ratio = std::max(max_ratio, e / (tol + half_ulp * std::fabs(b.ref[i])));
  }
  bool ok = bad == 0 && max_ratio <= 1.0 && !order_dependent;
  g_cases++;
  if (!ok) g_failures++;
  std::string fused = !c.fused ? "" : std::string(" fused") + (c.key_shift ? "+shift" : "") +
                                     (c.first_key ? "+first" : "") + (c.shared ? "(shared)" : "");
  printf("%-4s %s/%s %-8s Dk=%d Dv=%d B=%d Hq=%d Hkv=%d qL=%d kL=%d cap+%d %s mask=%s%s%s sinks=%d waves=%d%s %s err=%.2g (tol %.1g, %.2f of it) nonfinite=%zu %.0f ms\n",
         ok ? "OK" : "FAIL", tb::mode_name(c.kb), tb::mode_name(c.vb), stype_name[c.st], c.Dk, c.Dv, c.B,
         c.Hq, c.Hkv, c.qL, c.kL, c.cap_extra, c.seq_major ? "BLHW" : "BHLW", mask_name[c.mask],
         c.mask_bcast ? "(bcast)" : "", c.dead_row ? "(dead row)" : "", int(c.sinks) + int(c.sinks && c.sink_values), c.waves,
         fused.c_str(), c.pass == 1 ? "1pass" : c.pass == 3 ? "prefill" : ("2pass/" + std::to_string(c.blocks)).c_str(),
         max_err, tol, max_ratio, bad, ms);
  if (order_dependent) printf("     ^ result depends on the lane schedule: data race / missing barrier\n");
  fflush(stdout);
  // The wheel comparison has no sink values (the op derives them from first_value)
  // and no moving key shift (the op derives its coefficients from the queries).
  if (const char* dir = getenv("TURBO_EXEC_DUMP"); dir && !c.sink_values && !c.waves && !c.fused)
    dump_case(dir, c, b, seed - 1000);
  if (!ok && getenv("TURBO_EXEC_FAILFAST")) exit(1);
  delete[] b.bmask;
}

// ---------------------------------------------------------------- dispatch
template <typename S, int D, int V>
static void run_modes(const Case& c, unsigned seed) {
  if (c.kb == 3 && c.vb == 3) run_case<S, D, V, 3, 3>(c, seed);
  else if (c.kb == 3 && c.vb == 4) run_case<S, D, V, 3, 4>(c, seed);
  else if (c.kb == 4 && c.vb == 3) run_case<S, D, V, 4, 3>(c, seed);
  else run_case<S, D, V, 4, 4>(c, seed);
}
#ifdef TURBO_EXEC_SMALL
// Reduced build for the planted-bug runs (fast to compile): float16 scales,
// head dims 64, 80, 128.
static bool in_build(const Case& c) {
  return c.st == 1 && c.Dk == c.Dv && (c.Dk == 64 || c.Dk == 80 || c.Dk == 128);
}
template <typename S>
static void run_dims(const Case& c, unsigned seed) {
  switch (c.Dk * 1000 + c.Dv) {
    case 64064: run_modes<S, 64, 64>(c, seed); break;
    case 80080: run_modes<S, 80, 80>(c, seed); break;
    case 128128: run_modes<S, 128, 128>(c, seed); break;
  }
}
static void run(const Case& c, unsigned seed) { run_dims<half>(c, seed); }
#else
static bool in_build(const Case&) { return true; }
template <typename S>
static void run_dims(const Case& c, unsigned seed) {
  switch (c.Dk * 1000 + c.Dv) {
    case 64064: run_modes<S, 64, 64>(c, seed); break;
    case 80080: run_modes<S, 80, 80>(c, seed); break;
    case 96096: run_modes<S, 96, 96>(c, seed); break;
    case 128128: run_modes<S, 128, 128>(c, seed); break;
    case 192192: run_modes<S, 192, 192>(c, seed); break;
    case 192128: run_modes<S, 192, 128>(c, seed); break;
    case 256256: run_modes<S, 256, 256>(c, seed); break;
    default: printf("unsupported dims\n"); g_failures++;
  }
}
static void run(const Case& c, unsigned seed) {
  if (c.st == 0) run_dims<float>(c, seed);
  else if (c.st == 1) run_dims<half>(c, seed);
  else run_dims<bfloat>(c, seed);
}
#endif

int main(int argc, char** argv) {
  std::string mode = argc > 1 ? argv[1] : "all";
  std::string sel = argc > 2 ? argv[2] : "";
  bool quick = sel == "quick";
  g_all_orders = mode == "all";
  g_order = mode == "rev" ? rt::Order::Reverse : mode == "rand" ? rt::Order::Random
          : mode == "lockstep" ? rt::Order::Lockstep : rt::Order::Forward;
  printf("lane order: %s\n", mode.c_str());
  std::vector<Case> cases;
  const int dims[7][2] = {{64, 64}, {80, 80}, {96, 96}, {128, 128}, {192, 192}, {192, 128}, {256, 256}};
  // 1. every instantiation (3 scale types x 7 dim pairs x 4 mode pairs), rotating
  //    the other parameters through the list so each appears with many shapes.
  int r = 0;
  for (int st = 0; st < 3; st++)
    for (int di = 0; di < 7; di++)
      for (int mb = 0; mb < 4; mb++, r++) {
        Case c{};
        c.kb = 3 + (mb >> 1); c.vb = 3 + (mb & 1); c.st = st; c.Dk = dims[di][0]; c.Dv = dims[di][1];
        c.B = 1 + (r % 2); c.Hkv = 1 + (r % 3 == 0); c.Hq = c.Hkv * (r % 4 == 1 ? 4 : r % 4 == 2 ? 2 : 1);
        c.qL = 1 + (r % 5 == 3 ? 3 : 0);
        c.kL = (r % 3 == 0) ? 64 : (r % 3 == 1) ? 77 : 33;
        c.mask = r % 5;
        c.sinks = r % 7 == 2 || r % 7 == 5;
        c.pass = 1 + (r % 3);
        if (c.pass == 3) c.qL = 9 + (r % 4) * 11;
        c.blocks = 32;
        c.cap_extra = r % 4 == 3 ? 5 : 0;
        c.seq_major = r % 6 == 4;
        c.mask_bcast = r % 8 == 6;
        if (c.pass == 2 && !tb::attn_2pass_fits(c.Hq / c.Hkv, c.qL)) c.pass = 1;
        c.sink_values = c.sinks && c.pass != 3 && r % 2 == 0; // decode kernels only
        cases.push_back(c);
      }
  // 2. focused cases on turbo3/turbo4 f16 D=128 (the common configuration)
  auto C = [](int kb, int vb, int st, int D, int V, int B, int Hq, int Hkv, int qL, int kL, int mask,
              bool sinks, int pass, int blocks, int cap = 0, bool sm = false, bool bc = false, bool dead = false) {
    return Case{kb, vb, st, D, V, B, Hq, Hkv, qL, kL, mask, sinks, pass, blocks, cap, sm, bc, dead};
  };
  cases.push_back(C(3, 3, 1, 128, 128, 1, 8, 2, 1, 1000, M_NONE, false, 2, 64));       // 2-pass, GQA 4
  cases.push_back(C(4, 4, 1, 128, 128, 1, 8, 2, 1, 1000, M_NONE, false, 1, 0));        // same, 1-pass
  cases.push_back(C(3, 4, 2, 128, 128, 1, 4, 1, 8, 300, M_CAUSAL, true, 2, 128));      // qL=8, GQA 4 (32 simds)
  cases.push_back(C(3, 3, 1, 64, 64, 2, 4, 2, 4, 3, M_CAUSAL, false, 1, 0));           // qL > kL: dead rows
  cases.push_back(C(3, 3, 1, 64, 64, 2, 4, 2, 4, 3, M_CAUSAL, false, 2, 32));
  cases.push_back(C(4, 3, 0, 96, 96, 1, 2, 1, 2, 50, M_BOOL, false, 1, 0, 0, false, false, true));  // dead row
  cases.push_back(C(4, 3, 0, 96, 96, 1, 2, 1, 2, 50, M_BOOL, false, 2, 32, 0, false, false, true));
  cases.push_back(C(4, 4, 2, 80, 80, 1, 2, 1, 2, 50, M_BOOL, true, 1, 0, 0, false, false, true));   // dead row + sinks
  cases.push_back(C(3, 4, 1, 256, 256, 1, 2, 2, 1, 31, M_NONE, true, 1, 0));          // kL < 32 simdgroups
  cases.push_back(C(3, 4, 1, 256, 256, 1, 2, 2, 1, 31, M_NONE, true, 2, 64));         // blocks > kL
  cases.push_back(C(4, 4, 1, 192, 128, 2, 6, 3, 3, 129, M_FLOAT, true, 2, 32, 7, true, true));
  cases.push_back(C(3, 3, 0, 80, 80, 1, 3, 1, 1, 1, M_NONE, false, 1, 0));            // a single key
  cases.push_back(C(3, 3, 1, 128, 128, 1, 2, 1, 5, 96, M_CAUSAL_BOOL, false, 1, 0, 0, false, true));
  cases.push_back(C(4, 4, 0, 64, 64, 1, 32, 1, 1, 256, M_NONE, true, 2, 32));         // MQA, 32 query heads
  cases.push_back(C(4, 4, 1, 128, 128, 1, 4, 2, 2, 100, M_NONE, true, 1, 0));        // sinks, 1-pass
  cases.push_back(C(4, 4, 1, 64, 64, 1, 4, 2, 2, 100, M_NONE, true, 2, 32));          // sinks, 2-pass
  for (int pass = 1; pass <= 2; pass++) {                                             // sink values
    Case c = C(3, 4, 1, 128, 128, 2, 6, 2, 1, 300, pass == 1 ? M_BOOL : M_NONE, true, pass, 32);
    c.sink_values = true;
    cases.push_back(c);
  }
  // The moving key shift (decode kernels): P below, at and above 32 lanes' worth of
  // planes' halves, 1- and 2-pass, masks, sinks with values, GQA, every scale type.
  {
    const int wp[6][4] = {{1, 1, 0, 3}, {2, 4, 1, 8}, {1, 0, 2, 13}, {2, 2, 1, 32}, {1, 3, 0, 5}, {2, 1, 2, 8}};
    for (int i = 0; i < 6; i++) {
      Case c = C(3 + (i & 1), 4 - (i % 3 == 2), wp[i][2], i < 3 ? 128 : 64, i < 3 ? 128 : 64, 1 + (i % 2),
                 8, 2, 1 + 3 * (i == 3), 300 + 37 * i, wp[i][1], i % 2 == 1, wp[i][0], 32);
      if (c.pass == 2 && !tb::attn_2pass_fits(c.Hq / c.Hkv, c.qL)) c.pass = 1;
      c.sink_values = c.sinks && i == 3;
      c.waves = wp[i][3];
      cases.push_back(c);
    }
  }
  // 2b. fused_rotation (decode kernels): every (type, dim pair) of the preparation
  //     and of the output rotation, the scale type as the queries' type, with the
  //     combinations of transforms the op sends (first_key excludes sinks; a key
  //     shift reaches the kernels only with sinks or a first key).
  r = 0;
  for (int st = 0; st < 3; st++)
    for (int di = 0; di < 7; di++, r++) {
      const int combo = r % 7;
      Case c = C(3 + (r & 1), 3 + ((r >> 1) & 1), st, dims[di][0], dims[di][1], 1 + (r % 2),
                 r % 3 == 0 ? 8 : 4, r % 3 == 0 ? 2 : r % 3 == 1 ? 1 : 4, r % 4 == 1 ? 4 : 1,
                 60 + 23 * (r % 5), r % 5 == 3 ? M_BOOL : r % 5 == 4 ? M_CAUSAL : M_NONE, false,
                 1 + (r % 2), 32);
      c.fused = true;
      c.sinks = combo == 1 || combo == 4 || combo == 6;
      c.key_shift = combo == 1 || combo == 3 || combo == 4 || combo == 5;
      c.first_key = combo == 2 || combo == 3 || combo == 5;
      c.sink_values = c.first_key;
      c.waves = combo >= 4 ? 3 + 5 * (r % 3) : 0;
      c.shared = r % 3 == 2;
      if (c.pass == 2 && !tb::attn_2pass_fits(c.Hq / c.Hkv, c.qL)) c.pass = 1;
      cases.push_back(c);
    }
  {
    // the common configuration: Hq/Hkv = 7 (Qwen2.5-7B), turbo4 keys, P = 32
    Case c = C(4, 3, 1, 128, 128, 2, 14, 2, 1, 700, M_NONE, false, 2, 64);
    c.fused = true; c.first_key = true; c.key_shift = true; c.sink_values = true; c.waves = 32;
    cases.push_back(c);
    c.pass = 1; c.B = 1; c.shared = true; c.qL = 3; c.mask = M_CAUSAL; c.st = 2;
    cases.push_back(c);
    c = C(3, 3, 1, 80, 80, 2, 6, 3, 2, 150, M_FLOAT, true, 1, 0); // sinks, key shift, waves
    c.fused = true; c.key_shift = true; c.waves = 7;
    cases.push_back(c);
    c = C(4, 4, 1, 64, 64, 2, 4, 2, 2, 90, M_CAUSAL, false, 1, 0); // shared first token
    c.fused = true; c.first_key = true; c.sink_values = true; c.shared = true;
    cases.push_back(c);
  }
  // 3. prefill (tiled) kernel
  cases.push_back(C(3, 4, 1, 128, 128, 1, 4, 2, 40, 200, M_CAUSAL, false, 3, 0));     // GQA, causal, causal early stop
  cases.push_back(C(4, 4, 1, 128, 128, 1, 2, 1, 64, 64, M_CAUSAL, true, 3, 0));       // square causal + sinks
  cases.push_back(C(3, 3, 0, 80, 80, 2, 2, 2, 17, 45, M_BOOL, false, 3, 0, 3, true, false, true)); // dead row, strides
  cases.push_back(C(4, 3, 2, 192, 128, 1, 3, 1, 12, 70, M_FLOAT, true, 3, 0, 0, false, true));
  cases.push_back(C(3, 3, 1, 64, 64, 1, 2, 1, 20, 10, M_CAUSAL, false, 3, 0));        // qL > kL: dead rows
  cases.push_back(C(4, 4, 0, 256, 256, 1, 1, 1, 9, 33, M_CAUSAL_BOOL, false, 3, 0, 0, false, true));
  cases.push_back(C(3, 4, 1, 96, 96, 1, 2, 2, 5, 40, M_NONE, false, 3, 0));           // qL < BQ
  printf("%zu cases\n", cases.size());
  for (size_t i = 0; i < cases.size(); i++) {
    if (!in_build(cases[i])) continue;
    if (quick && i % 8 != 0) continue;
    if (!sel.empty() && !quick && std::to_string(i) != sel) continue;
    run(cases[i], 1000 + unsigned(i));
  }
  printf("%d/%d cases %s\n", g_cases - g_failures, g_cases, g_failures ? "passed, SOME CASES FAILED" : "passed, ALL CASES PASSED");
  return g_failures ? 1 : 0;
}
