// Launchers of the CUDA kernels in csrc/. Raw pointers and a stream only: no torch headers, so each .cu file
// compiles with plain nvcc; bindings.cpp checks the tensors and calls these.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace mert_fast {

// Complex CSR sparse matrix times a batch of complex vectors (kernels/cqt.py::csr_spmm, same semantics):
//   out[b, r] = sum_{crow[r] <= i < crow[r + 1]} val[i] * xc[b, col[i]],
//   xc[b, c] = x[b, c] for c < n_in, conj(x[b, c - n_in]) for n_in <= c < n_cols (n_cols is n_in or 2 * n_in).
// Complex numbers are (re, im) pairs of T. Shapes, all contiguous:
//   crow (n_rows + 1,), col (nnz,), val (nnz, 2), x (batch, n_in, 2), out (batch, n_rows, 2).
// T is float or double and is also the accumulation type. Entries outside [0, nnz) or with a column outside
// [0, n_cols) are skipped, so a malformed matrix cannot read out of bounds. Every output is written, empty
// rows as zeros. Returns the launch status (cudaGetLastError), cudaSuccess when there is nothing to launch.
template <typename T>
cudaError_t csr_spmm_cuda(const int64_t* crow, const int64_t* col, const T* val, const T* x, T* out, int64_t n_rows,
                          int64_t nnz, int64_t batch, int64_t n_in, int64_t n_cols, cudaStream_t stream);

extern template cudaError_t csr_spmm_cuda<float>(const int64_t*, const int64_t*, const float*, const float*, float*,
                                                 int64_t, int64_t, int64_t, int64_t, int64_t, cudaStream_t);
extern template cudaError_t csr_spmm_cuda<double>(const int64_t*, const int64_t*, const double*, const double*,
                                                  double*, int64_t, int64_t, int64_t, int64_t, int64_t, cudaStream_t);

}  // namespace mert_fast
