"""The compiler's static schedule in SASS: each instruction's control bits.

    python tools/dev/sass_stalls.py <cuobjdump -sass listing> [--kernel SUBSTRING] [--range START END]

cuobjdump prints every sm_90 instruction with its 128-bit encoding; the top
bits of the second 64-bit word are the control bits ptxas sets (the layout
Volta introduced): stall cycles before the next instruction of the warp may
issue (4 bits), yield, the scoreboard the instruction sets when it writes (W)
and when it has read its operands (R), and the scoreboards it waits for (w).
The sum of the stall counts over a stretch of code is the fewest cycles one
warp needs to issue it, before any scoreboard or barrier wait: a floor under
that stretch's time, from the compiler's own latency model.

Prints the listing with those fields (one line per instruction: address,
stall, Y when the yield bit is clear, W/R/w, the instruction), then the sum of
the stall counts and the instruction count over [START, END) (hex addresses)
when --range is given.
"""

from __future__ import annotations

import argparse
import re
import sys

_INSTRUCTION = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?);\s*/\* 0x([0-9a-f]{16}) \*/")
_SECOND_WORD = re.compile(r"^\s*/\* 0x([0-9a-f]{16}) \*/")
_FUNCTION = re.compile(r"^\s*Function\s*:\s*(\S+)")


def instructions(lines, kernel: str | None):
    """(address, text, stall, yield_clear, write_sb, read_sb, wait_mask) per instruction of the kernel."""
    inside = kernel is None
    for i, line in enumerate(lines):
        function = _FUNCTION.match(line)
        if function:
            inside = kernel is None or kernel in function.group(1)
            continue
        match = _INSTRUCTION.match(line)
        if not inside or not match or i + 1 >= len(lines):
            continue
        second = _SECOND_WORD.match(lines[i + 1])
        if not second:
            continue
        control = int(second.group(1), 16) >> 41
        yield (int(match.group(1), 16), match.group(2).strip(), control & 0xF, not (control >> 4) & 1,
               (control >> 5) & 7, (control >> 8) & 7, (control >> 11) & 0x3F)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("listing", help="cuobjdump -sass output")
    parser.add_argument("--kernel", help="only the function whose name contains this")
    parser.add_argument("--range", nargs=2, metavar=("START", "END"), help="hex addresses: sum the stalls over it")
    args = parser.parse_args(argv)
    with open(args.listing) as f:
        lines = f.read().splitlines()
    start, end = (int(a, 16) for a in args.range) if args.range else (None, None)
    total = count = 0
    for address, text, stall, yield_clear, write_sb, read_sb, wait in instructions(lines, args.kernel):
        fields = [f"W{write_sb}" if write_sb != 7 else "", f"R{read_sb}" if read_sb != 7 else "",
                  "w" + "".join(str(b) for b in range(6) if wait >> b & 1) if wait else ""]
        print(f"{address:05x} s{stall:<2} {'Y' if yield_clear else ' '} {fields[0]:3} {fields[1]:3} {fields[2]:7} {text}")
        if start is not None and start <= address < end:
            total += stall
            count += 1
    if start is not None:
        print(f"[{start:#x}, {end:#x}): {count} instructions, {total} cycles of stall counts", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
