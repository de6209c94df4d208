"""GPU checks in one command: training step, generate() decode, FFT convolution throughput; one JSON file.

Example:
    bash scripts/gpu_check.sh                                  # on a CUDA machine: the 125M shape, < 8 minutes
    bash scripts/gpu_check.sh --json gpu_check.json --items train decode
    python scripts/gpu_check.py --device cpu --shape tiny      # the same items at toy sizes on CPU (seconds)

Items (each under its own time limit, --item_seconds; an item that fails or runs out of time is recorded as such
and the others still run):
  train   one bf16-autocast training step (forward + backward + AdamW) of H3 (pure and hybrid) and GPT-2 of the
          same shape at 2k and 8k tokens: median ms of --steps steps after a warm-up, peak memory;
  decode  greedy generate() of H3 (pure), H3 hybrid and GPT-2 after a 1k-token prompt: median ms per decode step
          eager, and with the decode step compiled (torch.compile mode="reduce-overhead", CUDA graphs on GPU;
          GPT-2 with a static cache, as transformers compiles it);
  fft     H3's FFT causal convolution (fft_causal_conv, float32, (batch, channels, L)) forward, as bytes moved per
          second (input + kernel + output) over the device's measured copy bandwidth (a large tensor copied).
Without CUDA, --device auto runs on CPU (useful to check the command; numbers are not GPU numbers).
"""

import json
import signal
import statistics
import sys
import time
from contextlib import contextmanager

import torch
from script_utils import ScriptArgumentParser

ITEMS = ("train", "decode", "fft")
SHAPES = {  # width, layers, heads, vocabulary, training lengths, decode prompt, FFT (batch, channels, length)
    "125m": dict(hidden_size=768, layers=12, heads=12, vocab=50257, train_lengths=[2048, 8192], prompt=1024,
                 fft=(8, 768, 8192)),
    "tiny": dict(hidden_size=32, layers=2, heads=2, vocab=64, train_lengths=[64, 128], prompt=32, fft=(2, 16, 256)),
}


class ItemTimeout(Exception):
    pass


@contextmanager
def time_limit(seconds: int):
    """Raise ItemTimeout after ``seconds`` (SIGALRM: the main thread of a Unix process)."""
    def expire(signum, frame):
        raise ItemTimeout(f"over {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn, device: torch.device, steps: int) -> float:
    """fn() once untimed, then the median of ``steps`` timed calls, in milliseconds."""
    fn()
    times = []
    for _ in range(steps):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def build_lm(kind: str, shape: dict, max_length: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    from h3_hf import H3Config, H3ForCausalLM

    common = dict(vocab_size=shape["vocab"], hidden_size=shape["hidden_size"], num_hidden_layers=shape["layers"],
                  num_attention_heads=shape["heads"], embedding_dropout=0.0, pad_vocab_size_multiple=1)
    if kind == "h3":
        return H3ForCausalLM(H3Config(**common))
    if kind == "h3_hybrid":
        return H3ForCausalLM(H3Config(attn_layer_idx=[shape["layers"] // 2], **common))
    return GPT2LMHeadModel(GPT2Config(vocab_size=shape["vocab"], n_embd=shape["hidden_size"], n_layer=shape["layers"],
                                      n_head=shape["heads"], n_positions=max_length, resid_pdrop=0.0, embd_pdrop=0.0,
                                      attn_pdrop=0.0, attn_implementation="sdpa"))


def peak_memory_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def training_step(model, ids: torch.Tensor):
    """One bf16-autocast forward + backward + AdamW step of ``model`` on ``ids`` (1, L), as a closure."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        with torch.autocast(ids.device.type, dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def check_train(device: torch.device, shape: dict, steps: int, compile_decode: bool) -> dict:
    results = {}
    for kind in ("h3", "h3_hybrid", "gpt2"):
        for length in shape["train_lengths"]:
            ids = torch.randint(0, shape["vocab"], (1, length), device=device)
            step = training_step(build_lm(kind, shape, length).to(device), ids)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            results[f"{kind}/{length}"] = {"ms_per_step": median_ms(step, device, steps),
                                           "peak_mib": peak_memory_mib(device)}
            del step
    for length in shape["train_lengths"]:
        results[f"gpt2_over_h3/{length}"] = (results[f"gpt2/{length}"]["ms_per_step"]
                                             / results[f"h3/{length}"]["ms_per_step"])
    return results


@torch.no_grad()
def check_decode(device: torch.device, shape: dict, steps: int, compile_decode: bool) -> dict:
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from bench_generation import time_generate

    results = {}
    prompt = torch.randint(0, shape["vocab"], (1, shape["prompt"]), device=device)
    for kind in ("h3", "h3_hybrid", "gpt2"):
        model = build_lm(kind, shape, shape["prompt"] + steps + 8).to(device).eval()
        time_generate(model, prompt, 3)  # warm-up
        eager = time_generate(model, prompt, steps + 1)["seconds_per_token"]
        entry = {"eager_ms": 1e3 * eager}
        if not compile_decode:
            results[kind] = entry
            continue
        try:
            if kind == "gpt2":
                model.generation_config.cache_implementation = "static"
            model.forward = torch.compile(model.forward, mode="reduce-overhead")
            time_generate(model, prompt, steps + 1)  # compilation and graph capture
            compiled = time_generate(model, prompt, steps + 1)["seconds_per_token"]
            entry.update(compiled_ms=1e3 * compiled, eager_over_compiled=eager / compiled)
        except Exception as e:  # recorded: a model that does not compile is a result too
            entry["compiled_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        results[kind] = entry
        del model
    return results


def check_fft(device: torch.device, shape: dict, steps: int, compile_decode: bool) -> dict:
    from h3_hf.fft_conv import fft_causal_conv

    batch, channels, length = shape["fft"]
    u = torch.randn(batch, channels, length, device=device)
    kernel = torch.randn(channels, length, device=device)
    conv_ms = median_ms(lambda: fft_causal_conv(u, kernel), device, steps)
    moved = (u.numel() * 2 + kernel.numel()) * 4  # read u and the kernel, write y (float32)
    big = torch.empty(64 * 2**20, device=device)  # 256 MiB
    copy_target = torch.empty_like(big)
    copy_ms = median_ms(lambda: copy_target.copy_(big), device, steps)
    copy_bandwidth = 2 * big.numel() * 4 / (copy_ms / 1e3)  # read + write
    conv_bandwidth = moved / (conv_ms / 1e3)
    return {"shape": [batch, channels, length], "conv_ms": conv_ms, "conv_gb_per_s": conv_bandwidth / 1e9,
            "copy_gb_per_s": copy_bandwidth / 1e9, "fraction_of_copy_bandwidth": conv_bandwidth / copy_bandwidth}


CHECKS = {"train": check_train, "decode": check_decode, "fft": check_fft}


def main(argv=None):
    parser = ScriptArgumentParser(__doc__)
    parser.add_argument("--json", default="gpu_check.json", help="where the results are written")
    parser.add_argument("--items", nargs="+", choices=ITEMS, default=list(ITEMS), help="which checks to run")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto",
                        help="auto: cuda when available, else cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None,
                        help="model and problem sizes (default: 125m on cuda, tiny on cpu)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement (>= 2)")
    parser.add_argument("--item_seconds", type=int, default=150, help="time limit of each item")
    parser.add_argument("--no_compile", action="store_true", help="decode: eager only (skip torch.compile)")
    args = parser.parse_args(argv)
    if args.steps < 2 or args.item_seconds < 1:
        parser.error("--steps must be >= 2 and --item_seconds >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("argument --device: cuda asked for but torch sees no CUDA device (use --device auto or cpu)")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    shape_name = args.shape or ("125m" if device.type == "cuda" else "tiny")
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "shape": shape_name, "items": {}}
    torch.manual_seed(0)
    for item in args.items:
        start = time.perf_counter()
        try:
            with time_limit(args.item_seconds):
                result = {"status": "ok", **CHECKS[item](device, SHAPES[shape_name], args.steps,
                                                                  not args.no_compile)}
        except ItemTimeout as e:
            result = {"status": "timeout", "error": str(e)}
        except Exception as e:  # one failing item must not lose the others' results
            result = {"status": "error", "error": f"{type(e).__name__}: {e}"[:500]}
        result["seconds"] = time.perf_counter() - start
        report["items"][item] = result
        print(f"{item}: {result['status']} in {result['seconds']:.1f} s", flush=True)
        with open(args.json, "w") as f:  # written after every item: a killed run keeps what it measured
            json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
