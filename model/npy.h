// NumPy .npy files (format version 1.0/2.0/3.0): little-endian, C order.
#pragma once

#include <torch/torch.h>

#include <string>

namespace rankprune {

// Writes `t` (any shape; f32/f64/i32/i64/u8/bool/f16) as .npy, atomically (temp + rename).
void write_npy(const std::string& path, const torch::Tensor& t);

// Reads a .npy file into a CPU tensor of the stored dtype ('<f4','<f8','<i4','<i8','|u1','|b1',
// '<f2'). Fortran order, big-endian data, unknown dtypes, truncated data or a malformed header
// throw InputError naming the file and the problem.
torch::Tensor read_npy(const std::string& path);

}  // namespace rankprune
