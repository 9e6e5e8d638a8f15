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
  TORCH_CHECK(x.is_cuda(), "x must be a CUDA tensor; got one on ", x.device());
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 || x.scalar_type() == torch::kFloat64,
              "x must be float32 or float64; got ", x.scalar_type());
  TORCH_CHECK(x.dim() == 2, "x must have shape (N, D); got ", x.sizes());
  TORCH_CHECK(codebooks.dim() == 3, "codebooks must have shape (Q, K, Dc); got ", codebooks.sizes());
  const int64_t n_rows = x.size(0);
  const int64_t dim = x.size(1);
  const int64_t n_stages = codebooks.size(0);
  const int64_t n_codes = codebooks.size(1);
  const int64_t code_dim = codebooks.size(2);
  TORCH_CHECK(n_stages >= 1 && n_codes >= 1 && code_dim >= 1 && dim >= 1,
              "codebooks and x need Q, K, Dc, D >= 1; got codebooks ", codebooks.sizes(), " and x ", x.sizes());
  TORCH_CHECK(n_q >= 1 && n_q <= n_stages, "n_q must be in [1, Q] = [1, ", n_stages, "]; got ", n_q);
  CHECK_CONTIGUOUS(x);
  const torch::Tensor* dense[] = {&codebooks, &lookup, &norms};
  const char* dense_names[] = {"codebooks", "lookup", "norms"};
  for (int i = 0; i < 3; ++i) {
    const torch::Tensor& t = *dense[i];
    TORCH_CHECK(t.is_cuda() && t.device() == x.device(), dense_names[i], " must be on x's CUDA device");
    TORCH_CHECK(t.scalar_type() == x.scalar_type(), dense_names[i], " must have x's dtype ", x.scalar_type(),
                "; got ", t.scalar_type());
    TORCH_CHECK(t.is_contiguous(), dense_names[i], " must be contiguous");
  }
  CHECK_SHAPE(lookup, n_q, n_codes, code_dim);
  CHECK_SHAPE(norms, n_q, n_codes);
  const std::optional<torch::Tensor>* optional[] = {&in_proj, &in_bias, &out_proj, &out_bias};
  const char* optional_names[] = {"in_proj", "in_bias", "out_proj", "out_bias"};
  for (int i = 0; i < 4; ++i) {
    if (!optional[i]->has_value()) continue;
    const torch::Tensor& t = optional[i]->value();
    TORCH_CHECK(t.is_cuda() && t.device() == x.device(), optional_names[i], " must be on x's CUDA device");
    TORCH_CHECK(t.scalar_type() == x.scalar_type(), optional_names[i], " must have x's dtype ", x.scalar_type(),
                "; got ", t.scalar_type());
    TORCH_CHECK(t.is_contiguous(), optional_names[i], " must be contiguous");
  }
  TORCH_CHECK(!in_bias.has_value() || in_proj.has_value(), "in_bias needs in_proj");
  TORCH_CHECK(!out_bias.has_value() || out_proj.has_value(), "out_bias needs out_proj");
  const auto check_shape = [](const std::optional<torch::Tensor>& t, const char* name, torch::IntArrayRef shape,
                               const char* meaning) {
    TORCH_CHECK(!t.has_value() || t.value().sizes() == shape, name, " must have shape ", meaning, " = ", shape,
                "; got ", t.has_value() ? t.value().sizes() : torch::IntArrayRef{});
  };
  check_shape(in_proj, "in_proj", {n_stages, code_dim, dim}, "(Q, Dc, D)");
  check_shape(in_bias, "in_bias", {n_stages, code_dim}, "(Q, Dc)");
  check_shape(out_proj, "out_proj", {n_stages, dim, code_dim}, "(Q, D, Dc)");
  check_shape(out_bias, "out_bias", {n_stages, dim}, "(Q, D)");
  TORCH_CHECK(in_proj.has_value() || code_dim == dim, "without in_proj, codebooks' Dc must equal x's D = ", dim,
              "; got ", code_dim);
  TORCH_CHECK(out_proj.has_value() || code_dim == dim, "without out_proj, codebooks' Dc must equal x's D = ", dim,
              "; got ", code_dim);

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
