// The Python extension jax_fa3._C: hands the FFI handlers to Python as
// capsules, plus what jax_fa3._ffi needs to check the build against the
// running jaxlib.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include "ffi/handlers.h"
#include "jax_fa3/params.h"

#if JAX_FA3_WITH_CUDA
#include "jax_fa3/run.h"
#endif

namespace nb = nanobind;

namespace {

nb::capsule capsule(XLA_FFI_Handler* handler) { return nb::capsule(reinterpret_cast<void*>(handler)); }

}  // namespace

NB_MODULE(_C, m) {
  m.doc() = "jax_fa3 native extension (XLA FFI handlers). Use the jax_fa3 package, not this module.";

  // {platform: {target name: handler capsule}}
  m.def("registrations", [] {
    nb::dict cpu, cuda, all;
    cpu["jax_fa3_fwd"] = capsule(JaxFa3FwdCpu);
    cpu["jax_fa3_bwd"] = capsule(JaxFa3BwdCpu);
    cuda["jax_fa3_fwd"] = capsule(JaxFa3FwdCuda);
    cuda["jax_fa3_bwd"] = capsule(JaxFa3BwdCuda);
    all["cpu"] = cpu;
    all["CUDA"] = cuda;
    return all;
  });

  m.attr("built_jaxlib_version") = JAX_FA3_BUILT_JAXLIB;
  m.attr("ffi_api_version") = nb::make_tuple(XLA_FFI_API_MAJOR, XLA_FFI_API_MINOR);
  m.attr("with_cuda") = static_cast<bool>(JAX_FA3_WITH_CUDA);
  m.attr("fwd_workspace_bytes") = jax_fa3::kFwdWorkspaceBytes;

  // (dtype name, head-dim bucket) pairs with compiled CUDA kernels.
  m.def("compiled_kernels", [] {
    std::vector<std::tuple<std::string, int>> kernels;
#if JAX_FA3_WITH_CUDA
    for (auto [dtype, name] : {std::pair{jax_fa3::Dtype::kFloat16, "float16"}, std::pair{jax_fa3::Dtype::kBFloat16, "bfloat16"}})
      for (int head_dim : {64, 96, 128, 192, 256})
        if (jax_fa3::kernels_compiled(dtype, head_dim)) kernels.emplace_back(name, head_dim);
#endif
    return kernels;
  });

  m.def(
      "bwd_workspace_bytes",
      [](int batch, int seqlen_q, int seqlen_k, int heads_q, int heads_kv, int head_dim, bool deterministic) -> size_t {
#if JAX_FA3_WITH_CUDA
        return jax_fa3::bwd_workspace_bytes(
            jax_fa3::AttnShape{batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim}, deterministic);
#else
        (void)batch, (void)seqlen_q, (void)seqlen_k, (void)heads_q, (void)heads_kv, (void)head_dim, (void)deterministic;
        return 0;
#endif
      },
      nb::arg("batch"), nb::arg("seqlen_q"), nb::arg("seqlen_k"), nb::arg("heads_q"), nb::arg("heads_kv"),
      nb::arg("head_dim"), nb::arg("deterministic"));
}
