// mshim_cl.h - a declaration-only MSL shim for clang's C++ for OpenCL mode
// (clang -x clcpp -cl-std=clc++2021), used by check_kernels.sh --clcpp.
//
// Unlike mshim.h (clang C++ mode with numbered address_space attributes) this
// maps MSL's address spaces onto OpenCL's, so clang applies its address-space
// rules to them:
//   device -> __global, constant -> __constant (read-only), threadgroup -> __local,
//   thread -> __private.
// Compiled with pipes, device enqueue, program-scope global variables and
// fp64 switched off (see check_kernels.sh): casts between named address
// spaces are errors (C++ mode accepts C-style casts between its numbered
// address spaces), `thread T*` does not deduce from a device pointer,
// program-scope and static local variables must be `constant`, `double` is
// an error and unsuffixed floating literals are float, as in MSL. The
// generic address space stays on, so an unqualified pointer or reference is
// __generic (laxer than MSL's `thread`; C++ mode catches those), and struct
// copies from device memory work as in MSL. as_probe.sh lists the cases.
//
// No standard header is included (libstdc++ does not parse as C++ for
// OpenCL): the type traits, numeric_limits, math, SIMD-group functions and
// barriers the kernels use are declared here.  Nothing here runs.
#pragma once

#pragma OPENCL EXTENSION cl_khr_fp16 : enable

// ---- predefined macros of the Metal compiler ------------------------------
#ifndef __METAL_VERSION__
#define __METAL_VERSION__ 310
#endif
#define __METAL__ 1
#define __HAVE_BFLOAT__ 1
#define METAL_FUNC inline __attribute__((__always_inline__))
#define __METAL_MAYBE_FAST_MATH__ 0
#define __METAL_FAST_MATH__ 1
#define __METAL_PRECISE_MATH__ 2

#ifndef M_E_F
#define M_E_F 2.71828182845904523536f
#endif
#ifndef M_LOG2E_F
#define M_LOG2E_F 1.44269504088896340736f
#endif
#ifndef M_LOG10E_F
#define M_LOG10E_F 0.434294481903251827651f
#endif
#ifndef M_LN2_F
#define M_LN2_F 0.693147180559945309417f
#endif
#ifndef M_LN10_F
#define M_LN10_F 2.30258509299404568402f
#endif
#ifndef M_PI_F
#define M_PI_F 3.14159265358979323846f
#endif
#ifndef M_PI_2_F
#define M_PI_2_F 1.57079632679489661923f
#endif
#ifndef M_PI_4_F
#define M_PI_4_F 0.785398163397448309616f
#endif
#ifndef M_1_PI_F
#define M_1_PI_F 0.318309886183790671538f
#endif
#ifndef M_2_PI_F
#define M_2_PI_F 0.636619772367581343076f
#endif
#ifndef M_2_SQRTPI_F
#define M_2_SQRTPI_F 1.12837916709551257390f
#endif
#ifndef M_SQRT2_F
#define M_SQRT2_F 1.41421356237309504880f
#endif
#ifndef M_SQRT1_2_F
#define M_SQRT1_2_F 0.707106781186547524401f
#endif
#ifndef M_LOG2E_H
#define M_LOG2E_H ((half)M_LOG2E_F)
#endif
#ifndef M_LN2_H
#define M_LN2_H ((half)M_LN2_F)
#endif
#ifndef M_PI_H
#define M_PI_H ((half)M_PI_F)
#endif
#ifndef MAXFLOAT
#define MAXFLOAT 0x1.fffffep+127f
#endif
#ifndef HUGE_VALF
#define HUGE_VALF __builtin_huge_valf()
#endif
#ifndef INFINITY
#define INFINITY __builtin_inff()
#endif
#ifndef NAN
#define NAN __builtin_nanf("")
#endif

// ---- address spaces --------------------------------------------------------
#define device __global
#define constant __constant  // read-only in OpenCL too (writes are errors)
#define threadgroup __local
#define thread __private
#define kernel

// ---- scalar types ------------------------------------------------------------
typedef unsigned char uchar;
typedef unsigned short ushort;
typedef unsigned int uint;
typedef unsigned long ulong;
typedef __bf16 bfloat;
typedef __SIZE_TYPE__ size_t;
typedef __PTRDIFF_TYPE__ ptrdiff_t;
typedef signed char int8_t;
typedef short int16_t;
typedef int int32_t;
typedef long int64_t;
typedef unsigned char uint8_t;
typedef unsigned short uint16_t;
typedef unsigned int uint32_t;
typedef unsigned long uint64_t;

namespace metal {

template <typename T, int N>
using vec = T __attribute__((ext_vector_type(N)));

// ---- type traits (what MSL's <metal_type_traits> provides) ----------------
template <typename T, T v>
struct integral_constant {
  static constexpr constant T value = v;
  using value_type = T;
  using type = integral_constant;
  constexpr operator value_type() const { return value; }
};
template <bool B>
using bool_constant = integral_constant<bool, B>;
using true_type = bool_constant<true>;
using false_type = bool_constant<false>;

template <bool B, typename T, typename F>
struct conditional { using type = T; };
template <typename T, typename F>
struct conditional<false, T, F> { using type = F; };
template <bool B, typename T, typename F>
using conditional_t = typename conditional<B, T, F>::type;

template <bool B, typename T = void>
struct enable_if {};
template <typename T>
struct enable_if<true, T> { using type = T; };
template <bool B, typename T = void>
using enable_if_t = typename enable_if<B, T>::type;

template <typename T, typename U>
struct is_same : bool_constant<__is_same(T, U)> {};
template <typename T, typename U>
constexpr constant bool is_same_v = __is_same(T, U);

template <typename T> struct remove_const { using type = T; };
template <typename T> struct remove_const<const T> { using type = T; };
template <typename T> using remove_const_t = typename remove_const<T>::type;
template <typename T> struct remove_volatile { using type = T; };
template <typename T> struct remove_volatile<volatile T> { using type = T; };
template <typename T> struct remove_cv { using type = typename remove_volatile<typename remove_const<T>::type>::type; };
template <typename T> using remove_cv_t = typename remove_cv<T>::type;
template <typename T> struct remove_reference { using type = T; };
template <typename T> struct remove_reference<T&> { using type = T; };
template <typename T> struct remove_reference<T&&> { using type = T; };
template <typename T> using remove_reference_t = typename remove_reference<T>::type;
template <typename T> struct remove_pointer { using type = T; };
template <typename T> struct remove_pointer<T*> { using type = T; };
template <typename T> struct remove_pointer<T* const> { using type = T; };
template <typename T> using remove_pointer_t = typename remove_pointer<T>::type;
template <typename T> struct decay { using type = remove_cv_t<remove_reference_t<T>>; };
template <typename T> using decay_t = typename decay<T>::type;

template <typename T> struct remove_addrspace { using type = T; };
template <typename T> struct remove_addrspace<__global T> { using type = T; };
template <typename T> struct remove_addrspace<__constant T> { using type = T; };
template <typename T> struct remove_addrspace<__local T> { using type = T; };
template <typename T> struct remove_addrspace<__private T> { using type = T; };
template <typename T> using remove_addrspace_t = typename remove_addrspace<T>::type;

template <typename T> T&& declval();

template <typename T>
struct is_integral : bool_constant<__is_integral(T)> {};
template <typename T>
constexpr constant bool is_integral_v = __is_integral(T);
template <typename T>
struct is_floating_point
    : bool_constant<__is_same(remove_cv_t<T>, float) || __is_same(remove_cv_t<T>, half) ||
                    __is_same(remove_cv_t<T>, bfloat)> {};
template <typename T>
constexpr constant bool is_floating_point_v = is_floating_point<T>::value;
template <typename T>
struct is_arithmetic : bool_constant<is_integral_v<T> || is_floating_point_v<T>> {};
template <typename T>
constexpr constant bool is_arithmetic_v = is_arithmetic<T>::value;
template <typename T>
struct is_scalar : is_arithmetic<T> {};
template <typename T>
constexpr constant bool is_scalar_v = is_scalar<T>::value;
template <typename T>
struct is_signed : bool_constant<is_arithmetic_v<T> && (remove_cv_t<T>(-1) < remove_cv_t<T>(0))> {};
template <typename T>
constexpr constant bool is_signed_v = is_signed<T>::value;
template <typename T>
struct is_unsigned : bool_constant<is_integral_v<T> && !is_signed_v<T>> {};
template <typename T>
constexpr constant bool is_unsigned_v = is_unsigned<T>::value;
template <typename T>
struct is_pointer : false_type {};
template <typename T>
struct is_pointer<T*> : true_type {};
template <typename T>
constexpr constant bool is_pointer_v = is_pointer<T>::value;
template <typename T>
struct is_void : bool_constant<__is_same(remove_cv_t<T>, void)> {};
template <typename F, typename T>
struct is_convertible : bool_constant<__is_convertible(F, T)> {};
template <typename F, typename T>
constexpr constant bool is_convertible_v = __is_convertible(F, T);
template <typename T>
struct make_unsigned { using type = __make_unsigned(T); };
template <typename T>
using make_unsigned_t = typename make_unsigned<T>::type;
template <typename T>
struct make_signed { using type = __make_signed(T); };
template <typename T>
using make_signed_t = typename make_signed<T>::type;

// ---- numeric_limits ------------------------------------------------------------
template <typename T>
struct numeric_limits;
#define MSHIM_CL_INT_LIMITS(T, lo, hi)                                   \
  template <>                                                            \
  struct numeric_limits<T> {                                             \
    static constexpr constant bool is_specialized = true;                \
    static constexpr constant bool is_integer = true;                    \
    static constexpr constant bool is_signed = static_cast<T>(-1) < static_cast<T>(0);             \
    static constexpr T min() { return lo; }                              \
    static constexpr T lowest() { return lo; }                           \
    static constexpr T max() { return hi; }                              \
  };
MSHIM_CL_INT_LIMITS(bool, false, true)
MSHIM_CL_INT_LIMITS(char, char(-128), char(127))
MSHIM_CL_INT_LIMITS(signed char, (signed char)-128, (signed char)127)
MSHIM_CL_INT_LIMITS(uchar, uchar(0), uchar(255))
MSHIM_CL_INT_LIMITS(short, short(-32768), short(32767))
MSHIM_CL_INT_LIMITS(ushort, ushort(0), ushort(65535))
MSHIM_CL_INT_LIMITS(int, -2147483647 - 1, 2147483647)
MSHIM_CL_INT_LIMITS(uint, 0u, 4294967295u)
MSHIM_CL_INT_LIMITS(long, -9223372036854775807l - 1, 9223372036854775807l)
MSHIM_CL_INT_LIMITS(ulong, 0ul, 18446744073709551615ul)
#undef MSHIM_CL_INT_LIMITS
#define MSHIM_CL_FP_LIMITS(T, U, dig, mn, mx, lw, eps, inf, qnan, dmin) \
  template <>                                                            \
  struct numeric_limits<T> {                                             \
    static constexpr constant bool is_specialized = true;                \
    static constexpr constant bool is_integer = false;                   \
    static constexpr constant bool is_signed = true;                     \
    static constexpr constant int digits = dig;                          \
    static constexpr T min() { return __builtin_bit_cast(T, (U)mn); }    \
    static constexpr T max() { return __builtin_bit_cast(T, (U)mx); }    \
    static constexpr T lowest() { return __builtin_bit_cast(T, (U)lw); } \
    static constexpr T epsilon() { return __builtin_bit_cast(T, (U)eps); } \
    static constexpr T infinity() { return __builtin_bit_cast(T, (U)inf); } \
    static constexpr T quiet_NaN() { return __builtin_bit_cast(T, (U)qnan); } \
    static constexpr T denorm_min() { return __builtin_bit_cast(T, (U)dmin); } \
  };
MSHIM_CL_FP_LIMITS(float, uint, 24, 0x00800000u, 0x7F7FFFFFu, 0xFF7FFFFFu, 0x34000000u,
                   0x7F800000u, 0x7FC00000u, 0x00000001u)
MSHIM_CL_FP_LIMITS(half, ushort, 11, 0x0400, 0x7BFF, 0xFBFF, 0x1400, 0x7C00, 0x7E00, 0x0001)
MSHIM_CL_FP_LIMITS(bfloat, ushort, 8, 0x0080, 0x7F7F, 0xFF7F, 0x3C00, 0x7F80, 0x7FC0, 0x0001)
#undef MSHIM_CL_FP_LIMITS

template <typename T, typename U>
METAL_FUNC constexpr T as_type(U x) {
  static_assert(sizeof(T) == sizeof(U), "as_type: size mismatch");
  return __builtin_bit_cast(T, x);
}

} // namespace metal

#define MSHIM_VEC_TYPEDEFS(T, name) \
  typedef metal::vec<T, 2> name##2;  \
  typedef metal::vec<T, 3> name##3;  \
  typedef metal::vec<T, 4> name##4;
MSHIM_VEC_TYPEDEFS(float, float)
MSHIM_VEC_TYPEDEFS(half, half)
MSHIM_VEC_TYPEDEFS(bfloat, bfloat)
MSHIM_VEC_TYPEDEFS(int, int)
MSHIM_VEC_TYPEDEFS(uint, uint)
MSHIM_VEC_TYPEDEFS(short, short)
MSHIM_VEC_TYPEDEFS(ushort, ushort)
MSHIM_VEC_TYPEDEFS(char, char)
MSHIM_VEC_TYPEDEFS(uchar, uchar)
MSHIM_VEC_TYPEDEFS(long, long)
MSHIM_VEC_TYPEDEFS(ulong, ulong)

// 1.0bf (bfloat literal); 1.0h is native in OpenCL with cl_khr_fp16.
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wuser-defined-literals"
constexpr bfloat operator"" bf(unsigned long long x) { return static_cast<bfloat>(static_cast<float>(x)); }
#pragma clang diagnostic pop

// ---- functional-notation vector constructors: float4(a, b, c, d) -----------
namespace mshim {
template <typename T>
struct vinfo {
  static constexpr constant int n = 1;
  using elem = T;
};
template <typename T, int N>
struct vinfo<T __attribute__((ext_vector_type(N)))> {
  static constexpr constant int n = N;
  using elem = T;
};
template <typename T, int N, typename... A>
metal::vec<T, N> make_vec(A... a);
} // namespace mshim
#define float2(...) ::mshim::make_vec<float, 2>(__VA_ARGS__)
#define float3(...) ::mshim::make_vec<float, 3>(__VA_ARGS__)
#define float4(...) ::mshim::make_vec<float, 4>(__VA_ARGS__)
#define half2(...) ::mshim::make_vec<half, 2>(__VA_ARGS__)
#define half3(...) ::mshim::make_vec<half, 3>(__VA_ARGS__)
#define half4(...) ::mshim::make_vec<half, 4>(__VA_ARGS__)
#define int2(...) ::mshim::make_vec<int, 2>(__VA_ARGS__)
#define int3(...) ::mshim::make_vec<int, 3>(__VA_ARGS__)
#define int4(...) ::mshim::make_vec<int, 4>(__VA_ARGS__)
#define uint2(...) ::mshim::make_vec<uint, 2>(__VA_ARGS__)
#define uint3(...) ::mshim::make_vec<uint, 3>(__VA_ARGS__)
#define uint4(...) ::mshim::make_vec<uint, 4>(__VA_ARGS__)
#define short2(...) ::mshim::make_vec<short, 2>(__VA_ARGS__)
#define ushort2(...) ::mshim::make_vec<ushort, 2>(__VA_ARGS__)
#define ulong2(...) ::mshim::make_vec<ulong, 2>(__VA_ARGS__)
#define ulong3(...) ::mshim::make_vec<ulong, 3>(__VA_ARGS__)
#define long2(...) ::mshim::make_vec<long, 2>(__VA_ARGS__)

// ---- math: declarations (metal::, metal::fast::, metal::precise::) -------
#define MSHIM_CL_F1(name) template <typename T> T name(T x);
#define MSHIM_CL_F2(name) template <typename T> T name(T x, T y);
#define MSHIM_CL_F3(name) template <typename T> T name(T x, T y, T z);
#define MSHIM_CL_MATH                                                        \
  MSHIM_CL_F1(exp) MSHIM_CL_F1(exp2) MSHIM_CL_F1(exp10) MSHIM_CL_F1(log)      \
  MSHIM_CL_F1(log2) MSHIM_CL_F1(log10) MSHIM_CL_F1(sqrt) MSHIM_CL_F1(rsqrt)   \
  MSHIM_CL_F1(sin) MSHIM_CL_F1(cos) MSHIM_CL_F1(tan) MSHIM_CL_F1(asin)        \
  MSHIM_CL_F1(acos) MSHIM_CL_F1(atan) MSHIM_CL_F1(sinh) MSHIM_CL_F1(cosh)     \
  MSHIM_CL_F1(tanh) MSHIM_CL_F1(asinh) MSHIM_CL_F1(acosh) MSHIM_CL_F1(atanh)  \
  MSHIM_CL_F1(floor) MSHIM_CL_F1(ceil) MSHIM_CL_F1(round) MSHIM_CL_F1(rint)   \
  MSHIM_CL_F1(trunc) MSHIM_CL_F1(fabs) MSHIM_CL_F1(fract)                     \
  MSHIM_CL_F2(pow) MSHIM_CL_F2(powr) MSHIM_CL_F2(fmax) MSHIM_CL_F2(fmin)      \
  MSHIM_CL_F2(fmod) MSHIM_CL_F2(atan2) MSHIM_CL_F2(copysign) MSHIM_CL_F2(divide) \
  MSHIM_CL_F3(fma)
namespace metal {
MSHIM_CL_MATH
namespace fast {
MSHIM_CL_MATH
}
namespace precise {
MSHIM_CL_MATH
}
template <typename T>
METAL_FUNC constexpr T max(T a, T b) { return a > b ? a : b; }
template <typename T>
METAL_FUNC constexpr T min(T a, T b) { return a < b ? a : b; }
template <typename T>
METAL_FUNC constexpr T abs(T a) { return a < T(0) ? T(-a) : a; }
template <typename T>
METAL_FUNC constexpr T clamp(T x, T lo, T hi) { return min(max(x, lo), hi); }
template <typename T>
METAL_FUNC constexpr T select(T a, T b, bool c) { return c ? b : a; }
template <typename T> bool isnan(T x);
template <typename T> bool isinf(T x);
template <typename T> bool isfinite(T x);
template <typename T> bool signbit(T x);
template <typename T, int N> T dot(vec<T, N> a, vec<T, N> b);
template <typename T> T popcount(T x);
template <typename T> T mulhi(T a, T b);
} // namespace metal

// the __metal_* builtins MLX's bf16_math.h calls
#define MSHIM_CL_BI1(name) template <typename T, typename M> T __metal_##name(T x, M);
#define MSHIM_CL_BI2(name) template <typename T, typename M> T __metal_##name(T x, T y, M);
#define MSHIM_CL_BI3(name) template <typename T, typename M> T __metal_##name(T x, T y, T z, M);
MSHIM_CL_BI1(fabs) MSHIM_CL_BI1(acos) MSHIM_CL_BI1(acosh) MSHIM_CL_BI1(asin)
MSHIM_CL_BI1(asinh) MSHIM_CL_BI1(atan) MSHIM_CL_BI1(atanh) MSHIM_CL_BI1(ceil)
MSHIM_CL_BI1(cos) MSHIM_CL_BI1(cosh) MSHIM_CL_BI1(exp) MSHIM_CL_BI1(exp10)
MSHIM_CL_BI1(exp2) MSHIM_CL_BI1(floor) MSHIM_CL_BI1(fract) MSHIM_CL_BI1(log)
MSHIM_CL_BI1(log10) MSHIM_CL_BI1(log2) MSHIM_CL_BI1(rint) MSHIM_CL_BI1(round)
MSHIM_CL_BI1(rsqrt) MSHIM_CL_BI1(sin) MSHIM_CL_BI1(sinh) MSHIM_CL_BI1(sqrt)
MSHIM_CL_BI1(tan) MSHIM_CL_BI1(tanh) MSHIM_CL_BI1(trunc) MSHIM_CL_BI1(cospi)
MSHIM_CL_BI1(sinpi) MSHIM_CL_BI1(tanpi)
MSHIM_CL_BI2(atan2) MSHIM_CL_BI2(divide) MSHIM_CL_BI2(fmax) MSHIM_CL_BI2(fmin)
MSHIM_CL_BI2(fmod) MSHIM_CL_BI2(pow) MSHIM_CL_BI2(powr)
MSHIM_CL_BI3(fmax3) MSHIM_CL_BI3(fmin3) MSHIM_CL_BI3(fmedian3)
template <typename T> T __metal_fma(T x, T y, T z);
template <typename T> T __metal_frexp(T x, thread int* e);
template <typename T, typename M> T __metal_ldexp(T x, int k, M);
template <typename T> T __metal_nextafter(T x, T y);

// ---- barriers, SIMD-group functions ------------------------------------------
namespace metal {
enum class mem_flags : unsigned {
  mem_none = 0,
  mem_device = 1,
  mem_threadgroup = 2,
  mem_texture = 4,
  mem_threadgroup_imageblock = 8,
  mem_object_data = 16,
};
constexpr mem_flags operator|(mem_flags a, mem_flags b) { return mem_flags(unsigned(a) | unsigned(b)); }
void threadgroup_barrier(mem_flags);
void simdgroup_barrier(mem_flags);
#define MSHIM_CL_S1(name) template <typename T> T name(T x);
MSHIM_CL_S1(simd_sum) MSHIM_CL_S1(simd_product) MSHIM_CL_S1(simd_max)
MSHIM_CL_S1(simd_min) MSHIM_CL_S1(simd_and) MSHIM_CL_S1(simd_or) MSHIM_CL_S1(simd_xor)
MSHIM_CL_S1(simd_prefix_inclusive_sum) MSHIM_CL_S1(simd_prefix_exclusive_sum)
MSHIM_CL_S1(simd_prefix_inclusive_product) MSHIM_CL_S1(simd_prefix_exclusive_product)
MSHIM_CL_S1(simd_broadcast_first)
MSHIM_CL_S1(quad_sum) MSHIM_CL_S1(quad_max) MSHIM_CL_S1(quad_min)
#define MSHIM_CL_S2(name) template <typename T> T name(T x, ushort k);
MSHIM_CL_S2(simd_shuffle) MSHIM_CL_S2(simd_broadcast) MSHIM_CL_S2(simd_shuffle_xor)
MSHIM_CL_S2(simd_shuffle_down) MSHIM_CL_S2(simd_shuffle_up)
MSHIM_CL_S2(simd_shuffle_rotate_down) MSHIM_CL_S2(simd_shuffle_rotate_up)
MSHIM_CL_S2(quad_shuffle) MSHIM_CL_S2(quad_broadcast) MSHIM_CL_S2(quad_shuffle_xor)
MSHIM_CL_S2(quad_shuffle_down) MSHIM_CL_S2(quad_shuffle_up)
template <typename T> T simd_shuffle_and_fill_down(T x, T fill, ushort delta);
template <typename T> T simd_shuffle_and_fill_down(T x, T fill, ushort delta, ushort modulo);
template <typename T> T simd_shuffle_and_fill_up(T x, T fill, ushort delta);
template <typename T> T simd_shuffle_and_fill_up(T x, T fill, ushort delta, ushort modulo);
struct simd_vote {
  ulong v;
  explicit constexpr operator ulong() const { return v; }
  constexpr bool all() const { return v == 0xFFFFFFFFul; }
  constexpr bool any() const { return v != 0; }
};
simd_vote simd_ballot(bool b);
bool simd_all(bool b);
bool simd_any(bool b);
bool simd_is_first();

// simdgroup_matrix (8x8 only, as the mshim runtime). Loads and stores take
// a device or threadgroup pointer to the matrix's own element type (MSL has
// no converting load); origin is (column, row) of the source.
template <typename T, int Cols, int Rows>
struct simdgroup_matrix {
  static_assert(Cols == 8 && Rows == 8, "mshim_cl: only 8x8 simdgroup_matrix");
  vec<T, 2> e;
  thread vec<T, 2>& thread_elements() thread { return e; }
};
template <typename T>
void simdgroup_load(thread simdgroup_matrix<T, 8, 8>& d, const device T* src,
                    ulong elements_per_row = 8, ulong2 matrix_origin = ulong2(0), bool transpose_matrix = false);
template <typename T>
void simdgroup_load(thread simdgroup_matrix<T, 8, 8>& d, const threadgroup T* src,
                    ulong elements_per_row = 8, ulong2 matrix_origin = ulong2(0), bool transpose_matrix = false);
template <typename T>
void simdgroup_store(simdgroup_matrix<T, 8, 8> a, device T* dst,
                     ulong elements_per_row = 8, ulong2 matrix_origin = ulong2(0), bool transpose_matrix = false);
template <typename T>
void simdgroup_store(simdgroup_matrix<T, 8, 8> a, threadgroup T* dst,
                     ulong elements_per_row = 8, ulong2 matrix_origin = ulong2(0), bool transpose_matrix = false);
template <typename TD, typename TA, typename TB, typename TC>
void simdgroup_multiply_accumulate(thread simdgroup_matrix<TD, 8, 8>& d,
                                   simdgroup_matrix<TA, 8, 8> a,
                                   simdgroup_matrix<TB, 8, 8> b,
                                   simdgroup_matrix<TC, 8, 8> c);
template <typename TD, typename TA, typename TB>
void simdgroup_multiply(thread simdgroup_matrix<TD, 8, 8>& d,
                        simdgroup_matrix<TA, 8, 8> a,
                        simdgroup_matrix<TB, 8, 8> b);
template <typename T, int Cols, int Rows>
simdgroup_matrix<T, Cols, Rows> make_filled_simdgroup_matrix(T value);

// atomics (device and threadgroup; memory_order_relaxed only, as in MSL)
enum memory_order { memory_order_relaxed };
template <typename T> struct atomic { T v; };
using atomic_int = atomic<int>;
using atomic_uint = atomic<uint>;
using atomic_float = atomic<float>;
template <typename T> void atomic_store_explicit(volatile device atomic<T>* o, T x, memory_order);
template <typename T> void atomic_store_explicit(volatile threadgroup atomic<T>* o, T x, memory_order);
template <typename T> T atomic_load_explicit(const volatile device atomic<T>* o, memory_order);
template <typename T> T atomic_load_explicit(const volatile threadgroup atomic<T>* o, memory_order);
template <typename T> T atomic_fetch_add_explicit(volatile device atomic<T>* o, T x, memory_order);
template <typename T> T atomic_fetch_add_explicit(volatile threadgroup atomic<T>* o, T x, memory_order);
template <typename T> T atomic_fetch_max_explicit(volatile device atomic<T>* o, T x, memory_order);
template <typename T> T atomic_fetch_min_explicit(volatile device atomic<T>* o, T x, memory_order);
template <typename T> bool atomic_compare_exchange_weak_explicit(
    volatile device atomic<T>* o, thread T* expected, T desired, memory_order, memory_order);
} // namespace metal

// __metal_* SIMD builtins used verbatim by MLX's bf16_math.h
#define MSHIM_CL_SB1(name) template <typename T> T __metal_##name(T x);
#define MSHIM_CL_SB2(name) template <typename T> T __metal_##name(T x, ushort k);
MSHIM_CL_SB1(simd_max) MSHIM_CL_SB1(simd_min) MSHIM_CL_SB1(simd_sum)
MSHIM_CL_SB1(simd_product) MSHIM_CL_SB1(simd_xor) MSHIM_CL_SB1(simd_prefix_exclusive_product)
MSHIM_CL_SB1(simd_prefix_exclusive_sum) MSHIM_CL_SB1(simd_prefix_inclusive_product)
MSHIM_CL_SB1(simd_prefix_inclusive_sum)
MSHIM_CL_SB2(simd_broadcast) MSHIM_CL_SB2(simd_shuffle) MSHIM_CL_SB2(simd_shuffle_down)
MSHIM_CL_SB2(simd_shuffle_up) MSHIM_CL_SB2(simd_shuffle_rotate_down)
MSHIM_CL_SB2(simd_shuffle_rotate_up) MSHIM_CL_SB2(simd_shuffle_xor)
template <typename T> T __metal_simd_shuffle_and_fill_down(T x, T fill, ushort d, ushort m);
template <typename T> T __metal_simd_shuffle_and_fill_up(T x, T fill, ushort d, ushort m);
ushort __metal_get_simdgroup_size(ushort);

// ---- function constants (msl_prepass.py rewrites
//   constant T name [[function_constant(N)]];  to this)
// A program-scope `constant` variable: read-only, as in MSL.
#define MSHIM_FUNCTION_CONSTANT(T, name, idx) constant T name = T()
#define is_function_constant_defined(name) true

// threadgroup memory for rewritten `threadgroup T x[N];` declarations
namespace mshim {
template <typename A>
threadgroup A* tg_alloc();
} // namespace mshim
