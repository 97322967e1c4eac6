// FFI handler symbols, one per (target, platform). Target names (what Python
// registers them under) are "jax_fa3_fwd" and "jax_fa3_bwd" on both platforms.
#pragma once

#include "xla/ffi/api/ffi.h"

XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxFa3FwdCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxFa3BwdCpu);
// Built with CUDA: the kernels. Built without: a handler that fails with a
// message saying how to get them.
XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxFa3FwdCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxFa3BwdCuda);
