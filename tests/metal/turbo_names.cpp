// Prints every kernel name the host dispatch (turboquant.cpp) can request,
// using the naming functions of turbo_bindings.h.
#include <cstdio>
#include "mlx/backend/metal/kernels/turbo_bindings.h"
namespace tb = turbo_bindings;
int main() {
  const char* types[] = {"float32", "float16", "bfloat16"};
  const int dims[] = {64, 80, 96, 128, 192, 256};
  for (int pass = 0; pass < 3; pass++)
    for (int kb = 3; kb <= 4; kb++)
      for (int vb = 3; vb <= 4; vb++)
        for (auto t : types)
          for (int dk : dims)
            for (int dv : dims)
              if (tb::attn_dims_supported(dk, dv))
                printf("%s\n", tb::attn_kernel_name(pass, kb, vb, t, dk, dv).c_str());
  for (int dv : dims) printf("%s\n", tb::agg_kernel_name(dv).c_str());
  for (auto t : types) {
    for (int dk : dims)
      for (int dv : dims)
        if (tb::attn_dims_supported(dk, dv))
          printf("%s\n", tb::prep_kernel_name(t, dk, dv).c_str());
    for (int d : dims) printf("%s\n", tb::rotate_out_kernel_name(t, d).c_str());
  }
  for (int b = 3; b <= 4; b++)
    for (int d : dims) {
      if (!tb::quant_dim_supported(d)) continue;
      for (auto t : types) {
        printf("%s\n", tb::quantize_kernel_name(b, t, d).c_str());
        printf("%s\n", tb::quantize_update_kernel_name(b, t, d).c_str());
        for (auto o : types) printf("%s\n", tb::dequantize_kernel_name(b, t, o, d).c_str());
        printf("%s\n", tb::dequantize_kv_kernel_name(b, t, d).c_str());
      }
    }
  return 0;
}
