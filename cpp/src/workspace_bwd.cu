// Host-side size of the backward workspace; the carving itself is
// BwdWorkspace (bwd/workspace_bwd.h), shared with the launcher.
#include "jax_fa3/bwd/workspace_bwd.h"
#include "jax_fa3/run.h"

namespace jax_fa3 {

size_t bwd_workspace_bytes(const AttnShape& shape, bool deterministic) {
  switch (head_dim_bucket(shape.head_dim)) {
    case 64: return bwd_workspace_bytes_for<64>(shape, deterministic);
    case 96: return bwd_workspace_bytes_for<96>(shape, deterministic);
    case 128: return bwd_workspace_bytes_for<128>(shape, deterministic);
    case 192: return bwd_workspace_bytes_for<192>(shape, deterministic);
    case 256: return bwd_workspace_bytes_for<256>(shape, deterministic);
    default: return 0;
  }
}

}  // namespace jax_fa3
