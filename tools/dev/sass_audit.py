"""Audits the SASS of built kernels, without a GPU.

    python tools/dev/sass_audit.py <binary> [--cuobjdump PATH] [--all]
    python tools/dev/sass_audit.py <binary> --schedule KERNEL [--range START END]
    python tools/dev/sass_audit.py <binary> --loop KERNEL

<binary>: anything cuobjdump reads (the extension's .so, a harness executable,
a cubin) or a wheel (its .so files are audited). Per kernel it counts the
instructions that tell whether a hot kernel is what we meant it to be, and it
exits 1 when a rule is broken:

- no local memory (LDL/STL: register spills or a stack array) in any kernel;
- every attention main kernel (forward, backward main) issues HGMMA (wgmma);
- no ATOMG whose result goes to RZ: an atomic whose result is discarded
  should be a reduction (REDG). ptxas turns atomicAdd with an unused result
  into ATOMG instead of REDG when the kernel holds a memory fence anywhere
  (benchmarks/results/2026-12-04j_h200_bwd_det.md);
- no WARPSYNC.COLLECTIVE in an attention main kernel: ptxas emulates a
  warp-collective instruction (a shuffle, a vote) that way where it cannot
  prove the warp converged, e.g. after a branch on a value it does not know
  to be warp-uniform. The first build of the forward's split last round
  (an early return on a flag from a named barrier) had 36 of them, in the
  softmax's and the epilogue's shuffles, and ran 1.5-16% slower than the
  kernel it changed (benchmarks/results/2026-12-05f_h100_fwd_split.md).

--schedule: instead, the compiler's static schedule of the first kernel whose
name contains KERNEL. cuobjdump prints each instruction with its 128-bit
encoding; the top bits of the second 64-bit word are the control bits ptxas
sets (the layout Volta introduced): stall cycles before the warp's next
instruction may issue (4 bits), yield, the scoreboard the instruction sets
when it writes (W) and when it has read its operands (R), and the scoreboards
it waits for (w). Prints one line per instruction (address, stall, Y when the
yield bit is clear, W/R/w, the instruction) and, with --range (hex
addresses), the sum of the stall counts over [START, END): the fewest cycles
one warp needs to issue that stretch before any scoreboard or barrier wait, a
floor from the compiler's own latency model.

--loop: instead, the basic blocks of that kernel's main loop (the backward
branch whose body holds the most HGMMA: the MMA warpgroups' step), one line
each: address, instruction count, the opcodes that tell a step's paths apart
(HGMMA shapes, MUFU, FFMA, FSEL, ...) and the branch that ends it. A step's
static count along one path (e.g. no softcap, no mask test) is the sum over
that path's blocks: a GPU-free comparison with another library's kernel.

cuobjdump: --cuobjdump, $CUOBJDUMP, the PATH, or the one in the
nvidia-cuda-cuobjdump wheel; it needs nvdisasm (`pip install
nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm` puts both in one folder; a CUDA 13
cuobjdump reads the sm_90a code nvcc 13.0 writes).
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field

MAIN_KERNELS = ("fwd_kernel_sm90", "bwd_main_kernel")
_FUNCTION = re.compile(r"^\s*Function\s*:\s*(\S+)")
# "/*0c30*/  @!P0  ATOMG.E.ADD.STRONG.GPU PT, RZ, desc[UR4][R2.64], R5 ;"
_INSTRUCTION = re.compile(r"^\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)((?:\.[A-Za-z0-9_]+)*)\s*(.*?);")
# An instruction with its encoding's first word, and the second word's line.
_ENCODED = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?);\s*/\* 0x([0-9a-f]{16}) \*/")
_SECOND_WORD = re.compile(r"^\s*/\* 0x([0-9a-f]{16}) \*/")


@dataclass
class Kernel:
    name: str
    opcodes: collections.Counter = field(default_factory=collections.Counter)
    discarded_atomics: int = 0
    collective: int = 0  # WARPSYNC.COLLECTIVE (not WARPSYNC.ALL, __syncwarp)

    @property
    def instructions(self) -> int:
        return sum(self.opcodes.values())

    @property
    def is_main(self) -> bool:
        return any(k in self.name for k in MAIN_KERNELS)

    def violations(self) -> list[str]:
        out = []
        local = self.opcodes["LDL"] + self.opcodes["STL"]
        if local:
            out.append(f"{local} local-memory instructions (LDL/STL)")
        if self.is_main and not self.opcodes["HGMMA"]:
            out.append("no HGMMA in an attention main kernel")
        if self.discarded_atomics:
            out.append(f"{self.discarded_atomics} ATOMG with a discarded result (should be REDG)")
        if self.is_main and self.collective:
            out.append(f"{self.collective} WARPSYNC.COLLECTIVE (warp-collective code emulated as divergent)")
        return out


def parse_sass(text: str) -> list[Kernel]:
    """Kernels of a `cuobjdump -sass` listing, in order (a kernel that appears
    in several ELF images is listed once per image)."""
    kernels: list[Kernel] = []
    for line in text.splitlines():
        m = _FUNCTION.match(line)
        if m:
            kernels.append(Kernel(m.group(1)))
            continue
        m = _INSTRUCTION.match(line)
        if m and kernels:
            opcode, operands = m.group(1), m.group(3)
            kernels[-1].opcodes[opcode] += 1
            if opcode == "WARPSYNC" and ".COLLECTIVE" in m.group(2):
                kernels[-1].collective += 1
            # ATOMG's first destinations: a predicate, then the result register.
            if opcode == "ATOMG" and re.match(r"^\s*U?PT,\s*RZ,", operands):
                kernels[-1].discarded_atomics += 1
    return kernels


def schedule(lines: list[str], kernel: str):
    """(address, text, stall, yield_clear, write_sb, read_sb, wait_mask) per
    instruction of the first kernel whose name contains ``kernel``."""
    inside = False
    for i, line in enumerate(lines):
        function = _FUNCTION.match(line)
        if function:
            if inside:  # that kernel ended
                return
            inside = kernel in function.group(1)
            continue
        match = _ENCODED.match(line)
        second = _SECOND_WORD.match(lines[i + 1]) if match and i + 1 < len(lines) else None
        if not inside or not second:
            continue
        control = int(second.group(1), 16) >> 41
        yield (int(match.group(1), 16), match.group(2).strip(), control & 0xF, not (control >> 4) & 1,
               (control >> 5) & 7, (control >> 8) & 7, (control >> 11) & 0x3F)


def print_schedule(lines: list[str], kernel: str, address_range) -> None:
    start, end = (int(a, 16) for a in address_range) if address_range else (None, None)
    total = count = 0
    for address, text, stall, yield_clear, write_sb, read_sb, wait in schedule(lines, kernel):
        fields = [f"W{write_sb}" if write_sb != 7 else "", f"R{read_sb}" if read_sb != 7 else "",
                  "w" + "".join(str(b) for b in range(6) if wait >> b & 1) if wait else ""]
        print(f"{address:05x} s{stall:<2} {'Y' if yield_clear else ' '} {fields[0]:3} {fields[1]:3} {fields[2]:7} {text}")
        if start is not None and start <= address < end:
            total += stall
            count += 1
    if start is not None:
        print(f"[{start:#x}, {end:#x}): {count} instructions, {total} cycles of stall counts", file=sys.stderr)


def opcode(text: str) -> str:
    """An instruction's opcode with its first modifier (HGMMA.64x64x16, STS.128, MUFU.EX2), its predicate
    dropped: "@!P0 LDS.64 R20, [R22]" -> "LDS.64"."""
    words = text.split()
    if words and words[0].startswith("@"):
        words = words[1:]
    return ".".join(words[0].split(".")[:2]) if words else "?"


_BRANCH = re.compile(r"\bBRA\b(?:\.\w+)*\s+`?\(?(0x[0-9a-f]+)")
_LOOP_OPCODES = ("HGMMA", "MUFU", "FFMA", "FSEL", "ISETP", "LDS", "STS", "STSM", "REDG", "BAR", "SYNCS")


def print_loop(lines: list[str], kernel: str) -> None:
    body = [(address, text) for address, text, *_ in schedule(lines, kernel)]
    # Each instruction's branch target (None: not a branch).
    target = [int(b.group(1), 16) if (b := _BRANCH.search(text)) else None for _, text in body]
    loops = []  # (HGMMA count, -length, first index, last index)
    for last, (address, _) in enumerate(body):
        if target[last] is not None and target[last] < address:
            first = next(i for i, (a, _) in enumerate(body) if a >= target[last])
            hgmma = sum("HGMMA" in t for _, t in body[first:last + 1])
            loops.append((hgmma, first - last, first, last))
    if not loops:
        print(f"sass_audit: no loop in a kernel named like {kernel}", file=sys.stderr)
        return
    _, _, first, last = max(loops)
    targets = set(target[first:last + 1])
    blocks, block = [], []  # block: indices into body
    for i in range(first, last + 1):
        if body[i][0] in targets and block:
            blocks.append(block)
            block = []
        block.append(i)
        if target[i] is not None:
            blocks.append(block)
            block = []
    if block:
        blocks.append(block)
    print(f"loop [{body[first][0]:#x}, {body[last][0]:#x}]: {last - first + 1} instructions in {len(blocks)} blocks")
    for block in blocks:
        counts = collections.Counter(op for op in (opcode(body[i][1]) for i in block)
                                     if op.split(".")[0] in _LOOP_OPCODES)
        ends = f"  | {body[block[-1]][1]}" if target[block[-1]] is not None else ""
        opcodes = " ".join(f"{k}:{v}" for k, v in sorted(counts.items()))
        print(f"{body[block[0]][0]:05x} {len(block):5d}  {opcodes}{ends}")


def _executable(path: str | None) -> bool:
    return bool(path) and os.path.isfile(path) and os.access(path, os.X_OK)


def find_cuobjdump(explicit: str | None) -> str | None:
    """A cuobjdump that can disassemble: `cuobjdump -sass` runs nvdisasm, found
    beside it, on the PATH or at $NVDISASM_PATH (sass_of puts cuobjdump's
    folder first on the PATH)."""
    candidates = [explicit, os.environ.get("CUOBJDUMP"), shutil.which("cuobjdump")]
    for entry in sys.path:
        candidates += glob.glob(os.path.join(entry, "nvidia", "cu*", "bin", "cuobjdump"))
    for candidate in candidates:
        if not _executable(candidate):
            continue
        beside = os.path.join(os.path.dirname(candidate), "nvdisasm")
        nvdisasm_path = os.environ.get("NVDISASM_PATH")
        if (_executable(beside) or shutil.which("nvdisasm")
                or (nvdisasm_path and _executable(os.path.join(nvdisasm_path, "nvdisasm")))):
            return candidate
    return None


def demangled(names: list[str]) -> list[str]:
    cxxfilt = shutil.which("c++filt")
    if not cxxfilt:
        return names
    out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return out if len(out) == len(names) else names


def sass_of(binary: str, cuobjdump: str) -> str:
    if not binary.endswith(".whl"):
        env = dict(os.environ, PATH=os.path.dirname(cuobjdump) + os.pathsep + os.environ.get("PATH", ""))
        run = subprocess.run([cuobjdump, "-sass", binary], capture_output=True, text=True, env=env)
        if run.returncode != 0:
            raise RuntimeError(f"{cuobjdump} -sass {binary} failed: {run.stderr.strip()}")
        return run.stdout
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(binary) as wheel:
            libraries = [n for n in wheel.namelist() if n.endswith(".so")]
            wheel.extractall(tmp, libraries)
        return "".join(sass_of(os.path.join(tmp, n), cuobjdump) for n in libraries)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("binary")
    parser.add_argument("--cuobjdump")
    parser.add_argument("--all", action="store_true", help="list every kernel, not only the main ones")
    parser.add_argument("--schedule", metavar="KERNEL", help="print this kernel's control bits instead (see --help)")
    parser.add_argument("--range", nargs=2, metavar=("START", "END"), help="with --schedule: sum the stalls here")
    parser.add_argument("--loop", metavar="KERNEL", help="print this kernel's main loop by basic block (see --help)")
    args = parser.parse_args(argv)
    cuobjdump = find_cuobjdump(args.cuobjdump)
    if cuobjdump is None:
        print("sass_audit: no cuobjdump with an nvdisasm (see --help)", file=sys.stderr)
        return 2
    listing = sass_of(args.binary, cuobjdump)
    if args.schedule:
        print_schedule(listing.splitlines(), args.schedule, args.range)
        return 0
    if args.loop:
        print_loop(listing.splitlines(), args.loop)
        return 0
    kernels = parse_sass(listing)
    if not kernels:
        print(f"sass_audit: no SASS in {args.binary}", file=sys.stderr)
        return 2
    names = demangled([k.name for k in kernels])
    print(f"{'instr':>6} {'HGMMA':>5} {'MUFU':>5} {'REDG':>4} {'ATOMG':>5} {'LDL+STL':>7}  kernel")
    failed = 0
    for kernel, name in zip(kernels, names):
        problems = kernel.violations()
        failed += bool(problems)
        if args.all or kernel.is_main or problems:
            o = kernel.opcodes
            print(f"{kernel.instructions:6d} {o['HGMMA']:5d} {o['MUFU']:5d} {o['REDG']:4d} {o['ATOMG']:5d} "
                  f"{o['LDL'] + o['STL']:7d}  {name[:150]}")
            for problem in problems:
                print(f"       ^ {problem}")
    print(f"sass_audit: {len(kernels)} kernels, {sum(k.is_main for k in kernels)} attention main kernels, "
          f"{failed} with problems")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
