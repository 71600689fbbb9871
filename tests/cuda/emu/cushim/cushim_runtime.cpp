// The host side of cushim.h: the CUDA runtime calls the harness makes, on
// the CPU. Memory is host memory (a "device pointer" is a plain pointer);
// launches run to completion before they return.
//
//   CUSHIM_SMS     multiprocessors cudaDeviceGetAttribute reports (132, an
//   H200) CUSHIM_ORDER   forward | reverse | random | lockstep: the order warps
//                  and lanes run between synchronizations (forward)
//   CUSHIM_SEED    seed of the random order
#include "cushim/cushim.h"

#include <cstdlib>
#include <map>
#include <mutex>
#include <string>

namespace cushim {

size_t g_dynamic_smem = 0;
thread_local unsigned char* t_dynamic_base = nullptr;

namespace {
// Dynamic shared memory: 48 KB unless cudaFuncSetAttribute raised it; at most
// 227 KB (sm_90).
constexpr int kDefaultSmem = 48 * 1024;
constexpr int kMaxSmem = 227 * 1024;
std::mutex g_mu;
std::map<const void*, int>& smem_limits() {
  static std::map<const void*, int> m;
  return m;
}
int env_int(const char* name, int dflt) {
  const char* v = std::getenv(name);
  return v ? std::atoi(v) : dflt;
}
} // namespace

cudaError_t& LaunchError::last() {
  static cudaError_t e = cudaSuccess;
  return e;
}

rt::LaunchOptions& options() {
  static rt::LaunchOptions opt = [] {
    rt::LaunchOptions o;
    const char* order = std::getenv("CUSHIM_ORDER");
    const std::string s = order ? order : "forward";
    o.order = s == "reverse" ? rt::Order::Reverse
        : s == "random"      ? rt::Order::Random
        : s == "lockstep"    ? rt::Order::Lockstep
                             : rt::Order::Forward;
    o.seed = unsigned(env_int("CUSHIM_SEED", 1));
    return o;
  }();
  return opt;
}

bool smem_allowed(const void* kernel, size_t bytes) {
  std::lock_guard<std::mutex> lk(g_mu);
  auto it = smem_limits().find(kernel);
  const int limit = it == smem_limits().end() ? kDefaultSmem : it->second;
  return bytes <= size_t(limit);
}

} // namespace cushim

extern "C" {

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, enum cudaDeviceAttr attr, int) {
  if (attr != cudaDevAttrMultiProcessorCount)
    return cudaErrorInvalidValue;
  *value = cushim::env_int("CUSHIM_SMS", 132);
  return cudaSuccess;
}

cudaError_t
cudaFuncSetAttribute(const void* func, enum cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize)
    return cudaErrorInvalidValue;
  if (value < 0 || value > cushim::kMaxSmem)
    return cudaErrorInvalidValue;
  std::lock_guard<std::mutex> lk(cushim::g_mu);
  cushim::smem_limits()[func] = value;
  return cudaSuccess;
}

cudaError_t cudaGetLastError(void) {
  cudaError_t e = cushim::LaunchError::last();
  cushim::LaunchError::last() = cudaSuccess;
  return e;
}

} // extern "C"
