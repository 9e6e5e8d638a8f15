// Residual vector quantisation: every stage of one encode in a single launch (kernels/rvq.py holds the Triton
// version; semantics in mert_fast.h and mert_fast/ops/rvq.py).
//
// One block owns kRows rows for the whole encode. Per stage it runs up to three small GEMMs of one form,
// acc[r, j] = sum_k A[r, k] * B[j, k] (A's rows are the block's rows, B row-major like nn.Linear weights):
//   in_proj:  z = resid @ in_proj[s]^T + in_bias[s]           (A = residual, B = in_proj[s], written to z)
//   search:   score = |c|^2 - 2 <z, c> over every code c      (A = z, B = lookup[s], running argmin)
//   out_proj: up = code @ out_proj[s]^T + out_bias[s]          (A = gathered raw codes, B = out_proj[s])
// and subtracts the chosen (projected) code from the residual: resid -= up, quant += up. The residual and z
// live in global workspaces that only this block touches (a __syncthreads orders its writes and reads), so the
// shared memory holds only the GEMM tiles and any D and Dc work. Accumulation is in T (float or double) with plain
// fused multiply-adds: true fp32, no TF32.
//
// Tiles: kRows x kCols outputs per pass, kDepth-deep chunks staged in shared memory (transposed, rows padded by
// one element so the stores spread over the banks; the compute loop's reads are conflict-free or broadcasts). Thread (ty, tx) of the 16 x 16 grid owns rows
// ty + 16 i and columns tx + 16 j, so its columns come in ascending order and a strict `<` keeps the lowest index
// of equal scores; the 16 threads of a row (one half warp) then merge (score, index) pairs with the same rule.

#include <cuda_runtime.h>

#include <cstdint>

#include "mert_fast.h"

namespace mert_fast {
namespace {

constexpr int kThreads = 256;
constexpr int kRows = 64;   // rows of x per block
constexpr int kCols = 128;  // output columns (codes or features) per pass
constexpr int kDepth = 16;  // reduction depth per shared-memory stage
constexpr int kGrid = 16;   // threads per row group and per column group
constexpr int kTR = kRows / kGrid;  // rows per thread
constexpr int kTC = kCols / kGrid;  // columns per thread
static_assert(kGrid * kGrid == kThreads, "one thread per (row group, column group)");

template <typename T>
struct Shared {
  T a[kDepth][kRows + 1];  // A chunk, transposed: a[k][r]
  T b[kDepth][kCols + 1];  // B chunk, transposed: b[k][j]
  int64_t code[kRows];     // the chosen code of each row at the current stage
};

// acc[i][j] = sum_{k < depth} A[row(i), k] * B[col0 + col(j), k] for this thread's rows and columns.
// A's row r is a + (gather ? gather[r] : r) * lda, valid for r < n_rows; B's row j is b + j * ldb, valid for
// j < n_cols. Invalid rows and columns read zeros. Every thread of the block must call it (it synchronises).
template <typename T>
__device__ void tile_product(const T* a, int64_t lda, const int64_t* gather, int n_rows, const T* __restrict__ b,
                             int64_t ldb, int64_t n_cols, int64_t col0, int64_t depth, Shared<T>& sm,
                             T (&acc)[kTR][kTC]) {
  const int tid = threadIdx.x;
  const int tx = tid % kGrid;
  const int ty = tid / kGrid;
#pragma unroll
  for (int i = 0; i < kTR; ++i) {
#pragma unroll
    for (int j = 0; j < kTC; ++j) acc[i][j] = T(0);
  }
  for (int64_t k0 = 0; k0 < depth; k0 += kDepth) {
    // consecutive threads read consecutive k of one row: contiguous global reads
#pragma unroll
    for (int e = tid; e < kRows * kDepth; e += kThreads) {
      const int r = e / kDepth;
      const int k = e % kDepth;
      T v = T(0);
      if (r < n_rows && k0 + k < depth) {
        const int64_t src = gather != nullptr ? gather[r] : static_cast<int64_t>(r);
        v = a[src * lda + k0 + k];
      }
      sm.a[k][r] = v;
    }
#pragma unroll
    for (int e = tid; e < kCols * kDepth; e += kThreads) {
      const int j = e / kDepth;
      const int k = e % kDepth;
      T v = T(0);
      if (col0 + j < n_cols && k0 + k < depth) v = b[(col0 + j) * ldb + k0 + k];
      sm.b[k][j] = v;
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kDepth; ++k) {
      T av[kTR];
      T bv[kTC];
#pragma unroll
      for (int i = 0; i < kTR; ++i) av[i] = sm.a[k][ty + kGrid * i];
#pragma unroll
      for (int j = 0; j < kTC; ++j) bv[j] = sm.b[k][tx + kGrid * j];
#pragma unroll
      for (int i = 0; i < kTR; ++i) {
#pragma unroll
        for (int j = 0; j < kTC; ++j) acc[i][j] = fma(av[i], bv[j], acc[i][j]);
      }
    }
    __syncthreads();
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    rvq_encode_kernel(T* resid, T* z, T* quant, int64_t* __restrict__ codes, const T* __restrict__ codebooks,
                      const T* __restrict__ lookup, const T* __restrict__ norms, const T* __restrict__ in_w,
                      const T* __restrict__ in_b, const T* __restrict__ out_w, const T* __restrict__ out_b,
                      int64_t n_rows, int64_t n_codes, int64_t dim, int64_t code_dim, int64_t n_q) {
  __shared__ Shared<T> sm;
  const int tid = threadIdx.x;
  const int tx = tid % kGrid;
  const int ty = tid / kGrid;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const int rows = static_cast<int>(n_rows - row0 < kRows ? n_rows - row0 : kRows);
  T* const resid_blk = resid + row0 * dim;
  T* const z_blk = in_w != nullptr ? z + row0 * code_dim : resid_blk;  // without in_proj, code_dim == dim
  T* const quant_blk = quant != nullptr ? quant + row0 * dim : nullptr;
  T acc[kTR][kTC];

  for (int64_t s = 0; s < n_q; ++s) {
    const T* const book = codebooks + s * n_codes * code_dim;
    if (in_w != nullptr) {
      const T* const w = in_w + s * code_dim * dim;
      for (int64_t col0 = 0; col0 < code_dim; col0 += kCols) {
        tile_product(resid_blk, dim, nullptr, rows, w, dim, code_dim, col0, dim, sm, acc);
#pragma unroll
        for (int j = 0; j < kTC; ++j) {
          const int64_t col = col0 + tx + kGrid * j;
          if (col >= code_dim) continue;
          const T bias = in_b != nullptr ? in_b[s * code_dim + col] : T(0);
#pragma unroll
          for (int i = 0; i < kTR; ++i) {
            const int r = ty + kGrid * i;
            if (r < rows) z_blk[r * code_dim + col] = acc[i][j] + bias;
          }
        }
      }
      __syncthreads();
    }

    // search: running (score, index) minimum per row, columns visited in ascending order
    T best[kTR];
    int64_t best_idx[kTR];
#pragma unroll
    for (int i = 0; i < kTR; ++i) {
      best[i] = static_cast<T>(INFINITY);
      best_idx[i] = 0;
    }
    const T* const look = lookup + s * n_codes * code_dim;
    for (int64_t col0 = 0; col0 < n_codes; col0 += kCols) {
      tile_product(z_blk, code_dim, nullptr, rows, look, code_dim, n_codes, col0, code_dim, sm, acc);
#pragma unroll
      for (int j = 0; j < kTC; ++j) {
        const int64_t col = col0 + tx + kGrid * j;
        if (col >= n_codes) continue;
        const T norm = norms[s * n_codes + col];
#pragma unroll
        for (int i = 0; i < kTR; ++i) {
          const T score = norm - T(2) * acc[i][j];
          if (score < best[i]) {
            best[i] = score;
            best_idx[i] = col;
          }
        }
      }
    }
    // merge the 16 column groups of each row (lanes tx = 0..15 of one half warp): lower score, then lower index
#pragma unroll
    for (int i = 0; i < kTR; ++i) {
#pragma unroll
      for (int offset = kGrid / 2; offset > 0; offset /= 2) {
        const T other = __shfl_xor_sync(0xffffffffu, best[i], offset);
        const int64_t other_idx = __shfl_xor_sync(0xffffffffu, static_cast<long long>(best_idx[i]), offset);
        if (other < best[i] || (other == best[i] && other_idx < best_idx[i])) {
          best[i] = other;
          best_idx[i] = other_idx;
        }
      }
      const int r = ty + kGrid * i;
      if (tx == 0) {
        sm.code[r] = best_idx[i];
        if (r < rows) codes[(row0 + r) * n_q + s] = best_idx[i];
      }
    }
    __syncthreads();

    if (out_w != nullptr) {
      const T* const w = out_w + s * dim * code_dim;
      for (int64_t col0 = 0; col0 < dim; col0 += kCols) {
        tile_product(book, code_dim, sm.code, rows, w, code_dim, dim, col0, code_dim, sm, acc);
#pragma unroll
        for (int j = 0; j < kTC; ++j) {
          const int64_t col = col0 + tx + kGrid * j;
          if (col >= dim) continue;
          const T bias = out_b != nullptr ? out_b[s * dim + col] : T(0);
#pragma unroll
          for (int i = 0; i < kTR; ++i) {
            const int r = ty + kGrid * i;
            if (r >= rows) continue;
            const T up = acc[i][j] + bias;
            resid_blk[r * dim + col] -= up;
            if (quant_blk != nullptr) quant_blk[r * dim + col] += up;
          }
        }
      }
    } else {
      for (int64_t e = tid; e < static_cast<int64_t>(rows) * dim; e += kThreads) {
        const int64_t r = e / dim;
        const int64_t d = e % dim;
        const T up = book[sm.code[r] * code_dim + d];
        resid_blk[e] -= up;
        if (quant_blk != nullptr) quant_blk[e] += up;
      }
    }
    __syncthreads();
  }
}

}  // namespace

template <typename T>
cudaError_t rvq_encode_cuda(T* resid, T* z, T* quant, int64_t* codes, const T* codebooks, const T* lookup,
                            const T* norms, const T* in_w, const T* in_b, const T* out_w, const T* out_b,
                            int64_t n_rows, int64_t n_codes, int64_t dim, int64_t code_dim, int64_t n_q,
                            cudaStream_t stream) {
  if (n_rows <= 0 || n_q <= 0) return cudaSuccess;
  const int64_t blocks = (n_rows + kRows - 1) / kRows;
  if (blocks > 2147483647) return cudaErrorInvalidConfiguration;
  rvq_encode_kernel<T><<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(
      resid, z, quant, codes, codebooks, lookup, norms, in_w, in_b, out_w, out_b, n_rows, n_codes, dim, code_dim,
      n_q);
  return cudaGetLastError();
}

template cudaError_t rvq_encode_cuda<float>(float*, float*, float*, int64_t*, const float*, const float*,
                                            const float*, const float*, const float*, const float*, const float*,
                                            int64_t, int64_t, int64_t, int64_t, int64_t, cudaStream_t);
template cudaError_t rvq_encode_cuda<double>(double*, double*, double*, int64_t*, const double*, const double*,
                                             const double*, const double*, const double*, const double*,
                                             const double*, int64_t, int64_t, int64_t, int64_t, int64_t,
                                             cudaStream_t);

}  // namespace mert_fast
