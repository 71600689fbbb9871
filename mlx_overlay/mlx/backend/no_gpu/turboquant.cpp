// Copyright © 2026 TurboQuant-MLX contributors.
//
// GPU entry points of the TurboQuant ops for this backend: this build has no GPU backend, so the ops
// use their op-composed fallbacks on GPU streams and these are never reached.

#include <stdexcept>

#include "mlx/fast_primitives.h"
#include "mlx/turboquant.h"

namespace mlx::core {

namespace turbo {

bool gpu_quantize_supported() {
  return false;
}

} // namespace turbo

namespace fast {

bool QuantizedScaledDotProductAttention::use_fallback(
    const array& /* q */,
    int /* key_dim */,
    int /* value_dim */,
    Stream /* s */) {
  return true;
}

void QuantizedScaledDotProductAttention::eval_gpu(
    const std::vector<array>& /* inputs */,
    std::vector<array>& /* outputs */) {
  throw std::runtime_error(
      "[quantized_scaled_dot_product_attention] No GPU implementation.");
}

} // namespace fast

} // namespace mlx::core
