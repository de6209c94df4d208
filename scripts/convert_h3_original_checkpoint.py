"""Convert an official H3 checkpoint (HazyResearch/H3 model.pt) to a Hugging Face folder.

Example:
    python scripts/convert_h3_original_checkpoint.py --checkpoint H3-125M/model.pt --output h3-125m
    python scripts/convert_h3_original_checkpoint.py --checkpoint H3-2.7B/model-2attn-rotary.pt \\
        --output h3-2.7b-rotary --num-attention-heads 20

The file is read with torch.load(weights_only=True): a pickle that would run code when loaded is refused. A file
that is not an H3 checkpoint ends with one line saying what was wrong, and nothing is written. The output folder
(safetensors + config.json + generation_config.json) loads with H3ForCausalLM.from_pretrained.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from script_utils import ScriptArgumentParser  # noqa: E402
from transformers import GenerationConfig  # noqa: E402

from h3_hf.conversion import convert_checkpoint, load_official_checkpoint  # noqa: E402

GPT2_EOS = 50256


def parse_args(argv: list[str] | None):
    parser = ScriptArgumentParser(__doc__)
    parser.add_argument("--checkpoint", required=True, help="official model.pt (state dict or Lightning checkpoint)")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--num-attention-heads", type=int, default=None,
                        help="heads of the attention layers (default: the released models' value for this width)")
    parser.add_argument("--disc", choices=["bilinear", "zoh"], default="bilinear",
                        help="discretization of the diagonal SSM (the released models use bilinear)")
    parser.add_argument("--config-json", default=None, help="JSON file of extra H3Config fields to set")
    parser.add_argument("--eos-token-id", type=int, default=GPT2_EOS, help="EOS id (GPT-2 tokenizer: 50256)")
    return parser, parser.parse_args(argv)


def read_overrides(parser, path: str | None) -> dict:
    """The H3Config fields of ``--config-json`` (a JSON object); {} without it."""
    if path is None:
        return {}
    try:
        with open(path) as f:
            overrides = json.load(f)
    except (OSError, ValueError) as err:
        parser.error(f"{path}: cannot read it as JSON ({err}); expected a JSON object of H3Config fields")
    if not isinstance(overrides, dict):
        parser.error(f"{path}: holds a JSON {type(overrides).__name__}; expected a JSON object of H3Config fields")
    return overrides


def main(argv=None):
    parser, args = parse_args(argv)
    overrides = read_overrides(parser, args.config_json)
    overrides.setdefault("eos_token_id", args.eos_token_id)
    overrides.setdefault("bos_token_id", args.eos_token_id)
    try:
        obj = load_official_checkpoint(args.checkpoint)
        model, config = convert_checkpoint(obj, args.num_attention_heads, args.disc, **overrides)
    except ValueError as err:
        parser.error(f"{args.checkpoint}: {err}")
    model.generation_config = GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                                               pad_token_id=config.eos_token_id)
    model.save_pretrained(args.output)
    print(f"wrote {args.output}: {config.num_hidden_layers} layers, d={config.hidden_size}, "
          f"attention at {config.attn_layer_idx}, rotary {config.rotary_emb_dim}, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters")


if __name__ == "__main__":
    main()
