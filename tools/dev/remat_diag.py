"""Where do the compiled forward calls of a rematerialised scan come from?

The test `test_remat_policy_can_keep_the_forward_results` (its model: `lowered_remat_scan`) counts the
forward kernel calls in JAX's program (StableHLO). This prints, per checkpoint policy, that count, the
compiled program's count, the computation holding each compiled call, and the first XLA pass after which the
count changed (from an HLO dump of every pass). Run on the backend in question:  python tools/dev/remat_diag.py [--platform gpu] [--dump DIR]
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--platform", default=None, help="JAX platform (default: JAX's default backend)")
parser.add_argument("--dump", default=None, help="folder for the per-pass HLO dump (default: a temporary one)")
args = parser.parse_args()
dump_root = args.dump or tempfile.mkdtemp(prefix="remat_diag_")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jax_fa3  # noqa: E402

# The test's model, from the test itself.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests"))
from test_transforms import lowered_remat_scan  # noqa: E402

CALL = 'custom_call_target="jax_fa3_fwd"'
device = jax.devices(args.platform)[0] if args.platform else jax.devices()[0]
rng = np.random.default_rng(0)
x = jax.device_put(jnp.asarray(rng.standard_normal((2, 19, 4, 64)), jnp.bfloat16), device)
w = jax.device_put(jnp.asarray(rng.standard_normal((3, 64, 64)) * 0.1, jnp.bfloat16), device)


def computations_holding_calls(hlo: str) -> list[str]:
    holders, current = [], None
    for line in hlo.splitlines():
        head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
        if head and not line.startswith(" "):
            current = head.group(1)
        if CALL in line:
            holders.append(current)
    return holders


def first_pass_that_changed_the_count(folder: str) -> str:
    # One file per pass, numbered in order: module_NNNN.jit_loss.NNNN.<pipeline>.after_<pass>.before_<next>.txt
    files = sorted(f for f in os.listdir(folder) if re.match(r"module_\d+\.jit_\w+\.\d{4}\..*\.txt$", f))
    previous = None
    for name in files:
        with open(os.path.join(folder, name)) as f:
            count = f.read().count(CALL)
        if previous is not None and count != previous:
            return f"{previous} -> {count} in {name}"
        previous = count
    return f"unchanged over {len(files)} dumped passes (last count {previous})"


policies = jax.checkpoint_policies
print(f"jax {jax.__version__}, device {device.device_kind}, dump under {dump_root}")
for name, policy in (("nothing_saveable", policies.nothing_saveable),
                     ("save_only_these_names", policies.save_only_these_names(*jax_fa3.RESIDUAL_NAMES)),
                     ("everything_saveable", policies.everything_saveable)):
    folder = os.path.join(dump_root, name)
    os.makedirs(folder, exist_ok=True)
    low = lowered_remat_scan(policy, x, w)
    stablehlo = low.as_text().count("stablehlo.custom_call @jax_fa3_fwd(")
    compiled = low.compile(compiler_options={"xla_dump_to": folder, "xla_dump_hlo_pass_re": ".*"}).as_text()
    print(f"{name}: StableHLO {stablehlo}, compiled {compiled.count(CALL)} in {computations_holding_calls(compiled)}")
    print(f"  {first_pass_that_changed_the_count(folder)}")
