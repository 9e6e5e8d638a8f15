// Input checks of the C++ entries (bindings.cpp). They read tensor metadata only (device, dtype, dim, sizes,
// contiguity), never a data pointer, and read a size only after the check of that tensor's dimension count has
// passed, so a failed check always throws before anything else runs. No CUDA header is needed: the entries pass
// the device type they run on (kCUDA), and tests/native_checks.py also builds these checks on the CPU (kCPU).
#pragma once

#include <torch/extension.h>

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>

namespace mert_fast::checks {

// "(a, b, c)" for a message; plain integers, so building a message cannot fail on any shape.
inline std::string shape_str(const at::Tensor& t) {
  std::string out = "(";
  for (int64_t i = 0; i < t.dim(); ++i) out += (i ? ", " : "") + std::to_string(t.size(i));
  return out + ")";
}

inline std::string shape_str(std::initializer_list<int64_t> shape) {
  std::string out = "(";
  bool first = true;
  for (const int64_t n : shape) {
    out += (first ? "" : ", ") + std::to_string(n);
    first = false;
  }
  return out + ")";
}

// Whether t has exactly this shape: the dimension count first, then each size.
inline bool has_shape(const at::Tensor& t, std::initializer_list<int64_t> shape) {
  if (t.dim() != static_cast<int64_t>(shape.size())) return false;
  int64_t i = 0;
  for (const int64_t n : shape) {
    if (t.size(i++) != n) return false;
  }
  return true;
}

inline void check_shape(const at::Tensor& t, const char* name, const char* meaning,
                        std::initializer_list<int64_t> shape) {
  TORCH_CHECK(has_shape(t, shape), name, " must have shape ", meaning, " = ", shape_str(shape), "; got ",
              shape_str(t));
}

// t lives on ref's device, which is of type `type`.
inline void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name,
                              c10::DeviceType type) {
  TORCH_CHECK(t.device().type() == type && t.device() == ref.device(), name, " must be on ", ref_name, "'s ",
              c10::DeviceTypeName(type), " device; got one on ", t.device().str());
}

inline void check_dtype(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), name, " must have ", ref_name, "'s dtype ",
              c10::toString(ref.scalar_type()), "; got ", c10::toString(t.scalar_type()));
}

inline void check_contiguous(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

inline void check_compute_input(const at::Tensor& x, c10::DeviceType type) {
  TORCH_CHECK(x.device().type() == type, "x must be a ", c10::DeviceTypeName(type), " tensor; got one on ",
              x.device().str());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, "x must be float32 or float64; got ",
              c10::toString(x.scalar_type()));
}

// A tensor operand of x's dtype: on x's device, that dtype, contiguous.
inline void check_operand(const at::Tensor& t, const char* name, const at::Tensor& x, c10::DeviceType type) {
  check_same_device(t, name, x, "x", type);
  check_dtype(t, name, x, "x");
  check_contiguous(t, name);
}

// The same for an optional operand, when given.
inline void check_optional(const std::optional<at::Tensor>& t, const char* name, const at::Tensor& x,
                           c10::DeviceType type) {
  if (t.has_value()) check_operand(t.value(), name, x, type);
}

struct CsrSpmmSizes {
  int64_t n_rows, nnz, batch, n_in;
};

// csr_spmm: crow (R + 1,) and col (nnz,) int64; val (nnz, 2) and x (B, n, 2) of one float dtype; all contiguous on
// x's device; n_cols in {n, 2n}.
inline CsrSpmmSizes check_csr_spmm(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& val,
                                   const at::Tensor& x, int64_t n_cols, c10::DeviceType type) {
  check_compute_input(x, type);
  check_same_device(crow, "crow", x, "x", type);
  check_same_device(col, "col", x, "x", type);
  check_same_device(val, "val", x, "x", type);
  TORCH_CHECK(crow.scalar_type() == at::kLong, "crow must be int64; got ", c10::toString(crow.scalar_type()));
  TORCH_CHECK(col.scalar_type() == at::kLong, "col must be int64; got ", c10::toString(col.scalar_type()));
  check_dtype(val, "val", x, "x");
  check_contiguous(crow, "crow");
  check_contiguous(col, "col");
  check_contiguous(val, "val");
  check_contiguous(x, "x");
  TORCH_CHECK(crow.dim() == 1 && crow.size(0) >= 1, "crow must have shape (R + 1,); got ", shape_str(crow));
  TORCH_CHECK(col.dim() == 1, "col must have shape (nnz,); got ", shape_str(col));
  TORCH_CHECK(x.dim() == 3 && x.size(2) == 2, "x must have shape (B, n, 2); got ", shape_str(x));
  const CsrSpmmSizes s{crow.size(0) - 1, col.size(0), x.size(0), x.size(1)};
  check_shape(val, "val", "(nnz, 2)", {s.nnz, 2});
  TORCH_CHECK(n_cols == s.n_in || n_cols == 2 * s.n_in,
              "n_cols must be n or 2n for x of shape (B, n, 2) with n = ", s.n_in, "; got ", n_cols);
  return s;
}

struct RvqEncodeSizes {
  int64_t n_rows, dim, n_stages, n_codes, code_dim;
};

// rvq_encode: x (N, D) float32/float64; codebooks (Q, K, Dc), lookup (n_q, K, Dc), norms (n_q, K); optional
// in_proj (Q, Dc, D), in_bias (Q, Dc), out_proj (Q, D, Dc), out_bias (Q, D); all of x's dtype, contiguous, on x's
// device; 1 <= n_q <= Q; a bias needs its projection; without a projection, Dc == D.
inline RvqEncodeSizes check_rvq_encode(const at::Tensor& x, const at::Tensor& codebooks, const at::Tensor& lookup,
                                       const at::Tensor& norms, const std::optional<at::Tensor>& in_proj,
                                       const std::optional<at::Tensor>& in_bias,
                                       const std::optional<at::Tensor>& out_proj,
                                       const std::optional<at::Tensor>& out_bias, int64_t n_q,
                                       c10::DeviceType type) {
  check_compute_input(x, type);
  check_contiguous(x, "x");
  TORCH_CHECK(x.dim() == 2, "x must have shape (N, D); got ", shape_str(x));
  check_operand(codebooks, "codebooks", x, type);
  check_operand(lookup, "lookup", x, type);
  check_operand(norms, "norms", x, type);
  check_optional(in_proj, "in_proj", x, type);
  check_optional(in_bias, "in_bias", x, type);
  check_optional(out_proj, "out_proj", x, type);
  check_optional(out_bias, "out_bias", x, type);
  TORCH_CHECK(codebooks.dim() == 3, "codebooks must have shape (Q, K, Dc); got ", shape_str(codebooks));
  const RvqEncodeSizes s{x.size(0), x.size(1), codebooks.size(0), codebooks.size(1), codebooks.size(2)};
  TORCH_CHECK(s.n_stages >= 1 && s.n_codes >= 1 && s.code_dim >= 1 && s.dim >= 1,
              "codebooks and x need Q, K, Dc, D >= 1; got codebooks ", shape_str(codebooks), " and x ", shape_str(x));
  TORCH_CHECK(n_q >= 1 && n_q <= s.n_stages, "n_q must be in [1, Q] = [1, ", s.n_stages, "]; got ", n_q);
  check_shape(lookup, "lookup", "(n_q, K, Dc)", {n_q, s.n_codes, s.code_dim});
  check_shape(norms, "norms", "(n_q, K)", {n_q, s.n_codes});
  TORCH_CHECK(!in_bias.has_value() || in_proj.has_value(), "in_bias needs in_proj");
  TORCH_CHECK(!out_bias.has_value() || out_proj.has_value(), "out_bias needs out_proj");
  if (in_proj.has_value()) check_shape(in_proj.value(), "in_proj", "(Q, Dc, D)", {s.n_stages, s.code_dim, s.dim});
  if (in_bias.has_value()) check_shape(in_bias.value(), "in_bias", "(Q, Dc)", {s.n_stages, s.code_dim});
  if (out_proj.has_value()) check_shape(out_proj.value(), "out_proj", "(Q, D, Dc)", {s.n_stages, s.dim, s.code_dim});
  if (out_bias.has_value()) check_shape(out_bias.value(), "out_bias", "(Q, D)", {s.n_stages, s.dim});
  TORCH_CHECK(in_proj.has_value() || s.code_dim == s.dim, "without in_proj, codebooks' Dc must equal x's D = ", s.dim,
              "; got ", s.code_dim);
  TORCH_CHECK(out_proj.has_value() || s.code_dim == s.dim, "without out_proj, codebooks' Dc must equal x's D = ",
              s.dim, "; got ", s.code_dim);
  return s;
}

}  // namespace mert_fast::checks
