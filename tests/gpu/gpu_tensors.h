// Moving CPU tensors to and from raw device memory for the parity tests: the kernels take device
// pointers, and Debian's LibTorch is CPU-only, so the tests copy contiguous bytes with cudaMemcpy.
// A torch::kBFloat16 tensor's bytes are __nv_bfloat16's (the upper half of an IEEE float32).
#pragma once

#include <cuda_runtime_api.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstddef>

#include "kernels/cuda/cuda_check.h"

namespace rankprune::test {

// A device copy of `t` (contiguous bytes); an undefined or empty tensor gives an empty buffer
// (null pointer).
inline cuda::DeviceBuffer<char> to_device(const torch::Tensor& t) {
  if (!t.defined() || t.numel() == 0) return {};
  const torch::Tensor c = t.contiguous();
  const std::size_t bytes = static_cast<std::size_t>(c.numel()) * c.element_size();
  cuda::DeviceBuffer<char> buf(bytes, "to_device");
  RP_CUDA_CHECK("to_device", cudaMemcpy(buf.get(), c.data_ptr(), bytes, cudaMemcpyHostToDevice));
  return buf;
}

// A device array for a tensor of these sizes and dtype, every byte 0xFF: NaN in float32, bfloat16
// and float64, so an element the kernel fails to write shows as NaN (and fails any tolerance).
inline cuda::DeviceBuffer<char> device_poisoned(torch::IntArrayRef sizes, torch::ScalarType dt) {
  const std::size_t bytes = static_cast<std::size_t>(c10::multiply_integers(sizes)) * c10::elementSize(dt);
  cuda::DeviceBuffer<char> buf(bytes, "device_poisoned");
  if (bytes) RP_CUDA_CHECK("device_poisoned", cudaMemset(buf.get(), 0xFF, bytes));
  return buf;
}

// A CPU tensor with the bytes at device pointer `p` (waits for the device first).
inline torch::Tensor to_host(const void* p, torch::IntArrayRef sizes, torch::ScalarType dt) {
  RP_CUDA_CHECK("to_host", cudaDeviceSynchronize());
  torch::Tensor t = torch::empty(sizes, torch::TensorOptions().dtype(dt));
  const std::size_t bytes = static_cast<std::size_t>(t.numel()) * t.element_size();
  if (bytes) RP_CUDA_CHECK("to_host", cudaMemcpy(t.data_ptr(), p, bytes, cudaMemcpyDeviceToHost));
  return t;
}

// max |a - ref| / max(1, max |ref|), in float64.
inline double rel_err(const torch::Tensor& a, const torch::Tensor& ref) {
  if (ref.numel() == 0) return 0.0;
  const auto r = ref.to(torch::kFloat64);
  const double d = (a.to(torch::kFloat64) - r).abs().max().item<double>();
  return d / std::max(1.0, r.abs().max().item<double>());
}

}  // namespace rankprune::test
