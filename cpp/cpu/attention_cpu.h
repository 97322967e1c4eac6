// The CPU backend: a plain, exact implementation of the same forward and
// backward the CUDA kernels compute (fp32 accumulation, one thread per
// (batch, head) work item). It makes the whole FFI path testable without a GPU
// and serves arrays that live on the CPU.
#pragma once

#include "jax_fa3/params.h"

namespace jax_fa3::cpu {

void run_fwd(const FwdParams& params);
// BwdParams::workspace is not used.
void run_bwd(const BwdParams& params);

}  // namespace jax_fa3::cpu
