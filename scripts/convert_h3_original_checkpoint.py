"""Convert an official H3 checkpoint (HazyResearch/H3 ``model.pt``) to a Hugging Face folder.

    python scripts/convert_h3_original_checkpoint.py --checkpoint H3-125M/model.pt --output h3-125m
    python scripts/convert_h3_original_checkpoint.py --checkpoint H3-2.7B/model-2attn-rotary.pt \
        --output h3-2.7b-rotary --num-attention-heads 20

The file is read with ``torch.load(weights_only=True)`` (no pickle code execution). The output folder
(safetensors + config.json + generation_config.json) loads with ``H3ForCausalLM.from_pretrained``.
"""

import argparse
import json

import torch
from transformers import GenerationConfig

from h3_hf.conversion import convert_checkpoint

GPT2_EOS = 50256


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="official model.pt (state dict or Lightning checkpoint)")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--num-attention-heads", type=int, default=None,
                        help="heads of the attention layers (default: the released models' value for this width)")
    parser.add_argument("--disc", choices=["bilinear", "zoh"], default="bilinear",
                        help="discretization of the diagonal SSM (the released models use bilinear)")
    parser.add_argument("--config-json", default=None, help="JSON file of extra H3Config fields to set")
    parser.add_argument("--eos-token-id", type=int, default=GPT2_EOS, help="EOS id (GPT-2 tokenizer: 50256)")
    args = parser.parse_args(argv)

    overrides = {}
    if args.config_json:
        with open(args.config_json) as f:
            overrides = json.load(f)
    overrides.setdefault("eos_token_id", args.eos_token_id)
    overrides.setdefault("bos_token_id", args.eos_token_id)
    obj = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    model, config = convert_checkpoint(obj, args.num_attention_heads, args.disc, **overrides)
    model.generation_config = GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                                               pad_token_id=config.eos_token_id)
    model.save_pretrained(args.output)
    print(f"wrote {args.output}: {config.num_hidden_layers} layers, d={config.hidden_size}, "
          f"attention at {config.attn_layer_idx}, rotary {config.rotary_emb_dim}, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters")


if __name__ == "__main__":
    main()
