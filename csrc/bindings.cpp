// Python bindings of mert_fast._C: tensor checks at every entry, then the raw-pointer launchers of mert_fast.h.

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include "mert_fast.h"

#define CHECK_DEVICE(x, ref) \
  TORCH_CHECK((x).is_cuda() && (x).device() == (ref).device(), #x " must be on " #ref "'s CUDA device")
#define CHECK_CONTIGUOUS(x) TORCH_CHECK((x).is_contiguous(), #x " must be contiguous")
#define CHECK_SHAPE(x, ...)                                             \
  TORCH_CHECK((x).sizes() == torch::IntArrayRef({__VA_ARGS__}),         \
              #x " must have shape (" #__VA_ARGS__ "); got ", (x).sizes())
#define CHECK_DTYPE(x, dtype) \
  TORCH_CHECK((x).scalar_type() == (dtype), #x " must be " #dtype "; got ", (x).scalar_type())

namespace {

// out[b, r] = sum_i val[i] * xc[b, col[i]] over row r of a complex CSR matrix, xc[b] = [x[b], conj(x[b])][:n_cols].
// crow (R + 1,) and col (nnz,) int64; val (nnz, 2) and x (B, n, 2) real views, both float32 or both float64.
// Returns (B, R, 2) of x's dtype, accumulated in that dtype.
torch::Tensor csr_spmm(const torch::Tensor& crow, const torch::Tensor& col, const torch::Tensor& val,
                       const torch::Tensor& x, int64_t n_cols) {
  TORCH_CHECK(x.is_cuda(), "x must be a CUDA tensor; got one on ", x.device());
  CHECK_DEVICE(crow, x);
  CHECK_DEVICE(col, x);
  CHECK_DEVICE(val, x);
  CHECK_DTYPE(crow, torch::kInt64);
  CHECK_DTYPE(col, torch::kInt64);
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 || x.scalar_type() == torch::kFloat64,
              "x must be float32 or float64; got ", x.scalar_type());
  TORCH_CHECK(val.scalar_type() == x.scalar_type(), "val must have x's dtype ", x.scalar_type(), "; got ",
              val.scalar_type());
  CHECK_CONTIGUOUS(crow);
  CHECK_CONTIGUOUS(col);
  CHECK_CONTIGUOUS(val);
  CHECK_CONTIGUOUS(x);
  TORCH_CHECK(crow.dim() == 1 && crow.size(0) >= 1, "crow must have shape (R + 1,); got ", crow.sizes());
  TORCH_CHECK(col.dim() == 1, "col must have shape (nnz,); got ", col.sizes());
  TORCH_CHECK(x.dim() == 3, "x must have shape (B, n, 2); got ", x.sizes());
  const int64_t n_rows = crow.size(0) - 1;
  const int64_t nnz = col.size(0);
  const int64_t batch = x.size(0);
  const int64_t n_in = x.size(1);
  CHECK_SHAPE(val, nnz, 2);
  CHECK_SHAPE(x, batch, n_in, 2);
  TORCH_CHECK(n_cols == n_in || n_cols == 2 * n_in, "n_cols must be n or 2n for x of shape (B, n, 2) with n = ", n_in,
              "; got ", n_cols);

  const c10::cuda::CUDAGuard device_guard(x.device());
  auto out = torch::empty({batch, n_rows, 2}, x.options());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
  cudaError_t err;
  if (x.scalar_type() == torch::kFloat64) {
    err = mert_fast::csr_spmm_cuda<double>(crow.data_ptr<int64_t>(), col.data_ptr<int64_t>(), val.data_ptr<double>(),
                                           x.data_ptr<double>(), out.data_ptr<double>(), n_rows, nnz, batch, n_in,
                                           n_cols, stream);
  } else {
    err = mert_fast::csr_spmm_cuda<float>(crow.data_ptr<int64_t>(), col.data_ptr<int64_t>(), val.data_ptr<float>(),
                                          x.data_ptr<float>(), out.data_ptr<float>(), n_rows, nnz, batch, n_in, n_cols,
                                          stream);
  }
  TORCH_CHECK(err == cudaSuccess, "csr_spmm: CUDA kernel launch failed: ", cudaGetErrorString(err));
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "mert_fast CUDA C++ kernels";
  m.def("csr_spmm", &csr_spmm,
        "Complex CSR matrix times a batch of complex vectors: crow (R+1,) int64, col (nnz,) int64, val (nnz, 2), "
        "x (B, n, 2) float32/float64 real views, n_cols in {n, 2n}; returns (B, R, 2). Columns >= n read conj(x).",
        py::arg("crow"), py::arg("col"), py::arg("val"), py::arg("x"), py::arg("n_cols"));
}
