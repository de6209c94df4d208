"""S5's parallel associative scan vs the sequential loop, as a ratio measured in one run.

Example:
    python scripts/bench_scan.py                              # L = 1k ... 16k, batch 8, 32 complex states
    python scripts/bench_scan.py --lengths 1024 4096 --json scan.json

Both compute x_k = a_k x_{k-1} + b_k for complex64 inputs (batch, L, P_h): a time-invariant a (fixed
steps) and a per-position a (``timesteps``), the two cases of an S5 layer. Median of ``--repeats`` runs.
"""

import json
import statistics
import time

import bench_common
import torch
from script_utils import ScriptArgumentParser

from h3_hf.ssm_scan import associative_scan, sequential_scan


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None):
    parser = ScriptArgumentParser(__doc__)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384],
                        help="sequence lengths L")
    parser.add_argument("--batch", type=int, default=8, help="batch size")
    parser.add_argument("--states", type=int, default=32, help="complex states P_h")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported)")
    parser.add_argument("--json", default="bench_scan.json", help="where the timings are written")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = []
    print(bench_common.machine())
    print(f"batch {args.batch}, {args.states} complex states, complex64, median of {args.repeats}\n")
    print("| L | sequential loop | parallel scan (fixed step) | ratio | parallel scan (per-position step) | ratio |")
    print("|---|---|---|---|---|---|")
    for length in args.lengths:
        b = torch.randn(args.batch, length, args.states, dtype=torch.complex64)
        a_fixed = torch.polar(torch.rand(1, 1, args.states) * 0.1 + 0.9, torch.rand(1, 1, args.states))
        a_varying = torch.polar(torch.rand(args.batch, length, args.states) * 0.1 + 0.9,
                                torch.rand(args.batch, length, args.states))
        seq = median_seconds(lambda a=a_varying, b=b: sequential_scan(a, b), max(1, args.repeats // 2))
        fixed = median_seconds(lambda a=a_fixed, b=b: associative_scan(a, b), args.repeats)
        varying = median_seconds(lambda a=a_varying, b=b: associative_scan(a, b), args.repeats)
        err = (associative_scan(a_varying, b) - sequential_scan(a_varying, b)).abs().max().item()
        rows.append(dict(length=length, sequential_s=seq, parallel_fixed_s=fixed, parallel_varying_s=varying,
                         speedup_fixed=seq / fixed, speedup_varying=seq / varying, max_abs_error=err))
        print(f"| {length} | {seq * 1e3:.1f} ms | {fixed * 1e3:.2f} ms | {seq / fixed:.1f}x | "
              f"{varying * 1e3:.2f} ms | {seq / varying:.1f}x |")
    with open(args.json, "w") as f:
        json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), "batch": args.batch,
                   "states": args.states, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
