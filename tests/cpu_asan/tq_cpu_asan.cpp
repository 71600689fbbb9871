// The TurboQuant CPU kernels under AddressSanitizer + UBSan, on packed data
// that no encoder produces.
//
// The kernel sources (mlx/backend/cpu/turboquant.cpp and
// turboquant_attention.cpp) are compiled into this translation unit and their
// kernels called directly on buffers of exactly the size a view needs, so a
// read one element outside a view is a heap overflow that ASan reports. The
// MLX glue of those files (eval_cpu, quantize_cpu: arrays, the command
// encoder) is compiled but never called.
//
// Cases: every mode pair, head dim (64 ... 256, key and value dims differing)
// and scale dtype; decode (split-K included) and prefill shapes, causal rows
// that see no key, masks and sinks; the packed cache and its scales as
// contiguous arrays, the first or last rows of a capacity buffer, every
// other row, rows reversed (negative stride) and (B, L, H, W) transposed;
// packed words with random and constant bit patterns; scales that are NaN,
// +-inf, 0, denormal, huge (FLT_MAX, 1e30) or negative; NaN / inf queries,
// masks and sinks. With benign values (finite scales of normal size) the
// output must match a float64 reference over the same views (rel. error
// < 1e-4: float32 accumulation); otherwise any value is allowed (NaN / inf
// included) as long as nothing reads out of bounds. quantize / dequantize
// get non-finite, huge and denormal inputs and every bit pattern.
//
// Build and run: tests/cpu_asan/run.sh.

#include "mlx/backend/cpu/turboquant.cpp"
#include "mlx/backend/cpu/turboquant_attention.cpp"

#include <cfloat>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

using namespace mlx::core;

namespace {

int g_cases = 0;
int g_failures = 0;
std::mt19937_64 g_rng(20261203);

const int kDims[] = {64, 80, 96, 128, 192, 256};

float randn() {
  static std::normal_distribution<float> n(0.0f, 1.0f);
  return n(g_rng);
}
uint32_t randu() {
  return static_cast<uint32_t>(g_rng());
}

// How the values of an adversarial array are drawn.
enum class Values { Benign, NaN, Inf, NegInf, Zero, Denormal, Huge, FltMax, Negative, Mixed };
const Values kScalePatterns[] = {
    Values::Benign,
    Values::NaN,
    Values::Inf,
    Values::NegInf,
    Values::Zero,
    Values::Denormal,
    Values::Huge,
    Values::FltMax,
    Values::Negative,
    Values::Mixed};
const char* name(Values v) {
  const char* n[] = {
      "benign", "nan", "inf", "-inf", "zero", "denormal", "huge", "fltmax", "negative", "mixed"};
  return n[static_cast<int>(v)];
}

float draw_scale(Values p) {
  switch (p) {
    case Values::Benign:
      return 0.5f + std::abs(randn());
    case Values::NaN:
      return NAN;
    case Values::Inf:
      return INFINITY;
    case Values::NegInf:
      return -INFINITY;
    case Values::Zero:
      return 0.0f;
    case Values::Denormal:
      return 1e-40f;
    case Values::Huge:
      return 1e30f;
    case Values::FltMax:
      return FLT_MAX;
    case Values::Negative:
      return -(0.5f + std::abs(randn()));
    case Values::Mixed:
    default: {
      const float pick[] = {NAN, INFINITY, -INFINITY, 0.0f, 1e-40f, 1e30f, FLT_MAX, 1.0f};
      return pick[randu() % 8];
    }
  }
}

// Packed words: random, or one constant pattern per call.
uint32_t draw_word(int pattern) {
  const uint32_t fixed[] = {0u, 0xFFFFFFFFu, 0xAAAAAAAAu, 0x55555555u, 0x80000001u};
  return pattern < 0 ? randu() : fixed[pattern % 5];
}

// Memory layouts of a (B, H, L, W) view.
enum class Layout { Contiguous, CapacityHead, CapacityTail, EveryOther, Reversed, Transposed };
const Layout kLayouts[] = {
    Layout::Contiguous,
    Layout::CapacityHead,
    Layout::CapacityTail,
    Layout::EveryOther,
    Layout::Reversed,
    Layout::Transposed};
const char* name(Layout l) {
  const char* n[] = {"contiguous", "capacity_head", "capacity_tail", "every_other", "reversed", "transposed"};
  return n[static_cast<int>(l)];
}

// A strided view into a buffer of exactly the size the layout needs; the
// elements outside the view hold `junk`.
template <typename T>
struct View {
  std::vector<T> buf;
  int64_t base = 0;
  int64_t str[3] = {0, 0, 0};
  int W = 1;
  const T* ptr() const {
    return buf.data() + base;
  }
  T& at(int b, int h, int l, int i) {
    return buf[base + b * str[0] + h * str[1] + l * str[2] + i];
  }
};

template <typename T>
View<T> make_view(int B, int H, int L, int W, Layout layout, T junk) {
  View<T> v;
  v.W = W;
  const int64_t w = W;
  switch (layout) {
    case Layout::Contiguous:
      v.buf.assign(int64_t(B) * H * L * W, junk);
      v.str[0] = H * L * w, v.str[1] = L * w, v.str[2] = w;
      break;
    case Layout::CapacityHead:
    case Layout::CapacityTail: {
      const int cap = L + 3;
      v.buf.assign(int64_t(B) * H * cap * W, junk);
      v.str[0] = H * cap * w, v.str[1] = cap * w, v.str[2] = w;
      // The first L rows (as mlx-lm passes x[..., :n, :]) or the last ones,
      // so that the last head's view ends where the buffer does.
      v.base = layout == Layout::CapacityTail ? 3 * w : 0;
      break;
    }
    case Layout::EveryOther:
      v.buf.assign(int64_t(B) * H * 2 * L * W, junk);
      v.str[0] = H * 2 * L * w, v.str[1] = 2 * L * w, v.str[2] = 2 * w;
      break;
    case Layout::Reversed:
      v.buf.assign(int64_t(B) * H * L * W, junk);
      v.str[0] = H * L * w, v.str[1] = L * w, v.str[2] = -w;
      v.base = (L - 1) * w;
      break;
    case Layout::Transposed:
      v.buf.assign(int64_t(B) * L * H * W, junk);
      v.str[0] = L * H * w, v.str[1] = w, v.str[2] = H * w;
      break;
  }
  return v;
}

template <typename S>
const char* type_name() {
  if constexpr (std::is_same_v<S, float>) {
    return "float32";
  } else if constexpr (std::is_same_v<S, float16_t>) {
    return "float16";
  } else {
    return "bfloat16";
  }
}

void fail(const std::string& what) {
  ++g_failures;
  std::printf("FAIL %s\n", what.c_str());
}

// ---------------------------------------------------------------------------
// quantize / dequantize kernels

template <typename T>
void check_codec(int dim, int bits) {
  const int W = turbo::packed_width(dim, bits);
  // Encoder: rows of normal values, zeros, NaN / inf anywhere, huge values
  // (the norm overflows) and denormals.
  const int rows = 9;
  std::vector<T> x(int64_t(rows) * dim);
  for (int r = 0; r < rows; ++r) {
    for (int i = 0; i < dim; ++i) {
      float v = randn();
      switch (r) {
        case 1:
          v = 0.0f;
          break;
        case 2:
          v = i == dim / 2 ? NAN : v;
          break;
        case 3:
          v = i == 0 ? INFINITY : v;
          break;
        case 4:
          v = i % 3 == 0 ? -INFINITY : v;
          break;
        case 5:
          v *= 1e30f;
          break;
        case 6:
          v *= 1e-40f;
          break;
        case 7:
          v = FLT_MAX;
          break;
        default:
          break;
      }
      x[int64_t(r) * dim + i] = static_cast<T>(v);
    }
  }
  std::vector<uint32_t> packed(int64_t(rows) * W);
  std::vector<T> scales(rows);
  encode_rows<T>(x.data(), packed.data(), scales.data(), rows, dim, bits);
  ++g_cases;
  if (!std::isfinite(static_cast<float>(scales[0])) || static_cast<float>(scales[1]) != 0.0f) {
    fail(std::string("encode ") + type_name<T>() + " dim " + std::to_string(dim) +
         ": benign or zero row gave a bad scale");
  }
  // Decoder: every bit pattern with every scale pattern.
  for (int pattern = -1; pattern < 5; ++pattern) {
    for (Values sp : kScalePatterns) {
      const int n = 7;
      std::vector<uint32_t> w(int64_t(n) * W);
      for (auto& u : w) {
        u = draw_word(pattern);
      }
      std::vector<T> s(n);
      for (auto& v : s) {
        v = static_cast<T>(draw_scale(sp));
      }
      std::vector<T> out(int64_t(n) * dim);
      DecodeRows<T> rows{1, 1, n, {0, 0, W}, {0, 0, 1}, nullptr, nullptr, nullptr, nullptr};
      decode_rows<T>(w.data(), s.data(), out.data(), rows, dim, bits);
      ++g_cases;
      // The prefill route's rows: every other row of the buffer (strides),
      // an exact first row, the key shift and 3 planes of the moving shift,
      // into an output of exactly 1 + n / 2 rows.
      const int P = 3, half = n / 2;
      std::vector<T> first(dim, static_cast<T>(1.0f));
      std::vector<float> shift(dim, 0.5f), waves(2 * P * dim, 0.25f);
      std::vector<uint32_t> freqs = {1u, 12345u, 0xFFFFFFu};
      std::vector<T> out_kv(int64_t(1 + half) * dim);
      DecodeRows<T> kv{
          1, 1, half, {0, 0, 2 * W}, {0, 0, 2}, first.data(), shift.data(), freqs.data(),
          waves.data(), P};
      decode_rows<T>(w.data(), s.data(), out_kv.data(), kv, dim, bits);
      ++g_cases;
      if (std::memcmp(out_kv.data(), first.data(), dim * sizeof(T)) != 0) {
        fail(std::string("decode_kv ") + type_name<T>() + " dim " + std::to_string(dim) +
             ": row 0 is not the first row");
      }
      if (sp == Values::Benign) {
        for (auto v : out) {
          if (!std::isfinite(static_cast<float>(v))) {
            fail(std::string("decode ") + type_name<T>() + " dim " + std::to_string(dim) +
                 ": non-finite output from finite scales");
            break;
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------
// fused attention kernel

struct Shape {
  int B, Hq, Hkv, qL, kL;
  bool causal;
  const char* what;
};
const Shape kShapes[] = {
    {1, 4, 1, 1, 1100, false, "decode, split-K"},
    {1, 8, 1, 1, 2048, true, "decode, split-K, causal"},
    {2, 6, 2, 1, 37, false, "decode, batch"},
    {1, 4, 2, 3, 50, true, "few queries, causal"},
    {2, 4, 4, 8, 5, true, "causal rows that see no key"},
    {1, 7, 1, 33, 40, true, "prefill blocks, causal"},
    {1, 2, 2, 8, 1, false, "one key"},
};

enum class MaskKind { None, Bool, Additive };

// float64 attention over the same views (the kernel's domain: q and the
// centroids are both rotated, no rotation here).
template <typename S>
std::vector<double> reference(
    const AttnArgs& a,
    const std::vector<float>& q,
    const View<uint32_t>& k,
    const View<S>& ks,
    const View<uint32_t>& v,
    const View<S>& vs,
    int kbits,
    int vbits) {
  const int G = a.Hq / a.Hkv;
  std::vector<double> out(int64_t(a.B) * a.Hq * a.qL * a.Dv, 0.0);
  std::vector<float> kc(a.Dk), vc(a.Dv);
  for (int b = 0; b < a.B; ++b) {
    for (int h = 0; h < a.Hq; ++h) {
      const int kvh = h / G;
      for (int qi = 0; qi < a.qL; ++qi) {
        const int64_t row = (int64_t(b) * a.Hq + h) * a.qL + qi;
        std::vector<double> s(a.kL);
        double mx = a.sinks ? double(a.sinks[b * a.sk_str[0] + h * a.sk_str[1] + qi * a.sk_str[2]])
                            : -INFINITY;
        for (int j = 0; j < a.kL; ++j) {
          const uint32_t* kw = k.ptr() + b * k.str[0] + kvh * k.str[1] + j * k.str[2];
          for (int i = 0; i < a.Dk; ++i) {
            kc[i] = turbo::codebook(kbits)[turbo::unpack_code(kw, i, a.Dk, kbits)];
          }
          double dot = 0.0;
          for (int i = 0; i < a.Dk; ++i) {
            dot += double(q[row * a.Dk + i]) * kc[i];
          }
          double sc = double(static_cast<float>(ks.ptr()[b * ks.str[0] + kvh * ks.str[1] + j * ks.str[2]]));
          double x = dot * sc * a.scale;
          if (a.causal && j > a.kL - a.qL + qi) {
            x = -FLT_MAX;
          } else if (a.mask) {
            int64_t mo = b * a.m_str[0] + h * a.m_str[1] + qi * a.m_str[2] + j * a.m_str[3];
            if (a.mask_is_bool) {
              x = static_cast<const bool*>(a.mask)[mo] ? x : -FLT_MAX;
            } else {
              x += static_cast<const float*>(a.mask)[mo];
            }
          }
          s[j] = x;
          mx = std::max(mx, x);
        }
        double l = 0.0;
        double* o = out.data() + row * a.Dv;
        if (a.sinks) {
          double p = std::exp(double(a.sinks[b * a.sk_str[0] + h * a.sk_str[1] + qi * a.sk_str[2]]) - mx);
          l += p;
          if (a.sink_values) {
            const float* sv = a.sink_values + b * a.sv_b_str + kvh * a.Dv;
            for (int i = 0; i < a.Dv; ++i) {
              o[i] += p * sv[i];
            }
          }
        }
        for (int j = 0; j < a.kL; ++j) {
          double p = std::exp(s[j] - mx);
          l += p;
          const uint32_t* vw = v.ptr() + b * v.str[0] + kvh * v.str[1] + j * v.str[2];
          double sc = double(static_cast<float>(vs.ptr()[b * vs.str[0] + kvh * vs.str[1] + j * vs.str[2]]));
          for (int i = 0; i < a.Dv; ++i) {
            o[i] += p * sc * turbo::codebook(vbits)[turbo::unpack_code(vw, i, a.Dv, vbits)];
          }
        }
        for (int i = 0; i < a.Dv; ++i) {
          o[i] /= l;
        }
      }
    }
  }
  return out;
}

struct Variant {
  Layout layout;
  Values scales;
  int word_pattern; // -1 random
  MaskKind mask;
  bool sinks;
  bool sink_values;
  bool row_sinks;
  bool bad_q; // NaN / inf in the queries
  bool bad_extras; // NaN / -inf in masks and sinks
};

template <typename S>
void check_attention(int kbits, int vbits, int dk, int dv, const Shape& sh, const Variant& var) {
  AttnArgs a{};
  a.B = sh.B, a.Hq = sh.Hq, a.Hkv = sh.Hkv, a.qL = sh.qL, a.kL = sh.kL;
  a.Dk = dk, a.Dv = dv;
  a.scale = 1.0f / std::sqrt(float(dk)); // scores of order 1
  a.causal = sh.causal;
  a.scale_type = float32; // the kernel's S is the template argument
  const int Wk = turbo::packed_width(dk, kbits);
  const int Wv = turbo::packed_width(dv, vbits);
  // Junk outside the views: random words and NaN scales, so a read of a
  // neighbouring row shows in a benign case's output.
  auto k = make_view<uint32_t>(a.B, a.Hkv, a.kL, Wk, var.layout, 0u);
  auto v = make_view<uint32_t>(a.B, a.Hkv, a.kL, Wv, var.layout, 0u);
  auto ks = make_view<S>(a.B, a.Hkv, a.kL, 1, var.layout, static_cast<S>(NAN));
  auto vs = make_view<S>(a.B, a.Hkv, a.kL, 1, var.layout, static_cast<S>(NAN));
  for (auto* buf : {&k.buf, &v.buf}) {
    for (auto& u : *buf) {
      u = randu();
    }
  }
  for (int b = 0; b < a.B; ++b) {
    for (int h = 0; h < a.Hkv; ++h) {
      for (int j = 0; j < a.kL; ++j) {
        for (int i = 0; i < Wk; ++i) {
          k.at(b, h, j, i) = draw_word(var.word_pattern);
        }
        for (int i = 0; i < Wv; ++i) {
          v.at(b, h, j, i) = draw_word(var.word_pattern);
        }
        ks.at(b, h, j, 0) = static_cast<S>(draw_scale(var.scales));
        vs.at(b, h, j, 0) = static_cast<S>(draw_scale(var.scales));
      }
    }
  }
  std::vector<float> q(int64_t(a.B) * a.Hq * a.qL * dk);
  for (auto& x : q) {
    x = randn();
  }
  if (var.bad_q) {
    q[0] = NAN;
    q[q.size() / 2] = INFINITY;
  }
  for (int i = 0; i < 3; ++i) {
    a.k_str[i] = k.str[i], a.v_str[i] = v.str[i];
    a.ks_str[i] = ks.str[i], a.vs_str[i] = vs.str[i];
  }
  a.k = k.ptr(), a.v = v.ptr(), a.ks = ks.ptr(), a.vs = vs.ptr();
  a.q = q.data();
  // Masks: (B, 1, qL, kL) broadcast over the heads (head stride 0), some
  // rows fully masked.
  std::vector<uint8_t> mbool;
  std::vector<float> mfloat;
  a.m_str[0] = int64_t(a.qL) * a.kL, a.m_str[1] = 0, a.m_str[2] = a.kL, a.m_str[3] = 1;
  if (var.mask == MaskKind::Bool) {
    mbool.resize(int64_t(a.B) * a.qL * a.kL);
    for (size_t i = 0; i < mbool.size(); ++i) {
      mbool[i] = (randu() % 10) < 7;
    }
    std::fill(mbool.begin(), mbool.begin() + a.kL, 0); // row 0 sees nothing
    static_assert(sizeof(bool) == 1);
    a.mask = mbool.data(), a.mask_is_bool = true;
  } else if (var.mask == MaskKind::Additive) {
    mfloat.resize(int64_t(a.B) * a.qL * a.kL);
    for (auto& x : mfloat) {
      x = randn();
    }
    if (var.bad_extras) {
      mfloat[0] = NAN;
      std::fill(mfloat.end() - a.kL, mfloat.end(), -INFINITY); // last row all -inf
    }
    a.mask = mfloat.data(), a.mask_is_bool = false;
  }
  std::vector<float> sinks, svals;
  if (var.sinks) {
    if (var.row_sinks) {
      sinks.resize(int64_t(a.B) * a.Hq * a.qL);
      a.sk_str[0] = int64_t(a.Hq) * a.qL, a.sk_str[1] = a.qL, a.sk_str[2] = 1;
    } else {
      sinks.resize(a.Hq);
      a.sk_str[0] = 0, a.sk_str[1] = 1, a.sk_str[2] = 0;
    }
    for (auto& x : sinks) {
      x = randn();
    }
    if (var.bad_extras) {
      sinks[0] = NAN;
      sinks.back() = INFINITY;
    }
    a.sinks = sinks.data();
    if (var.sink_values) {
      const bool shared = a.B > 1 && (randu() & 1);
      svals.resize(int64_t(shared ? 1 : a.B) * a.Hkv * dv);
      for (auto& x : svals) {
        x = randn();
      }
      a.sink_values = svals.data();
      a.sv_b_str = shared ? 0 : int64_t(a.Hkv) * dv;
    }
  }
  std::vector<float> out(int64_t(a.B) * a.Hq * a.qL * dv);
  a.out = out.data();
  attention_dispatch_bits<S>(a, kbits, vbits);
  ++g_cases;

  const bool benign = var.scales == Values::Benign && !var.bad_q && !var.bad_extras;
  if (!benign) {
    return;
  }
  auto expected = reference<S>(a, q, k, ks, v, vs, kbits, vbits);
  double num = 0.0, den = 0.0;
  bool finite = true;
  for (size_t i = 0; i < out.size(); ++i) {
    finite = finite && std::isfinite(out[i]);
    num += (out[i] - expected[i]) * (out[i] - expected[i]);
    den += expected[i] * expected[i];
  }
  const double err = std::sqrt(num / std::max(den, 1e-300));
  if (!finite || !(err < 1e-4)) {
    char msg[512];
    std::snprintf(
        msg,
        sizeof msg,
        "attention k%d v%d dk %d dv %d %s scales, %s (B %d Hq %d Hkv %d qL %d kL %d), layout %s, "
        "words %d, mask %d, sinks %d/%d/%d: %s, rel. error %.2e",
        kbits,
        vbits,
        dk,
        dv,
        type_name<S>(),
        sh.what,
        a.B,
        a.Hq,
        a.Hkv,
        a.qL,
        a.kL,
        name(var.layout),
        var.word_pattern,
        int(var.mask),
        var.sinks,
        var.row_sinks,
        var.sink_values,
        finite ? "finite" : "NON-FINITE",
        err);
    fail(msg);
  }
}

template <typename S>
void attention_cases(int kbits, int vbits, int& turn) {
  for (int di = 0; di < 6; ++di) {
    const int dk = kDims[di];
    for (const Shape& sh : kShapes) {
      // Value dim differs from the key dim in every other case.
      const int dv = (turn % 2) ? kDims[(di + turn) % 6] : dk;
      Variant var{};
      var.layout = kLayouts[turn % 6];
      var.scales = kScalePatterns[(turn / 6) % 10];
      // Every third case is benign, so each layout and shape is also
      // checked against the reference.
      if (turn % 3 == 0) {
        var.scales = Values::Benign;
      }
      var.word_pattern = (turn % 4 == 1) ? (turn / 4) % 5 : -1;
      var.mask = sh.causal ? MaskKind::None : static_cast<MaskKind>(turn % 3);
      var.sinks = turn % 2 == 0;
      var.row_sinks = var.sinks && (turn % 4 == 0);
      var.sink_values = var.sinks && (turn % 8 != 2);
      var.bad_q = turn % 7 == 5;
      var.bad_extras = turn % 5 == 4;
      check_attention<S>(kbits, vbits, dk, dv, sh, var);
      // The same case in every layout with benign values.
      if (turn % 11 == 0) {
        for (Layout l : kLayouts) {
          var.layout = l;
          var.scales = Values::Benign;
          var.bad_q = var.bad_extras = false;
          check_attention<S>(kbits, vbits, dk, dv, sh, var);
        }
      }
      ++turn;
    }
  }
}

// Rotations and the per-row sink logits on non-finite input.
void check_rotations() {
  for (int dim : kDims) {
    const int rows = 3;
    std::vector<float> x(int64_t(rows) * dim), y(x.size());
    for (auto& v : x) {
      v = randn();
    }
    x[1] = NAN;
    x[dim + 2] = INFINITY;
    rotate_rows(x.data(), y.data(), rows, dim, false);
    rotate_rows(y.data(), x.data(), rows, dim, true);
    std::vector<float16_t> h(x.size());
    rotate_rows(x.data(), h.data(), rows, dim, false);
    ++g_cases;

    AttnArgs a{};
    a.B = 2, a.Hq = 4, a.Hkv = 2, a.qL = 3, a.Dk = dim, a.scale = 0.1f;
    std::vector<bfloat16_t> q(int64_t(a.B) * a.Hq * a.qL * dim), shift(a.Hkv * dim),
        first(int64_t(a.B) * a.Hkv * dim);
    for (auto& v : q) {
      v = static_cast<bfloat16_t>(randn());
    }
    for (auto& v : shift) {
      v = static_cast<bfloat16_t>(1e30f);
    }
    for (auto& v : first) {
      v = static_cast<bfloat16_t>(randn());
    }
    first[0] = static_cast<bfloat16_t>(NAN);
    std::vector<float> sinks(a.Hq, 0.5f), out(int64_t(a.B) * a.Hq * a.qL);
    row_sink_logits<bfloat16_t>(
        q.data(), sinks.data(), shift.data(), first.data(), 0, int64_t(a.Hkv) * dim, a, out.data());
    row_sink_logits<bfloat16_t>(
        q.data(), nullptr, nullptr, first.data(), 0, int64_t(a.Hkv) * dim, a, out.data());
    ++g_cases;
  }
}

} // namespace

int main() {
  for (int bits : {3, 4}) {
    for (int dim : kDims) {
      check_codec<float>(dim, bits);
      check_codec<float16_t>(dim, bits);
      check_codec<bfloat16_t>(dim, bits);
    }
  }
  std::printf("quantize / dequantize: %d cases\n", g_cases);
  const int before = g_cases;
  int turn = 0;
  for (int kbits : {3, 4}) {
    for (int vbits : {3, 4}) {
      attention_cases<float>(kbits, vbits, turn);
      attention_cases<float16_t>(kbits, vbits, turn);
      attention_cases<bfloat16_t>(kbits, vbits, turn);
    }
  }
  std::printf("attention: %d cases\n", g_cases - before);
  check_rotations();
  std::printf("%d cases, %d failures\n", g_cases, g_failures);
  return g_failures ? 1 : 0;
}
