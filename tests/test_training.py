"""training: the optimizer parameter groups of the SSM models.

SSM parameters get no weight decay and their own learning rate.
"""

from tiny_models import s4d_config, s5_config

from h3_hf import S4DForSequenceClassification, S5ForSequenceClassification, ssm_parameter_groups


def test_s4d_ssm_parameters_get_their_own_optimizer_group():
    model = S4DForSequenceClassification(s4d_config(input_size=1))
    groups = {g["name"]: g for g in ssm_parameter_groups(model, lr=1e-2, weight_decay=0.05, ssm_lr=1e-3)}
    names = {id(p): n for n, p in model.named_parameters()}
    ssm = sorted(names[id(p)] for p in groups["ssm"]["params"])
    expected = sorted(f"s4d.layers.{i}.layer.kernel.{p}" for i in range(2)
                      for p in ("log_dt", "inv_A_real", "A_imag", "B"))
    assert ssm == expected
    assert groups["ssm"]["lr"] == 1e-3 and groups["ssm"]["weight_decay"] == 0.0
    no_decay = {names[id(p)] for p in groups["no_decay"]["params"]}
    assert all(n.endswith("bias") or ".norm" in n for n in no_decay)
    assert "score.weight" in {names[id(p)] for p in groups["decay"]["params"]}
    total = sum(len(g["params"]) for g in groups.values())
    assert total == len(list(model.parameters()))


def test_s5_ssm_parameters_get_their_own_optimizer_group():
    model = S5ForSequenceClassification(s5_config(hidden_size=8, num_hidden_layers=4, num_labels=2, dropout=0.1))
    groups = {g["name"]: g for g in ssm_parameter_groups(model, lr=4e-3, weight_decay=0.05, ssm_lr=1e-3)}
    ssm_ids = {id(p) for p in groups["ssm"]["params"]}
    for block in model.s5.layers:
        for name in ("Lambda_re", "Lambda_im", "B", "log_step"):
            assert id(getattr(block.layer.ssm, name)) in ssm_ids
        assert id(block.layer.ssm.C) not in ssm_ids
    assert groups["ssm"]["lr"] == 1e-3 and groups["ssm"]["weight_decay"] == 0.0
