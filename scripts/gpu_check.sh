#!/usr/bin/env bash
# GPU checks of h3-hf in one command: a bf16 training step (H3 vs GPT-2 at 2k and 8k), generate() decode eager vs
# compiled (CUDA graphs), FFT convolution throughput vs copy bandwidth; writes one JSON file (--json).
#   bash scripts/gpu_check.sh [--json FILE] [--items train decode fft] [--steps N] [--item_seconds S]
#   bash scripts/gpu_check.sh --help     # every option (scripts/gpu_check.py)
# Each item has its own time limit (--item_seconds, default 150 s); the whole command is stopped after
# GPU_CHECK_SECONDS (default 470 s), and the JSON file keeps every item finished by then.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-$here/../.venv/bin/python}"
[ -x "$python" ] || python="$(command -v python3)"
exec timeout --kill-after=10 "${GPU_CHECK_SECONDS:-470}" "$python" "$here/gpu_check.py" "$@"
