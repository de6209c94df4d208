"""push_to_hub of models, tokenizers, datasets and training runs, with the Hub client replaced by a recorder.

Nothing here reaches the network: the objects that transformers (``transformers.utils.hub.hf_api``,
``transformers.trainer.hf_api``) and datasets (``HfApi``, ``HfFileSystem``) talk to are swapped for
``FakeHub``, which keeps the bytes of every file a commit would upload.
"""

import fnmatch
import io
import json
import os
import re
import sys
from concurrent.futures import Future
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import fsspec
import pytest
import torch
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, ModelCard
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError
from tiny_models import build, h3_hybrid_config, s4d_config, s5_config
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from h3_hf import (
    H3Config,
    H3ForCausalLM,
    S4DConfig,
    S4DForSequenceClassification,
    S5Config,
    S5ForSequenceClassification,
)
from h3_hf.data import load_synthetic, synthetic_tokenizer
from h3_hf.model_card import build_model_card

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import train_synthetic  # noqa: E402


class FakeHub:
    """Records repos and the files of each commit (path in repo -> bytes) instead of calling the Hub."""

    def __init__(self):
        self.repos, self.commits, self._preuploaded = [], [], {}

    def create_repo(self, repo_id, **kwargs):
        self.repos.append((repo_id, kwargs.get("repo_type")))
        return SimpleNamespace(repo_id=repo_id, url=f"https://hub.invalid/{repo_id}")

    def repo_info(self, repo_id, **kwargs):
        if repo_id not in [name for name, _ in self.repos]:
            raise RepositoryNotFoundError(f"{repo_id} does not exist yet", response=mock.Mock(status_code=404))
        return SimpleNamespace(id=repo_id, sha="0" * 40)

    def create_branch(self, *args, **kwargs):
        pass

    @staticmethod
    def _read(source) -> bytes:
        if isinstance(source, bytes):
            return source
        if isinstance(source, (str, os.PathLike)):
            return Path(source).read_bytes()
        source.seek(0)
        return source.read()

    def preupload_lfs_files(self, repo_id, additions, **kwargs):
        for op in additions:  # datasets deletes its temporary parquet files right after this call
            self._preuploaded[op.path_in_repo] = self._read(op.path_or_fileobj)

    def create_commit(self, repo_id, operations, **kwargs):
        files, deleted = {}, []
        for op in operations:
            if isinstance(op, CommitOperationAdd):
                files[op.path_in_repo] = self._preuploaded.pop(op.path_in_repo, None) or self._read(op.path_or_fileobj)
            elif isinstance(op, CommitOperationDelete):
                deleted.append(op.path_in_repo)
        self.commits.append(dict(repo_id=repo_id, files=files, deleted=deleted, **kwargs))
        return SimpleNamespace(commit_url=f"https://hub.invalid/{repo_id}/commit/1", oid="1" * 40,
                               pr_url=None, repo_url=SimpleNamespace(repo_id=repo_id))

    def upload_folder(self, repo_id, folder_path, ignore_patterns=(), run_as_future=False, **kwargs):
        files = {}
        for path in Path(folder_path).rglob("*"):
            rel = path.relative_to(folder_path).as_posix()
            if path.is_file() and not any(fnmatch.fnmatch(rel.split("/")[0], p) for p in ignore_patterns):
                files[rel] = path.read_bytes()
        self.commits.append(dict(repo_id=repo_id, files=files, deleted=[], **kwargs))
        url = f"https://hub.invalid/{repo_id}"
        if not run_as_future:
            return url
        done = Future()  # the Trainer's mid-training pushes run in the background
        done.set_result(url)
        return done


@pytest.fixture
def hub():
    fake = FakeHub()

    def no_card_on_hub(*args, **kwargs):
        raise EntryNotFoundError("no README.md in this new repo")

    with mock.patch("transformers.utils.hub.hf_api", return_value=fake), \
            mock.patch("transformers.modeling_utils.hf_api", return_value=fake), \
            mock.patch("transformers.trainer.hf_api", return_value=fake), \
            mock.patch("transformers.utils.hub.ModelCard.load", side_effect=no_card_on_hub), \
            mock.patch("datasets.dataset_dict.HfApi", return_value=fake), \
            mock.patch("datasets.arrow_dataset.HfApi", return_value=fake), \
            mock.patch("datasets.dataset_dict.HfFileSystem", side_effect=lambda **kw: fsspec.filesystem("memory")):
        yield fake


def small_model(kind: str):
    """A tiny model of each family; H3 with the default vocabulary padding and dropout that a new user gets."""
    if kind == "h3":
        return build(H3ForCausalLM, h3_hybrid_config(vocab_size=12, state_size=4, embedding_dropout=0.1,
                                                     pad_vocab_size_multiple=8))
    common = dict(vocab_size=12, hidden_size=8, num_hidden_layers=1, state_size=4, num_labels=2, dropout=0.1)
    if kind == "s4d":
        return build(S4DForSequenceClassification, s4d_config(**common))
    return build(S5ForSequenceClassification, s5_config(**common))


def unpack(files: dict[str, bytes], folder: Path) -> Path:
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    return folder


@pytest.mark.parametrize("kind", ["h3", "s4d", "s5"])
def test_model_push_uploads_a_self_contained_checkpoint(kind, hub, tmp_path):
    model = small_model(kind)
    model.push_to_hub(f"someone/{kind}-tiny")

    assert hub.repos == [(f"someone/{kind}-tiny", None)]
    (commit,) = hub.commits
    code = {f"modeling_{kind}.py", f"configuration_{kind}.py", "hub_utils.py", "validation.py", "precision.py",
            "ssm_init.py", "ssm_kernels.py"}
    code |= {"modeling_sequence.py"} if kind != "h3" else {"token_products.py"}
    code |= {"ssm_scan.py", "s5_ssm.py"} if kind == "s5" else {"fft_conv.py", "diagonal_ssm.py"}
    expected = {"README.md", "config.json", "model.safetensors", *code}
    expected |= {"generation_config.json"} if kind == "h3" else set()
    assert set(commit["files"]) == expected
    card = ModelCard(commit["files"]["README.md"].decode())
    assert card.data.library_name == "transformers"
    config = json.loads(commit["files"]["config.json"])
    assert config["model_type"] == kind and set(config["auto_map"]) >= {"AutoConfig", "AutoModel"}

    head_class = AutoModelForCausalLM if kind == "h3" else AutoModelForSequenceClassification
    reloaded = head_class.from_pretrained(unpack(commit["files"], tmp_path))
    for name, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], value), name


def test_tokenizer_push_uploads_tokenizer_files(hub, tmp_path):
    tokenizer = synthetic_tokenizer(10)
    tokenizer.push_to_hub("someone/ar-tokenizer")
    (commit,) = hub.commits
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(commit["files"])
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(unpack(commit["files"], tmp_path))
    assert reloaded("0 5 => 0")["input_ids"] == tokenizer("0 5 => 0")["input_ids"]


def test_dataset_push_uploads_every_split_as_parquet_and_a_card(hub):
    data = load_synthetic("associative_recall", num_train=64, num_validation=16, num_test=16, seed=3)
    data.push_to_hub("someone/associative-recall")

    assert hub.repos == [("someone/associative-recall", "dataset")]
    (commit,) = hub.commits
    parquet = sorted(f for f in commit["files"] if f.endswith(".parquet"))
    assert [re.sub(r"-\d+-of-\d+", "", f) for f in parquet] == [
        "data/test.parquet", "data/train.parquet", "data/validation.parquet"]
    import pyarrow.parquet as pq

    for split in ("train", "validation", "test"):
        (name,) = [f for f in parquet if f.startswith(f"data/{split}-")]
        table = pq.read_table(io.BytesIO(commit["files"][name]))
        assert table.column("input_ids").to_pylist() == data[split]["input_ids"]
        assert table.column("labels").to_pylist() == data[split]["labels"]
    card = commit["files"]["README.md"].decode()
    assert "configs:" in card and "train" in card


def test_training_script_push_uploads_the_h3hf_model_card(hub, tmp_path):
    out = tmp_path / "run"
    results = train_synthetic.main([
        "--task", "associative_recall", "--model", "h3", "--output_dir", str(out), "--num_train", "64",
        "--num_validation", "32", "--num_test", "32", "--max_steps", "3", "--eval_steps", "3",
        "--per_device_train_batch_size", "16", "--push_to_hub", "--hub_model_id", "someone/ar-h3",
        "--log_level", "error"])

    (commit,) = hub.commits  # one upload, after the results exist
    assert commit["repo_id"] == "someone/ar-h3"
    files = set(commit["files"])
    assert {"README.md", "config.json", "model.safetensors", "modeling_h3.py", "configuration_h3.py", "fft_conv.py",
            "hub_utils.py", "tokenizer.json", "results.json", "training_curve.png"} <= files
    card = ModelCard(commit["files"]["README.md"].decode())
    assert card.content == (out / "README.md").read_text()  # the card the script wrote is the one uploaded
    assert card.data.pipeline_tag == "text-generation" and card.data.datasets == ["associative_recall"]
    (evaluation,) = card.data.eval_results
    assert evaluation.metric_type == "accuracy"
    assert evaluation.metric_value == pytest.approx(results["eval_accuracy"], abs=1e-4)
    assert "## Evaluation results" in card.text and "## Citation" in card.text
    generation = json.loads(commit["files"]["generation_config.json"])  # the pipeline's default call answers
    assert generation["max_new_tokens"] == 1 and generation["do_sample"] is False


@pytest.mark.parametrize("kind", ["h3", "s4d", "s5"])
def test_model_card_metadata_and_usage_code(kind, tmp_path):
    """The card's YAML parses into the Hub's metadata classes and its "How to use" code (with the package, and with
    trust_remote_code) runs as written."""
    model = small_model(kind)
    model.save_pretrained(tmp_path)
    synthetic_tokenizer(10).save_pretrained(tmp_path)
    results = {"eval_accuracy": 0.875, "dataset" if kind != "h3" else "task": "toy", "seed": 0}
    card = build_model_card(model.config, results, model_id=str(tmp_path))
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    metadata = loaded.data.to_dict()
    assert metadata["library_name"] == "transformers" and metadata["license"] == "apache-2.0"
    assert metadata["pipeline_tag"] == ("text-generation" if kind == "h3" else "text-classification")
    assert {kind, "custom_code"} <= set(metadata["tags"]) and metadata["metrics"] == ["accuracy"]
    assert loaded.data.eval_results[0].metric_value == 0.875
    for section in ("## How to use", "## Training data", "## Evaluation results", "## Limitations", "## Citation"):
        assert section in loaded.text
    installed, remote = re.findall(r"```python\n(.*?)```", loaded.text, flags=re.S)
    assert "import h3_hf" in installed and "trust_remote_code" not in installed
    assert "import h3_hf" not in remote and remote.count("trust_remote_code=True") == 2  # model and tokenizer
    for usage in (installed, remote):
        exec(compile(usage, "model-card-usage", "exec"), {})


def classifier_results(dataset: str, **data_args) -> dict:
    """A results.json as scripts/train_classifier.py writes it: ``data_args`` holds the flags of every dataset."""
    import train_classifier

    return {"model": "s4d", "dataset": dataset, "eval_accuracy": 0.9, "train_size": 100, "test_size": 20,
            "data_args": asdict(train_classifier.DataArguments(dataset=dataset, **data_args)),
            "model_args": asdict(train_classifier.ModelArguments()),
            "training_args": {"learning_rate": 0.01, "num_train_epochs": 30}}


def test_card_of_a_real_valued_classifier_has_no_text_pipeline_and_only_its_dataset_settings(tmp_path):
    """A digits run (pixels: input_size set, no vocabulary) gets pipeline_tag "other", not text-classification,
    and lists none of the ListOps or irregular-sampling flags the script also records."""
    out = tmp_path / "digits"
    import train_classifier

    results = train_classifier.main(["--model", "s4d", "--dataset", "digits", "--output_dir", str(out),
                                     "--max_steps", "2", "--hidden_size", "8", "--state_size", "8",
                                     "--num_hidden_layers", "1", "--log_level", "error", "--disable_tqdm", "true"])
    card = ModelCard.load(out / "README.md")
    assert card.data.pipeline_tag == "other" and card.data.eval_results[0].task_type == "other"
    assert "text-classification" not in card.content and "pipeline(" not in card.text
    for unrelated in ("listops", "drop_fraction", "use_timesteps", "timesteps=", "vocab_size", "AutoTokenizer"):
        assert unrelated not in card.text, unrelated
    assert "| input_size | 1 |" in card.text and "8×8 digits" in card.text
    assert f"train_examples={results['train_size']}" in card.text
    (installed, _) = re.findall(r"```python\n(.*?)```", card.text, flags=re.S)
    exec(compile(installed.replace('"your-username/s4d-digits"', repr(str(out))), "card-usage", "exec"), {})


def test_card_settings_follow_the_dataset_of_the_run():
    results = classifier_results("listops")
    listops = build_model_card(S4DConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1, state_size=4,
                                         num_labels=10), results, has_tokenizer=True)
    assert listops.data.pipeline_tag == "text-classification"
    assert f"listops_max_length={results['data_args']['listops_max_length']}" in listops.text
    assert "drop_fraction" not in listops.text and "timesteps" not in listops.text
    irregular = build_model_card(S5Config(input_size=1, hidden_size=8, num_hidden_layers=1, state_size=4, blocks=2,
                                          num_labels=10), classifier_results("digits_irregular", drop_fraction=0.3),
                                 has_tokenizer=False)
    assert irregular.data.pipeline_tag == "other"
    assert "drop_fraction=0.3" in irregular.text and "use_timesteps=True" in irregular.text
    assert "timesteps=gaps" in irregular.text and "listops" not in irregular.text
    pure = build_model_card(H3Config(vocab_size=12, hidden_size=16, num_hidden_layers=2, state_size=4),
                            {"task": "associative_recall", "task_params": {"vocab_size": 10, "seq_len": 20}})
    assert "num_attention_heads" not in pure.text and "attn_layer_idx" not in pure.text
    assert "vocab_size=10, seq_len=20" in pure.text
    hybrid = build_model_card(H3Config(vocab_size=12, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                       state_size=4, attn_layer_idx=[1]))
    assert "| attn_layer_idx | [1] |" in hybrid.text and "| num_attention_heads | 2 |" in hybrid.text


def test_model_card_rejects_unknown_model_type():
    with pytest.raises(ValueError, match="model_type"):
        build_model_card(SimpleNamespace(model_type="gpt2"))


def test_save_pretrained_with_push_uploads_the_code_too(hub, tmp_path):
    model = small_model("s5")
    model.save_pretrained(tmp_path / "s5", push_to_hub=True, repo_id="someone/s5-tiny")
    (commit,) = hub.commits
    assert {"modeling_s5.py", "configuration_s5.py", "modeling_sequence.py", "ssm_scan.py", "hub_utils.py",
            "config.json", "model.safetensors"} <= set(commit["files"])


def test_every_mid_training_push_is_a_loadable_checkpoint(hub, tmp_path):
    """With checkpoints every 2 steps and the Trainer's default hub_strategy, each upload carries the code."""
    out = tmp_path / "run"
    train_synthetic.main([
        "--task", "associative_recall", "--model", "h3", "--output_dir", str(out), "--num_train", "64",
        "--num_validation", "16", "--num_test", "16", "--max_steps", "4", "--eval_steps", "4",
        "--per_device_train_batch_size", "16", "--save_strategy", "steps", "--save_steps", "2",
        "--push_to_hub", "--hub_model_id", "someone/ar-h3", "--log_level", "error"])
    assert len(hub.commits) >= 3  # two checkpoints, then the final push
    for commit in hub.commits:
        files = set(commit["files"])
        assert not any(f.startswith("checkpoint-") for f in files)
        assert {"config.json", "model.safetensors", "modeling_h3.py", "configuration_h3.py", "fft_conv.py"} <= files
    final = ModelCard(hub.commits[-1]["files"]["README.md"].decode())
    assert final.data.eval_results[0].metric_type == "accuracy"
