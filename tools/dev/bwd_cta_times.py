#!/usr/bin/env python3
"""Summarises the backward main kernel's CTA times: the output of
`bwd_check ctatimes [S,..]` from a harness built with -DJAX_FA3_BWD_CTA_TIMES=1
(cpp/include/jax_fa3/bwd/cta_times_bwd_sm90.hpp).

  python3 tools/dev/bwd_cta_times.py log [log ...]

Per configuration (a "cycles b= s= h= d= <mask> <mode>" line and the "CT cta
sm steps start_ns end_ns" lines after it), where the kernel's span goes:
  span        first CTA start to last CTA end (us)
  work        the CTAs' summed durations over (SMs x span): 1.0 if every SM
              ran one CTA at all times
  lead/gaps/tail  the SMs' mean idle time before their first CTA, between
              their CTAs and after their last (us)
  fixed, per step  a least-squares fit of a CTA's duration to a + b * steps
A CTA's end is its first MMA warpgroup's last dK/dV store issued, so a gap
also holds the rest of the epilogue and the next CTA's launch.
"""
import collections
import re
import sys


def summarise(title, ctas):
    start0 = min(c[3] for c in ctas)
    end1 = max(c[4] for c in ctas)
    span = (end1 - start0) / 1e3
    by_sm = collections.defaultdict(list)
    for c in ctas:
        by_sm[c[1]].append(c)
    lead = gaps = tail = 0.0
    for runs in by_sm.values():
        runs.sort(key=lambda c: c[3])
        lead += (runs[0][3] - start0) / 1e3
        tail += (end1 - max(c[4] for c in runs)) / 1e3
        gaps += sum(max(0, b[3] - a[4]) for a, b in zip(runs, runs[1:])) / 1e3
    sms = len(by_sm)
    durations = [(c[4] - c[3]) / 1e3 for c in ctas]
    steps = [c[2] for c in ctas]
    n = len(ctas)
    mean_s, mean_d = sum(steps) / n, sum(durations) / n
    var_s = sum((s - mean_s) ** 2 for s in steps)
    per_step = sum((s - mean_s) * (d - mean_d) for s, d in zip(steps, durations)) / var_s if var_s else 0.0
    fixed = mean_d - per_step * mean_s
    resid = (sum((d - fixed - per_step * s) ** 2 for s, d in zip(steps, durations)) / n) ** 0.5
    print(f"{title}: {n} CTAs on {sms} SMs, span {span:.1f} us, work {sum(durations) / (sms * span):.3f}; "
          f"idle per SM: lead {lead / sms:.1f}, gaps {gaps / sms:.1f}, tail {tail / sms:.1f} us; "
          f"CTA = {fixed:.2f} us + {per_step * 1e3:.0f} ns/step (rms {resid:.2f} us; steps {min(steps)}-{max(steps)})")


def main(paths):
    for path in paths:
        title, ctas = None, []
        with open(path) as f:
            for line in f:
                if line.startswith("cycles "):
                    if ctas:
                        summarise(title, ctas)
                    title, ctas = re.sub(r":.*", "", line.strip()[len("cycles "):]), []
                elif line.startswith("CT "):
                    ctas.append(tuple(int(x) for x in line.split()[1:6]))
        if ctas:
            summarise(title, ctas)


if __name__ == "__main__":
    main(sys.argv[1:])
