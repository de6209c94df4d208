"""Batch collators that pad variable-length token examples (right padding, explicit pad id)."""

import torch


class PaddingCollator:
    """Pad ``input_ids`` (with ``pad_token_id``) and ``attention_mask`` (with 0) to the longest example.

    Other keys are stacked as tensors. Output: input_ids (batch, length) int64, attention_mask
    (batch, length) int64, labels (batch, ...) as given.
    """

    def __init__(self, pad_token_id: int = 0, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict]) -> dict:
        length = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        ids = torch.full((len(features), length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(features), length), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            ids[row, :n] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            mask[row, :n] = 1
        batch = {"input_ids": ids, "attention_mask": mask}
        for key in features[0]:
            if key not in batch:
                batch[key] = torch.as_tensor([f[key] for f in features])
        return batch
