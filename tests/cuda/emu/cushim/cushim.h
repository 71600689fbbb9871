// cushim.h - the subset of the CUDA device language that the TurboQuant
// kernels use, executed on the CPU by the cooperative runtime of the Metal
// harness (tests/metal/shim/src/mshim_runtime.cpp): a block is a threadgroup,
// a warp a SIMD-group of 32 fibers, and every warp-wide operation (shuffles,
// __syncwarp, mma.sync, movmatrix) waits for all 32 lanes of the warp, so a
// lane that has exited or diverged fails the run instead of reading garbage.
//
// The kernel headers are compiled unmodified by a host compiler after
// tests/cuda/emu/prepass.py has rewritten what a host compiler cannot take:
// `__shared__` declarations (per-block storage from the runtime, poisoned
// with NaN bytes at the start of each block), the kernels' inline PTX (calls
// into this header, by mnemonic) and `<<<...>>>` launches (cushim::launch).
// The real CUDA headers provide the host halves of half / bfloat16 and the
// vector types; the runtime API calls the harness makes are defined in
// cushim_runtime.cpp.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#include "mshim/mshim_runtime.h"

#define CUSHIM_SITE                           \
  const char *cushim_file = __builtin_FILE(), \
             unsigned cushim_line = __builtin_LINE()
#define CUSHIM_AT cushim_file, cushim_line

namespace cushim {
namespace rt = ::mshim::rt;

// ---- thread position ------------------------------------------------------
inline uint3 u3(const rt::Dim3& d) {
  return uint3{d.x, d.y, d.z};
}
inline uint3 thread_idx() {
  return u3(rt::current_thread().thread_position_in_threadgroup);
}
inline uint3 block_idx() {
  return u3(rt::current_thread().threadgroup_position_in_grid);
}
inline dim3 block_dim() {
  const rt::Dim3& d = rt::current_thread().threads_per_threadgroup;
  return dim3(d.x, d.y, d.z);
}
inline dim3 grid_dim() {
  const rt::Dim3& d = rt::current_thread().threadgroups_per_grid;
  return dim3(d.x, d.y, d.z);
}

// ---- warp-wide operations -------------------------------------------------
enum Kind { kShuffle = 3, kSyncwarp = 100, kMma = 200, kMovmatrix = 201 };

// Waits for the warp at this operation; every lane of a full mask must be
// there (CUDA leaves a shuffle with an exited or absent lane undefined).
inline const bool*
warp_sync(unsigned mask, const char* f, unsigned l, int kind) {
  if (mask != 0xffffffffu)
    rt::fail("%s:%u: warp operation with a partial mask %08x", f, l, mask);
  const bool* act = rt::simd_sync(f, l, kind);
  for (unsigned i = 0; i < rt::kSimdWidth; i++)
    if (!act[i])
      rt::fail("%s:%u: full-mask warp operation without lane %u", f, l, i);
  return act;
}
template <typename T>
inline unsigned char* put(const T& x) {
  static_assert(
      sizeof(T) <= rt::kSlotBytes, "warp operand too large for the emulator");
  unsigned char* base = rt::simd_slots();
  std::memcpy(base + rt::simd_lane() * rt::kSlotBytes, &x, sizeof(T));
  return base;
}
template <typename T>
inline T get(const unsigned char* base, unsigned lane) {
  T v;
  std::memcpy(&v, base + lane * rt::kSlotBytes, sizeof(T));
  return v;
}
template <typename T>
inline T shuffle(unsigned mask, T v, unsigned src, const char* f, unsigned l) {
  unsigned char* base = put(v);
  warp_sync(mask, f, l, kShuffle);
  return get<T>(base, src % rt::kSimdWidth);
}

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}: D = A B + C with A 16 x
// 16 and B 16 x 8 in the PTX fragment layout (lane (g, t) = (lane / 4, lane
// % 4): a0 row g cols 2t, 2t+1; a1 row g+8; a2 row g cols 2t+8, 2t+9; a3 row
// g+8 cols 2t+8..; b0 rows 2t, 2t+1 col g; b1 rows 2t+8, 2t+9; c / d rows
// g, g+8 cols 2t, 2t+1; the lower 16 bits hold the lower index). Products
// of 16-bit operands are exact in double; the sum is rounded once to float.
template <typename T>
inline float lo16(uint32_t w) {
  uint16_t h = uint16_t(w & 0xffffu);
  T x;
  std::memcpy(&x, &h, 2);
  return float(x);
}
template <typename T>
inline float hi16(uint32_t w) {
  return lo16<T>(w >> 16);
}
struct MmaFrag {
  uint32_t a[4], b[2];
};
template <typename T>
inline void mma_m16n8k16(
    float& d0,
    float& d1,
    float& d2,
    float& d3,
    uint32_t a0,
    uint32_t a1,
    uint32_t a2,
    uint32_t a3,
    uint32_t b0,
    uint32_t b1,
    CUSHIM_SITE) {
  unsigned char* base = put(MmaFrag{{a0, a1, a2, a3}, {b0, b1}});
  warp_sync(0xffffffffu, CUSHIM_AT, kMma);
  float A[16][16], B[16][8];
  for (unsigned lane = 0; lane < 32; lane++) {
    const MmaFrag fr = get<MmaFrag>(base, lane);
    const unsigned g = lane / 4, t = lane % 4;
    for (int h = 0; h < 2; h++) {
      auto v = [&](uint32_t w) { return h ? hi16<T>(w) : lo16<T>(w); };
      A[g][2 * t + h] = v(fr.a[0]);
      A[g + 8][2 * t + h] = v(fr.a[1]);
      A[g][2 * t + 8 + h] = v(fr.a[2]);
      A[g + 8][2 * t + 8 + h] = v(fr.a[3]);
      B[2 * t + h][g] = v(fr.b[0]);
      B[2 * t + 8 + h][g] = v(fr.b[1]);
    }
  }
  const unsigned lane = rt::simd_lane(), g = lane / 4, t = lane % 4;
  float* d[4] = {&d0, &d1, &d2, &d3};
  for (int i = 0; i < 4; i++) {
    const unsigned r = g + 8 * (i / 2), c = 2 * t + i % 2;
    double s = *d[i];
    for (int k = 0; k < 16; k++)
      s += double(A[r][k]) * double(B[k][c]);
    *d[i] = float(s);
  }
}

// movmatrix.sync.aligned.m8n8.trans.b16: lane (g, t) holds row g, cols 2t,
// 2t+1 of an 8 x 8 matrix; returns the same entries of its transpose.
inline uint32_t movmatrix_trans(uint32_t x, CUSHIM_SITE) {
  unsigned char* base = put(x);
  warp_sync(0xffffffffu, CUSHIM_AT, kMovmatrix);
  const unsigned lane = rt::simd_lane(), g = lane / 4, t = lane % 4;
  auto entry = [&](unsigned r, unsigned c) { // M[r][c]
    return (get<uint32_t>(base, 4 * r + c / 2) >> (16 * (c % 2))) & 0xffffu;
  };
  return entry(2 * t, g) | (entry(2 * t + 1, g) << 16);
}

// ---- shared memory --------------------------------------------------------
// Dynamic shared memory of the current launch, and the block's base of it
// for the 32-bit shared-window addresses of __cvta_generic_to_shared.
extern size_t g_dynamic_smem;
extern thread_local unsigned char* t_dynamic_base;

template <typename A, size_t Align = alignof(A)>
inline A* shared() {
  return static_cast<A*>(rt::tg_alloc(sizeof(A), Align));
}
inline void* dynamic_shared(size_t align) {
  if (g_dynamic_smem == 0)
    rt::fail("extern __shared__ array used by a launch with 0 dynamic bytes");
  t_dynamic_base =
      static_cast<unsigned char*>(rt::tg_alloc(g_dynamic_smem, align));
  return t_dynamic_base;
}
inline uint32_t shared_address(const void* p, CUSHIM_SITE) {
  const unsigned char* c = static_cast<const unsigned char*>(p);
  if (!t_dynamic_base || c < t_dynamic_base ||
      c > t_dynamic_base + g_dynamic_smem)
    rt::fail(
        "%s:%u: __cvta_generic_to_shared of a pointer outside dynamic shared memory",
        CUSHIM_AT);
  return uint32_t(c - t_dynamic_base);
}
inline uint32_t ld_shared_b32(uint32_t addr, CUSHIM_SITE) {
  if (addr % 4 != 0 || size_t(addr) + 4 > g_dynamic_smem)
    rt::fail(
        "%s:%u: ld.shared.b32 at %u (dynamic shared memory of %zu bytes)",
        CUSHIM_AT,
        addr,
        g_dynamic_smem);
  uint32_t v;
  std::memcpy(&v, t_dynamic_base + addr, 4);
  return v;
}

// ex2.approx.ftz.f32: 2^x with subnormal inputs and results flushed to 0.
inline float ex2_approx_ftz(float x) {
  if (std::fabs(x) < FLT_MIN)
    x = 0.0f;
  const float y = std::exp2(x);
  return std::fabs(y) < FLT_MIN ? 0.0f : y;
}

// ---- launches -------------------------------------------------------------
struct LaunchError {
  static cudaError_t& last();
};
rt::LaunchOptions& options(); // schedule of every launch (cushim_runtime.cpp)
bool smem_allowed(
    const void* kernel,
    size_t bytes); // cudaFuncSetAttribute's limit

struct Launch {
  dim3 grid, block;
  size_t smem;
  template <typename... P, typename... A>
  void operator()(void (*kernel)(P...), A&&... a) const {
    const unsigned long long threads = 1ull * block.x * block.y * block.z;
    if (threads == 0 || threads > 1024 || grid.x == 0 || grid.y == 0 ||
        grid.z == 0 || grid.y > 65535 || grid.z > 65535) {
      LaunchError::last() = cudaErrorInvalidConfiguration;
      return;
    }
    if (!smem_allowed(reinterpret_cast<const void*>(kernel), smem)) {
      LaunchError::last() = cudaErrorInvalidValue;
      return;
    }
    std::tuple<std::decay_t<P>...> args(static_cast<P>(std::forward<A>(a))...);
    g_dynamic_smem = smem;
    rt::dispatch_threadgroups(
        rt::Dim3{grid.x, grid.y, grid.z},
        rt::Dim3{block.x, block.y, block.z},
        [&](const rt::ThreadCtx&) {
          auto mine = args; // parameters are per-thread copies
          std::apply(kernel, mine);
        },
        options());
    g_dynamic_smem = 0;
  }
};
inline Launch
launch(dim3 grid, dim3 block, size_t smem = 0, cudaStream_t = nullptr) {
  return Launch{grid, block, smem};
}

template <typename A, typename B>
inline auto min_(A a, B b) {
  using C = std::common_type_t<A, B>;
  return C(a) < C(b) ? C(a) : C(b);
}
template <typename A, typename B>
inline auto max_(A a, B b) {
  using C = std::common_type_t<A, B>;
  return C(a) < C(b) ? C(b) : C(a);
}
} // namespace cushim

// ---- the device language --------------------------------------------------
#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

#define threadIdx (::cushim::thread_idx())
#define blockIdx (::cushim::block_idx())
#define blockDim (::cushim::block_dim())
#define gridDim (::cushim::grid_dim())

inline void __syncthreads(CUSHIM_SITE) {
  ::mshim::rt::threadgroup_barrier(CUSHIM_AT);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, CUSHIM_SITE) {
  ::cushim::warp_sync(mask, CUSHIM_AT, ::cushim::kSyncwarp);
}
template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32, CUSHIM_SITE) {
  const unsigned lane = ::mshim::rt::simd_lane();
  const unsigned from =
      (lane & ~unsigned(width - 1)) + (unsigned(src) & unsigned(width - 1));
  return ::cushim::shuffle(mask, v, from, CUSHIM_AT);
}
template <typename T>
inline T __shfl_xor_sync(
    unsigned mask,
    T v,
    int lane_mask,
    int width = 32,
    CUSHIM_SITE) {
  const unsigned lane = ::mshim::rt::simd_lane();
  unsigned from = lane ^ unsigned(lane_mask);
  if ((from & ~unsigned(width - 1)) != (lane & ~unsigned(width - 1)))
    from = lane;
  return ::cushim::shuffle(mask, v, from, CUSHIM_AT);
}

template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
inline uint32_t __byte_perm(uint32_t x, uint32_t y, uint32_t s) {
  const uint64_t v = (uint64_t(y) << 32) | x;
  uint32_t r = 0;
  for (int i = 0; i < 4; i++) {
    const unsigned sel = (s >> (4 * i)) & 7u;
    r |= uint32_t((v >> (8 * sel)) & 0xffu) << (8 * i);
  }
  return r;
}
template <typename T>
inline uint32_t __cvta_generic_to_shared(T* p, CUSHIM_SITE) {
  return ::cushim::shared_address(p, CUSHIM_AT);
}

// Correctly rounded float arithmetic (the harness compiles with
// -ffp-contract=off, so no product is fused where the kernel rounds it).
inline float __fadd_rn(float a, float b) {
  return a + b;
}
inline float __fsub_rn(float a, float b) {
  return a - b;
}
inline float __fmul_rn(float a, float b) {
  return a * b;
}
inline float __fdiv_rn(float a, float b) {
  return a / b;
}
inline float __fsqrt_rn(float a) {
  return std::sqrt(a);
}
inline float __fmaf_rn(float a, float b, float c) {
  return std::fma(a, b, c);
}
inline float __int_as_float(int x) {
  return __builtin_bit_cast(float, x);
}
inline uint32_t __float_as_uint(float x) {
  return __builtin_bit_cast(uint32_t, x);
}
inline int __float_as_int(float x) {
  return __builtin_bit_cast(int, x);
}
inline float __uint_as_float(uint32_t x) {
  return __builtin_bit_cast(float, x);
}
inline void __sincosf(float x, float* s, float* c) {
  *s = std::sin(x);
  *c = std::cos(x);
}
// CUDA's integer min / max overloads, mixed widths as common_type.
template <
    typename A,
    typename B,
    typename = std::enable_if_t<std::is_integral_v<A> && std::is_integral_v<B>>>
inline auto min(A a, B b) {
  return ::cushim::min_(a, b);
}
template <
    typename A,
    typename B,
    typename = std::enable_if_t<std::is_integral_v<A> && std::is_integral_v<B>>>
inline auto max(A a, B b) {
  return ::cushim::max_(a, b);
}
// CUDA's global-namespace classification functions.
using std::isfinite;
using std::isinf;
using std::isnan;
