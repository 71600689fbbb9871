// Copyright © 2026 TurboQuant-MLX contributors.
//
// fast::quantized_cache_update: a decode step's append to a TurboQuant cache
// (quantize the new vectors into rows of the packed buffers) as one node.

#include <sstream>

#include "mlx/fast.h"
#include "mlx/fast_primitives.h"
#include "mlx/ops.h"
#include "mlx/turboquant.h"

namespace mlx::core::fast {

namespace {

constexpr std::string_view kTag = "quantized_cache_update";

[[noreturn]] void fail(const std::string& what) {
  std::ostringstream msg;
  msg << "[" << kTag << "] " << what;
  throw std::invalid_argument(msg.str());
}

std::string shape_str(const array& a) {
  std::ostringstream s;
  s << a.shape();
  return s.str();
}

} // namespace

std::vector<array> quantized_cache_update(
    const array& packed,
    const array& scales,
    const array& x,
    int offset,
    const std::string& mode,
    const std::optional<array>& shift,
    StreamOrDevice s_) {
  auto qmode = turbo::parse_mode(kTag, mode);
  int nbits = turbo::bits(qmode);
  if (x.ndim() != 4 || packed.ndim() != 4 || scales.ndim() != 4) {
    fail(
        "packed, scales and x must be 4D ([B, N_kv, N, W], [B, N_kv, N, 1], "
        "[B, N_kv, T, D]) but got shapes " +
        shape_str(packed) + ", " + shape_str(scales) + " and " + shape_str(x) +
        ".");
  }
  if (!issubdtype(x.dtype(), floating) || x.dtype() == float64) {
    fail("x must be float32, float16 or bfloat16.");
  }
  int dim = x.shape(-1);
  turbo::check_dim(kTag, dim);
  if (packed.dtype() != uint32) {
    fail("packed must be uint32 (the codes from mx.quantize).");
  }
  if (scales.dtype() != x.dtype()) {
    fail("scales must have the dtype of x.");
  }
  int rows = packed.shape(2);
  int width = turbo::packed_width(dim, nbits);
  if (packed.shape(0) != x.shape(0) || packed.shape(1) != x.shape(1) ||
      packed.shape(-1) != width) {
    std::ostringstream msg;
    msg << "packed must have shape [" << x.shape(0) << ", " << x.shape(1)
        << ", N, " << width << "] for x of shape " << x.shape() << " and mode '"
        << mode << "' but got " << packed.shape() << ".";
    fail(msg.str());
  }
  if (scales.shape() != Shape{x.shape(0), x.shape(1), rows, 1}) {
    fail(
        "scales must have shape [B, N_kv, N, 1] matching packed " +
        shape_str(packed) + " but got " + shape_str(scales) + ".");
  }
  int len = x.shape(2);
  if (offset < 0 || offset > rows - len) {
    std::ostringstream msg;
    msg << "offset " << offset << " with " << len
        << " new rows does not fit a cache of " << rows << " rows.";
    fail(msg.str());
  }
  auto s = to_stream(s_);
  std::vector<array> inputs = {packed, scales, x};
  if (shift) {
    if (!issubdtype(shift->dtype(), floating)) {
      fail("shift must be floating point.");
    }
    try {
      inputs.push_back(broadcast_to(astype(*shift, float32, s), x.shape(), s));
    } catch (const std::invalid_argument&) {
      fail(
          "shift of shape " + shape_str(*shift) +
          " does not broadcast to x's shape " + shape_str(x) + ".");
    }
  }
  if (len == 0) {
    return {packed, scales};
  }

  // One node per buffer, each with a single output: MLX donates an input
  // buffer to the output of a single-output primitive (as SliceUpdate's),
  // while the outputs of a multi-output one keep each other alive until the
  // kernels finish, which would copy a cache buffer on every pipelined step.
  // Both nodes encode the vectors; a decode step has a few of them.
  bool has_shift = inputs.size() > 3;
  auto update = [&](int part) {
    auto fallback = [qmode, offset, part, s](const std::vector<array>& in) {
      auto y = in[1];
      if (in.size() > 2) {
        y = astype(subtract(astype(y, float32, s), in[2], s), y.dtype(), s);
      }
      auto q = turbo::quantize(y, qmode, s)[part];
      Shape start = {0, 0, offset, 0};
      Shape stop = in[0].shape();
      stop[2] = offset + q.shape(2);
      return std::vector<array>{
          slice_update(in[0], q, std::move(start), std::move(stop), s)};
    };
    std::vector<array> in = {inputs[part], inputs[2]};
    if (has_shift) {
      in.push_back(inputs[3]);
    }
    if (s.device != Device::cpu && !turbo::gpu_quantize_supported()) {
      return fallback(in)[0];
    }
    auto shape = in[0].shape();
    auto dtype = in[0].dtype();
    return array(
        std::move(shape),
        dtype,
        std::make_shared<QuantizedCacheUpdate>(
            s, fallback, qmode, offset, has_shift, part == 1),
        std::move(in));
  };
  return {update(0), update(1)};
}

bool QuantizedCacheUpdate::is_equivalent(const Primitive& other) const {
  const auto& o = static_cast<const QuantizedCacheUpdate&>(other);
  return mode_ == o.mode_ && offset_ == o.offset_ &&
      has_shift_ == o.has_shift_ && scales_ == o.scales_;
}

std::vector<Shape> QuantizedCacheUpdate::output_shapes(
    const std::vector<array>& inputs) {
  return {inputs[0].shape()};
}

} // namespace mlx::core::fast
