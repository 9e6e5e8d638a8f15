// Complex CSR sparse matrix times a batch of complex vectors: the fold of the frequency-domain CQT
// (kernels/cqt.py holds the Triton version and the derivation). Semantics in mert_fast.h.
//
// Layout: threadIdx.x runs over consecutive rows and threadIdx.y over groups of kBatchPerThread batch items.
// In the CQT matrix, row k * L + r holds the frequencies f = r (mod L) of bin k, so the q-th entries of
// neighbouring rows are neighbouring columns: a warp's loads of x are contiguous, and so are its stores.
// Each thread reads its row's (col, val) once per batch group and keeps kBatchPerThread accumulators.

#include <cuda_runtime.h>

#include <cstdint>

#include "mert_fast.h"

namespace mert_fast {
namespace {

constexpr int kThreads = 256;
constexpr int kBatchPerThread = 4;
constexpr int kMaxThreadsY = 8;
constexpr int64_t kMaxGridY = 65535;
constexpr int64_t kMaxGridX = 2147483647;

template <typename T>
__global__ void __launch_bounds__(kThreads)
    csr_spmm_kernel(const int64_t* __restrict__ crow, const int64_t* __restrict__ col, const T* __restrict__ val,
                    const T* __restrict__ x, T* __restrict__ out, int64_t n_rows, int64_t nnz, int64_t batch,
                    int64_t n_in, int64_t n_cols) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= n_rows) return;
  const int64_t row_start = crow[row];
  const int64_t row_end = crow[row + 1];
  const int64_t start = row_start > 0 ? row_start : 0;
  const int64_t end = row_end < nnz ? row_end : nnz;
  const int64_t b_step = static_cast<int64_t>(gridDim.y) * blockDim.y * kBatchPerThread;
  for (int64_t b0 = (static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y) * kBatchPerThread; b0 < batch;
       b0 += b_step) {
    T acc_re[kBatchPerThread];
    T acc_im[kBatchPerThread];
#pragma unroll
    for (int j = 0; j < kBatchPerThread; ++j) {
      acc_re[j] = T(0);
      acc_im[j] = T(0);
    }
    for (int64_t i = start; i < end; ++i) {
      const int64_t c = col[i];
      if (c < 0 || c >= n_cols) continue;
      // columns past n_in read the conjugate (frequencies above Nyquist of a one-sided spectrum)
      const bool upper = c >= n_in;
      const int64_t src = upper ? c - n_in : c;
      const T sign = upper ? T(-1) : T(1);
      const T v_re = val[2 * i];
      const T v_im = val[2 * i + 1];
#pragma unroll
      for (int j = 0; j < kBatchPerThread; ++j) {
        const int64_t b = b0 + j;
        if (b < batch) {
          const T* xp = x + 2 * (b * n_in + src);
          const T x_re = xp[0];
          const T x_im = sign * xp[1];
          acc_re[j] += v_re * x_re - v_im * x_im;
          acc_im[j] += v_re * x_im + v_im * x_re;
        }
      }
    }
#pragma unroll
    for (int j = 0; j < kBatchPerThread; ++j) {
      const int64_t b = b0 + j;
      if (b < batch) {
        T* op = out + 2 * (b * n_rows + row);
        op[0] = acc_re[j];
        op[1] = acc_im[j];
      }
    }
  }
}

}  // namespace

template <typename T>
cudaError_t csr_spmm_cuda(const int64_t* crow, const int64_t* col, const T* val, const T* x, T* out, int64_t n_rows,
                          int64_t nnz, int64_t batch, int64_t n_in, int64_t n_cols, cudaStream_t stream) {
  if (n_rows <= 0 || batch <= 0) return cudaSuccess;
  // Small batches give the block's threads to rows instead of leaving batch lanes idle.
  const int64_t groups = (batch + kBatchPerThread - 1) / kBatchPerThread;
  int threads_y = 1;
  while (threads_y < kMaxThreadsY && threads_y < groups) threads_y *= 2;
  const int threads_x = kThreads / threads_y;
  const int64_t grid_x = (n_rows + threads_x - 1) / threads_x;
  const int64_t blocks_y = (groups + threads_y - 1) / threads_y;
  const int64_t grid_y = blocks_y < kMaxGridY ? blocks_y : kMaxGridY;  // the kernel loops over the rest
  if (grid_x > kMaxGridX) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned int>(grid_x), static_cast<unsigned int>(grid_y));
  const dim3 block(threads_x, threads_y);
  csr_spmm_kernel<T><<<grid, block, 0, stream>>>(crow, col, val, x, out, n_rows, nnz, batch, n_in, n_cols);
  return cudaGetLastError();
}

template cudaError_t csr_spmm_cuda<float>(const int64_t*, const int64_t*, const float*, const float*, float*, int64_t,
                                          int64_t, int64_t, int64_t, int64_t, cudaStream_t);
template cudaError_t csr_spmm_cuda<double>(const int64_t*, const int64_t*, const double*, const double*, double*,
                                           int64_t, int64_t, int64_t, int64_t, int64_t, cudaStream_t);

}  // namespace mert_fast
