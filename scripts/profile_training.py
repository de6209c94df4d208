"""Where an H3 training step spends its time: torch.profiler over forward + backward, ops sorted by self CPU time.

Example:
    python scripts/profile_training.py                       # the bench_training.py H3 (d=256, 4 layers) at L = 8192
    python scripts/profile_training.py --length 1024 --steps 3 --rows 30

One warm-up step, then ``--steps`` profiled steps; the table shows per-step milliseconds (totals / steps).
"""

import time

import torch
from script_utils import ScriptArgumentParser
from torch.profiler import ProfilerActivity, profile

import h3_hf


def main(argv=None):
    parser = ScriptArgumentParser(__doc__)
    parser.add_argument("--length", type=int, default=8192, help="sequence length")
    parser.add_argument("--hidden-size", type=int, default=256, help="model width")
    parser.add_argument("--layers", type=int, default=4, help="layers")
    parser.add_argument("--vocab", type=int, default=1024, help="vocabulary size")
    parser.add_argument("--batch", type=int, default=1, help="batch size")
    parser.add_argument("--steps", type=int, default=2, help="profiled steps after one warm-up step")
    parser.add_argument("--rows", type=int, default=25, help="ops listed")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    config = h3_hf.H3Config(vocab_size=args.vocab, hidden_size=args.hidden_size, num_hidden_layers=args.layers,
                            pad_vocab_size_multiple=1, embedding_dropout=0.0)
    model = h3_hf.H3ForCausalLM(config).train()
    ids = torch.randint(0, args.vocab, (args.batch, args.length))

    def step():
        model(input_ids=ids, labels=ids).loss.backward()
        model.zero_grad(set_to_none=True)

    step()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    wall = (time.perf_counter() - start) / args.steps
    print(f"H3 d={args.hidden_size}, {args.layers} layers, L={args.length}, batch {args.batch}: "
          f"{1e3 * wall:.0f} ms per step under the profiler ({torch.get_num_threads()} threads)")
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    print("| op | calls/step | self ms/step | share |\n|---|---|---|---|")
    for e in events[:args.rows]:
        print(f"| {e.key} | {e.count / args.steps:.0f} | {e.self_cpu_time_total / 1e3 / args.steps:.1f} | "
              f"{100 * e.self_cpu_time_total / total:.1f}% |")


if __name__ == "__main__":
    main()
