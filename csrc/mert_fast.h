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

// Residual vector quantisation, every stage in one launch (kernels/rvq.py::rvq_encode_fused, same semantics).
// Stage s: z = resid @ in_w[s]^T + in_b[s] (or z = resid without in_w), code = argmin_k norms[s, k] - 2 <z,
// lookup[s, k]> with ties to the lowest k, up = codebooks[s, code] @ out_w[s]^T + out_b[s] (or the raw code without
// out_w), resid -= up, quant += up; codes[row, s] = code. All arrays contiguous, T float or double (also the
// accumulation type; fp32 products are true fp32 fused multiply-adds, no TF32). Shapes:
//   resid (n_rows, dim): in: the rows to encode, out: their final residual (a workspace the caller owns);
//   z (n_rows, code_dim): workspace, used only with in_w; quant (n_rows, dim): zeros in, the sum of the ups out, or
//   nullptr; codes (n_rows, n_q) int64 out; codebooks, lookup (>= n_q, n_codes, code_dim): raw codes and the searched
//   ones (normalised for cosine); norms (>= n_q, n_codes): squared norms of lookup (zeros for cosine);
//   in_w (>= n_q, code_dim, dim), in_b (>= n_q, code_dim), out_w (>= n_q, dim, code_dim), out_b (>= n_q, dim), each
//   nullptr when absent (a bias needs its projection; without in_w or out_w, code_dim must equal dim).
// Returns the launch status (cudaGetLastError), cudaSuccess when there is nothing to launch.
template <typename T>
cudaError_t rvq_encode_cuda(T* resid, T* z, T* quant, int64_t* codes, const T* codebooks, const T* lookup,
                            const T* norms, const T* in_w, const T* in_b, const T* out_w, const T* out_b,
                            int64_t n_rows, int64_t n_codes, int64_t dim, int64_t code_dim, int64_t n_q,
                            cudaStream_t stream);

extern template cudaError_t rvq_encode_cuda<float>(float*, float*, float*, int64_t*, const float*, const float*,
                                                   const float*, const float*, const float*, const float*,
                                                   const float*, int64_t, int64_t, int64_t, int64_t, int64_t,
                                                   cudaStream_t);
extern template cudaError_t rvq_encode_cuda<double>(double*, double*, double*, int64_t*, const double*,
                                                    const double*, const double*, const double*, const double*,
                                                    const double*, const double*, int64_t, int64_t, int64_t, int64_t,
                                                    int64_t, cudaStream_t);

}  // namespace mert_fast
