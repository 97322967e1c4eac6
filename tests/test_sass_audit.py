"""The SASS audit (tools/dev/sass_audit.py): its rules on a small listing, and
on the kernels this installation was built with (no GPU needed: cuobjdump
reads the compiled code; skipped where the build has no CUDA kernels or no
cuobjdump is found)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

import jax_fa3

ROOT = Path(__file__).resolve().parents[1]


def _audit_module():
    spec = importlib.util.spec_from_file_location("sass_audit", ROOT / "tools" / "dev" / "sass_audit.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


LISTING = """
\t\tFunction : _ZN7jax_fa33bwd15bwd_main_kernelIcleanE
        /*0000*/                   LDC R1, c[0x0][0x28] ;                        /* 0x00000a00ff017b82 */
        /*0010*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], RZ, !UPT ;  /* 0x00000000041879f0 */
        /*0020*/              @!P0 REDG.E.ADD.F32x2.FTZ.RN.STRONG.GPU desc[UR4][R2.64], R4 ;  /* 0x0000000402007986 */
        /*0030*/                   ATOMG.E.ADD.STRONG.GPU PT, R2, desc[UR36][R2.64], R7 ;  /* 0x00000007020279a8 */
        /*0040*/                   EXIT ;                                        /* 0x000000000000794d */
\t\tFunction : _ZN7jax_fa315fwd_kernel_sm90IspillsE
        /*0000*/                   STL [R1], R2 ;                                /* 0x0000000201007387 */
        /*0010*/                   LDL R2, [R1] ;                                /* 0x0000000001027983 */
        /*0020*/                   WARPSYNC.COLLECTIVE R8, 0x8a0 ;               /* 0x0000000008087348 */
        /*0030*/                   SHFL.BFLY PT, R9, R8, 0x1, 0x1f ;             /* 0x0c201f0008097f89 */
        /*0040*/                   ENDCOLLECTIVE ;                               /* 0x000000000000791b */
        /*0050*/                   EXIT ;                                        /* 0x000000000000794d */
\t\tFunction : _ZN7jax_fa33bwd21bwd_convert_dq_kernelIE
        /*0000*/                   ATOMG.E.ADD.F32x2.FTZ.RN.STRONG.GPU PT, RZ, desc[UR4][R2.64], R8 ;  /* 0x00 */
        /*0010*/                   EXIT ;                                        /* 0x000000000000794d */
"""


def test_rules_on_a_listing():
    audit = _audit_module()
    clean, spills, atomic = audit.parse_sass(LISTING)
    assert clean.instructions == 5 and clean.opcodes["HGMMA"] == 1 and clean.opcodes["REDG"] == 1
    assert clean.is_main and clean.violations() == []  # an ATOMG whose result is used is fine
    assert spills.is_main
    assert spills.violations() == ["2 local-memory instructions (LDL/STL)", "no HGMMA in an attention main kernel",
                                   "1 WARPSYNC.COLLECTIVE (warp-collective code emulated as divergent)"]
    assert not atomic.is_main
    assert atomic.violations() == ["1 ATOMG with a discarded result (should be REDG)"]


def test_built_kernels_pass_the_audit(capsys):
    if not jax_fa3.WITH_CUDA:
        pytest.skip("jax_fa3 was built without CUDA kernels")
    audit = _audit_module()
    if audit.find_cuobjdump(None) is None:
        pytest.skip("no cuobjdump with an nvdisasm (pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)")
    extension = importlib.util.find_spec("jax_fa3._C").origin
    status = audit.main([extension])
    report = capsys.readouterr().out
    assert status == 0, report
    main_kernels = re.search(r"(\d+) attention main kernels", report)
    assert main_kernels and int(main_kernels.group(1)) > 0, report


def test_schedule_decoding_on_a_listing():
    """sass_audit --schedule reads ptxas's control bits: two instructions of the forward's softmax, an
    exponential that sets scoreboard 1 and a row-sum add that waits on scoreboard 2 (set by an earlier
    exponential, of R25), one cycle of stall each."""
    listing = """
        Function : _ZN7jax_fa315fwd_kernel_sm90E
        /*10ee0*/                   MUFU.EX2 R27, R27 ;                                  /* 0x0000001b001b7308 */
                                                                                         /* 0x000e620000000800 */
        /*10ef0*/                   FADD R7, R25, R22 ;                                  /* 0x0000001619077221 */
                                                                                         /* 0x004fe20000000000 */
    """.splitlines()
    audit = _audit_module()
    mufu, fadd = audit.schedule(listing, "fwd_kernel_sm90")
    # (address, text, stall, yield clear, write scoreboard, read scoreboard (7: none), wait mask)
    assert mufu == (0x10EE0, "MUFU.EX2 R27, R27", 1, False, 1, 7, 0)
    assert fadd == (0x10EF0, "FADD R7, R25, R22", 1, False, 7, 7, 0b000100)
    assert list(audit.schedule(listing, "bwd_main_kernel")) == []


def test_loop_blocks_on_a_listing(capsys):
    """sass_audit --loop finds the loop holding the most HGMMA (not a wait loop without any) and cuts it into
    basic blocks at branch targets and after branches: here a step whose softcap path (MUFU.TANH) is skipped
    by a forward branch."""

    def instruction(address: int, text: str) -> str:
        # Control bits: stall 1, no scoreboards (the second word's top bits).
        return (f"        /*{address:04x}*/                   {text} ;      /* 0x0000000000000000 */\n"
                f"                                                   /* 0x000fe20000000800 */")

    body = ["MOV R1, R2", "SYNCS.PHASECHK.TRANS64.TRYWAIT P0, [UR4], R3", "@!P0 BRA 0x10",
            "HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], RZ, !UPT", "@P1 BRA 0x70", "MUFU.TANH R4, R4",
            "FFMA R4, R4, R5, R6", "MUFU.EX2 R4, R4", "@!P2 BRA 0x30", "EXIT"]
    listing = ("        Function : _ZN7jax_fa33bwd15bwd_main_kernelIloopE\n"
               + "\n".join(instruction(16 * i, text) for i, text in enumerate(body))).splitlines()
    _audit_module().print_loop(listing, "bwd_main_kernel")
    assert capsys.readouterr().out.splitlines() == [
        "loop [0x30, 0x80]: 6 instructions in 3 blocks",
        "00030     2  HGMMA.64x64x16:1  | @P1 BRA 0x70",
        "00050     2  FFMA:1 MUFU.TANH:1",
        "00070     2  MUFU.EX2:1  | @!P2 BRA 0x30",
    ]
