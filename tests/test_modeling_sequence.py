"""modeling_sequence: the backbone and classifier shared by S4D and S5.

Padding masks, pooling, real-valued inputs and the loss of each problem type.
"""

import pytest
import torch
from tiny_models import s4d_config

from h3_hf import S4DForSequenceClassification


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_padding_never_changes_the_result(bidirectional, pooling):
    torch.manual_seed(0)
    model = S4DForSequenceClassification(s4d_config(vocab_size=11, bidirectional=bidirectional,
                                                     pooling=pooling)).eval()
    seqs = [torch.randint(1, 11, (n,)) for n in (7, 12, 4)]
    alone = torch.cat([model(input_ids=s[None]).logits for s in seqs])
    for side in ("right", "left"):
        ids = torch.zeros(3, 12, dtype=torch.long)
        mask = torch.zeros(3, 12, dtype=torch.long)
        for i, s in enumerate(seqs):
            sl = slice(0, len(s)) if side == "right" else slice(12 - len(s), 12)
            ids[i, sl] = s
            mask[i, sl] = 1
        batched = model(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(batched, alone, rtol=0, atol=1e-5)


def test_real_valued_inputs_and_losses():
    torch.manual_seed(0)
    x = torch.randn(4, 10, 2)
    model = S4DForSequenceClassification(s4d_config(input_size=2))
    out = model(inputs_embeds=x, labels=torch.tensor([0, 1, 2, 1]))
    assert out.logits.shape == (4, 3)
    ref = torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1, 2, 1]))
    torch.testing.assert_close(out.loss, ref)
    # input_values is an alias of inputs_embeds
    torch.testing.assert_close(model(input_values=x).logits, out.logits)
    reg = S4DForSequenceClassification(s4d_config(input_size=2, num_labels=1))
    y = torch.randn(4)
    out = reg(inputs_embeds=x, labels=y)
    torch.testing.assert_close(out.loss, torch.nn.functional.mse_loss(out.logits.squeeze(), y))
    multi = S4DForSequenceClassification(s4d_config(input_size=2, problem_type="multi_label_classification"))
    target = torch.randint(0, 2, (4, 3)).float()
    out = multi(inputs_embeds=x, labels=target)
    torch.testing.assert_close(out.loss, torch.nn.functional.binary_cross_entropy_with_logits(out.logits, target))
