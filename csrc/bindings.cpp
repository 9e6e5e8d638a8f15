// Python bindings of mert_fast._C: the tensor checks of checks.h at every entry, then the raw-pointer launchers of
// mert_fast.h.

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include "checks.h"
#include "mert_fast.h"

namespace {

// out[b, r] = sum_i val[i] * xc[b, col[i]] over row r of a complex CSR matrix, xc[b] = [x[b], conj(x[b])][:n_cols].
// crow (R + 1,) and col (nnz,) int64; val (nnz, 2) and x (B, n, 2) real views, both float32 or both float64.
// Returns (B, R, 2) of x's dtype, accumulated in that dtype.
torch::Tensor csr_spmm(const torch::Tensor& crow, const torch::Tensor& col, const torch::Tensor& val,
                       const torch::Tensor& x, int64_t n_cols) {
  // every check passes before any data pointer is taken or any output allocated
  const auto sizes = mert_fast::checks::check_csr_spmm(crow, col, val, x, n_cols, c10::DeviceType::CUDA);
  const int64_t n_rows = sizes.n_rows;
  const int64_t nnz = sizes.nnz;
  const int64_t batch = sizes.batch;
  const int64_t n_in = sizes.n_in;

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

// Residual-VQ encode, all n_q stages in one launch. x (N, D) contiguous float32 or float64 (the compute dtype; the
// caller converts half inputs); codebooks (Q, K, Dc), lookup (n_q, K, Dc) (the searched codes: codebooks[:n_q], or
// normalised for cosine) and norms (n_q, K) (their squared norms, zeros for cosine); optional in_proj (Q, Dc, D),
// in_bias (Q, Dc), out_proj (Q, D, Dc), out_bias (Q, D); all of x's dtype, device, contiguous. Returns
// (codes (N, n_q) int64, quantized (N, D) of x's dtype, or (0, D) when not with_quantized).
std::tuple<torch::Tensor, torch::Tensor> rvq_encode(const torch::Tensor& x, const torch::Tensor& codebooks,
                                                    const torch::Tensor& lookup, const torch::Tensor& norms,
                                                    const std::optional<torch::Tensor>& in_proj,
                                                    const std::optional<torch::Tensor>& in_bias,
                                                    const std::optional<torch::Tensor>& out_proj,
                                                    const std::optional<torch::Tensor>& out_bias, int64_t n_q,
                                                    bool with_quantized) {
  // every check passes before any data pointer is taken or any output allocated
  const auto sizes = mert_fast::checks::check_rvq_encode(x, codebooks, lookup, norms, in_proj, in_bias, out_proj,
                                                         out_bias, n_q, c10::DeviceType::CUDA);
  const int64_t n_rows = sizes.n_rows;
  const int64_t dim = sizes.dim;
  const int64_t n_codes = sizes.n_codes;
  const int64_t code_dim = sizes.code_dim;

  const c10::cuda::CUDAGuard device_guard(x.device());
  auto codes = torch::empty({n_rows, n_q}, x.options().dtype(torch::kInt64));
  auto resid = x.clone();
  auto z = torch::empty({in_proj.has_value() ? n_rows : 0, code_dim}, x.options());
  auto quant = with_quantized ? torch::zeros({n_rows, dim}, x.options()) : torch::empty({0, dim}, x.options());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
  cudaError_t err;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rvq_encode", [&] {
    auto ptr = [](const std::optional<torch::Tensor>& t) -> const scalar_t* {
      return t.has_value() ? t.value().data_ptr<scalar_t>() : nullptr;
    };
    err = mert_fast::rvq_encode_cuda<scalar_t>(
        resid.data_ptr<scalar_t>(), in_proj.has_value() ? z.data_ptr<scalar_t>() : nullptr,
        with_quantized ? quant.data_ptr<scalar_t>() : nullptr, codes.data_ptr<int64_t>(),
        codebooks.data_ptr<scalar_t>(), lookup.data_ptr<scalar_t>(), norms.data_ptr<scalar_t>(), ptr(in_proj),
        ptr(in_bias), ptr(out_proj), ptr(out_bias), n_rows, n_codes, dim, code_dim, n_q, stream);
  });
  TORCH_CHECK(err == cudaSuccess, "rvq_encode: CUDA kernel launch failed: ", cudaGetErrorString(err));
  return {codes, quant};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "mert_fast CUDA C++ kernels";
  m.def("csr_spmm", &csr_spmm,
        "Complex CSR matrix times a batch of complex vectors: crow (R+1,) int64, col (nnz,) int64, val (nnz, 2), "
        "x (B, n, 2) float32/float64 real views, n_cols in {n, 2n}; returns (B, R, 2). Columns >= n read conj(x).",
        py::arg("crow"), py::arg("col"), py::arg("val"), py::arg("x"), py::arg("n_cols"));
  m.def("rvq_encode", &rvq_encode,
        "Residual-VQ encode, all stages in one launch: x (N, D) float32/float64, codebooks (Q, K, Dc), lookup "
        "(n_q, K, Dc), norms (n_q, K), optional in_proj (Q, Dc, D), in_bias (Q, Dc), out_proj (Q, D, Dc), out_bias "
        "(Q, D), all contiguous on x's device and dtype; returns (codes (N, n_q) int64, quantized (N, D) or (0, D)).",
        py::arg("x"), py::arg("codebooks"), py::arg("lookup"), py::arg("norms"), py::arg("in_proj"),
        py::arg("in_bias"), py::arg("out_proj"), py::arg("out_bias"), py::arg("n_q"), py::arg("with_quantized"));
}
