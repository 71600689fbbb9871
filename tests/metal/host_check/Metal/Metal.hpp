// Minimal declarations standing in for Apple's metal-cpp, enough for MLX's
// mlx/backend/metal/device.h and utils.h to parse on Linux, so that the host
// dispatch (mlx/backend/metal/turboquant.cpp) can be syntax-checked against
// the real MLX headers. Nothing here is ever linked or run.
#pragma once
#include <cstddef>
#include <cstdint>

namespace NS {
using UInteger = unsigned long;
using Integer = long;
enum StringEncoding { UTF8StringEncoding = 4 };
static constexpr StringEncoding UTF8StringEncoding_ = UTF8StringEncoding;
struct Object {
  void release() {}
  Object* retain() { return this; }
};
struct String : Object {
  static String* string(const char*, StringEncoding) { return nullptr; }
  const char* utf8String() const { return ""; }
};
struct Error : Object {
  String* localizedDescription() const { return nullptr; }
};
struct AutoreleasePool : Object {
  static AutoreleasePool* alloc() { return nullptr; }
  AutoreleasePool* init() { return this; }
};
template <typename T>
struct SharedPtr {
  T* p = nullptr;
  T* get() const { return p; }
  T* operator->() const { return p; }
  explicit operator bool() const { return p; }
  void reset() {}
};
template <typename T>
SharedPtr<T> TransferPtr(T* p) { return SharedPtr<T>{p}; }
template <typename T>
SharedPtr<T> RetainPtr(T* p) { return SharedPtr<T>{p}; }
} // namespace NS

namespace MTL {
enum DataType : unsigned long { DataTypeBool = 53, DataTypeInt = 29, DataTypeFloat = 3 };
enum ResourceOptions : unsigned long {};
struct Size {
  NS::UInteger width, height, depth;
  Size(NS::UInteger w = 1, NS::UInteger h = 1, NS::UInteger d = 1) : width(w), height(h), depth(d) {}
};
struct Allocation : NS::Object {};
struct Resource : Allocation {};
struct Buffer : Resource {
  void* contents() { return nullptr; }
  NS::UInteger length() const { return 0; }
};
struct Function : NS::Object {};
struct LinkedFunctions : NS::Object {};
struct Library : NS::Object {};
struct ComputePipelineState : NS::Object {
  NS::UInteger maxTotalThreadsPerThreadgroup() const { return 1024; }
};
struct Fence : NS::Object {};
struct ResidencySet : NS::Object {};
using ResidencySets = ResidencySet;
struct ComputeCommandEncoder : NS::Object {
  void setComputePipelineState(const ComputePipelineState*) {}
  void setBytes(const void*, NS::UInteger, NS::UInteger) {}
  void setThreadgroupMemoryLength(NS::UInteger, NS::UInteger) {}
};
struct CommandBuffer : NS::Object {};
struct CommandQueue : NS::Object {};
struct Device : NS::Object {};
} // namespace MTL
