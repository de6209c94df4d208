"""The hot paths of H3/S4D against the straightforward versions they replaced, timed in one run.

Example:
    python scripts/bench_kernels.py                  # H=256 SSMs, N=32 modes, L = 1k..16k
    python scripts/bench_kernels.py --lengths 1024 4096 --json out.json

1. SSM kernel K[h, l] = 2 Re sum_n C dB dA^l, forward + backward: the blocked real-part Vandermonde product
   (``h3_hf.ssm_kernels.vandermonde_real``) vs materialising the (H, N, L) power tensor with one exp per entry.
2. Shift-SSM convolution (N = 64 taps), forward: a real FFT of size fft_length(L + N - 1) (~L)
   (``fft_causal_conv``) vs a real FFT of size 2L.
3. FFT convolution with an L-tap kernel (the diagonal SSM's), forward + backward: ``fft_causal_conv`` (gradients
   as correlations of saved spectra) vs autograd through rfft/irfft.
4. H3 decode step (d=256, 4 layers, batch 1): discretised parameters, shift kernel and fused q/k/v weights
   derived once per generation and kept in the cache vs recomputed every step (two generations advanced
   alternately).
Printed as a table with speed-ups (baseline / fast); JSON with every timing.
"""

import functools
import json
import statistics
import time

import bench_common
import torch
from script_utils import ScriptArgumentParser

from h3_hf import H3Config, H3ForCausalLM
from h3_hf.diagonal_ssm import DiagonalSSMKernel
from h3_hf.fft_conv import fft_causal_conv, fft_length
from h3_hf.modeling_h3 import CACHE_FIELD
from h3_hf.precision import compute_dtype
from h3_hf.ssm_kernels import vandermonde_real


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def materialised_vandermonde(coeff, log_da, length, **_):
    """Baseline: exp of the whole (H, N, L) lag tensor, then a contraction over N."""
    lags = torch.arange(length, dtype=compute_dtype(log_da.real))
    return torch.einsum("hn,hnl->hl", coeff, torch.exp(log_da.unsqueeze(-1) * lags)).real


def kernel_step(kernel: DiagonalSSMKernel, length: int, product):
    def run():
        kernel.zero_grad(set_to_none=True)
        log_da, db, c = kernel.discrete()
        (2 * product(c[0] * db, log_da, length)).square().sum().backward()
    return run


def plain_fft_conv(u, k, n=None):
    """Causal convolution with real FFTs of size ``n`` (default fft_length(L + Lk - 1)), differentiated by
    autograd, with n = 2L (the naive size)."""
    n = n or fft_length(u.shape[-1] + k.shape[-1] - 1)
    return torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)[..., :u.shape[-1]]


def conv_step(conv, u, k, grad):
    def run():
        u.grad = k.grad = None
        conv(u, k).backward(grad)
    return run


@torch.no_grad()
def decode_step_times(model, steps: int, rounds: int = 5) -> tuple[float, float]:
    """Median decode-step seconds recomputing the step parameters every step (baseline) and keeping them in
    the cache (fast); two generations advanced alternately, ``rounds`` x ``steps`` steps each."""
    runs = {}
    for memo in (False, True):
        out = model(input_ids=torch.randint(0, 1024, (1, 128)), use_cache=True)
        runs[memo] = [getattr(out, CACHE_FIELD), out.logits[:, -1:].argmax(-1), []]
    for _ in range(rounds):
        for memo, run in runs.items():
            for _ in range(steps):
                cache, token, times = run
                if not memo:
                    cache.step_parameters.clear()
                start = time.perf_counter()
                out = model(input_ids=token, past_key_values=cache, use_cache=True)
                run[1] = out.logits[:, -1:].argmax(-1)
                times.append(time.perf_counter() - start)
    return tuple(statistics.median(runs[memo][2][2:]) for memo in (False, True))


def main(argv=None):
    parser = ScriptArgumentParser(__doc__)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384], help="sequence lengths L")
    parser.add_argument("--channels", type=int, default=256, help="SSM channels H")
    parser.add_argument("--state-size", type=int, default=64, help="SSM state size (N/2 complex modes)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per case (median reported)")
    parser.add_argument("--json", default="bench_kernels.json", help="where the timings are written")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = []
    kernel = DiagonalSSMKernel(args.channels, args.state_size)
    for length in args.lengths:
        base = timed(kernel_step(kernel, length, materialised_vandermonde), args.repeats)
        fast = timed(kernel_step(kernel, length, vandermonde_real), args.repeats)
        rows.append(("SSM kernel fwd+bwd", length, base, fast))
    for length in args.lengths:
        u, k = torch.randn(1, args.channels, length), torch.randn(args.channels, 64)
        base = timed(functools.partial(plain_fft_conv, u, k, 2 * length), args.repeats)
        fast = timed(functools.partial(fft_causal_conv, u, k), args.repeats)
        rows.append(("shift conv (64 taps)", length, base, fast))
    for length in args.lengths:
        u = torch.randn(1, args.channels, length, requires_grad=True)
        k = torch.randn(args.channels, length, requires_grad=True)
        grad = torch.randn(1, args.channels, length)
        base = timed(conv_step(plain_fft_conv, u, k, grad), args.repeats)
        fast = timed(conv_step(fft_causal_conv, u, k, grad), args.repeats)
        rows.append(("FFT conv fwd+bwd (L taps)", length, base, fast))
    model = H3ForCausalLM(H3Config(vocab_size=1024, hidden_size=256, num_hidden_layers=4,
                                   pad_vocab_size_multiple=1)).eval()
    base, fast = decode_step_times(model, 10)
    rows.append(("H3 decode step", 128, base, fast))

    machine = bench_common.machine()
    print(f"\nH={args.channels}, state {args.state_size}, {machine}")
    print("| path | L | baseline ms | fast ms | speed-up |")
    print("|---|---|---|---|---|")
    for name, length, b, f in rows:
        print(f"| {name} | {length} | {1e3 * b:.2f} | {1e3 * f:.2f} | {b / f:.1f}x |")
    with open(args.json, "w") as f:
        json.dump({"args": vars(args), "machine": machine,
                   "rows": [{"path": n, "length": L, "baseline_s": b, "fast_s": fa} for n, L, b, fa in rows]},
                  f, indent=2)


if __name__ == "__main__":
    main()
