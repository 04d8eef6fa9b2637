"""What export reads from a model directory: pooling, normalisation, window, prefixes.

worker/export/st_config.py on hand-made config files (no weights needed): a pooling the worker
cannot reproduce, or a module outside the exported graph, is refused with a message that says
what to do; the window accounts for XLM-R's position offset.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from storage.bundle import Pooling
from worker.errors import BundleError
from worker.export.st_config import read_model_config, resolve_source


def hf_dir(root: Path, *, model_type: str = "bert", positions: int = 512, pad: int = 0,
           modules: list[str] | None = None, pooling: dict | None = None,
           files: dict[str, dict] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({
        "model_type": model_type, "hidden_size": 48, "max_position_embeddings": positions,
        "pad_token_id": pad}))
    if modules is not None:
        (root / "modules.json").write_text(json.dumps([
            {"idx": i, "name": str(i), "path": "1_Pooling" if m == "Pooling" else "",
             "type": f"sentence_transformers.models.{m}"} for i, m in enumerate(modules)]))
    if pooling is not None:
        (root / "1_Pooling").mkdir()
        (root / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    for name, content in (files or {}).items():
        (root / name).write_text(json.dumps(content))
    return root


ST = ["Transformer", "Pooling", "Normalize"]


def test_no_pooling_config_is_not_guessed(tmp_path: Path) -> None:
    src = hf_dir(tmp_path / "m")
    with pytest.raises(BundleError, match="--pooling"):
        read_model_config(src, "m")
    cfg = read_model_config(src, "m", pooling="cls")
    assert cfg.pooling is Pooling.CLS and not cfg.normalize and cfg.dim == 48


@pytest.mark.parametrize(("pooling", "expected"), [
    ({"word_embedding_dimension": 48, "pooling_mode_mean_tokens": True}, Pooling.MEAN),
    ({"word_embedding_dimension": 48, "pooling_mode_cls_token": True,
      "pooling_mode_mean_tokens": False}, Pooling.CLS),
    ({"word_embedding_dimension": 48, "pooling_mode_lasttoken": True}, Pooling.LAST),
    ({"embedding_dimension": 48, "pooling_mode": "mean"}, Pooling.MEAN),  # sentence-transformers 6
    ({"embedding_dimension": 48, "pooling_mode": ["cls"]}, Pooling.CLS),
])
def test_pooling_read_from_sentence_transformers_config(
        tmp_path: Path, pooling: dict, expected: Pooling) -> None:
    cfg = read_model_config(hf_dir(tmp_path / "m", modules=ST, pooling=pooling), "m")
    assert cfg.pooling is expected and cfg.normalize


@pytest.mark.parametrize("pooling", [
    {"pooling_mode_max_tokens": True},
    {"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True},
    {"pooling_mode": "weightedmean"},
    {"pooling_mode": "mean", "include_prompt": False},
])
def test_pooling_the_worker_cannot_reproduce_is_refused(tmp_path: Path, pooling: dict) -> None:
    with pytest.raises(BundleError, match="not supported"):
        read_model_config(hf_dir(tmp_path / "m", modules=ST, pooling=pooling), "m")


def test_modules_outside_the_graph_are_refused(tmp_path: Path) -> None:
    src = hf_dir(tmp_path / "m", modules=["Transformer", "Pooling", "Dense", "Normalize"],
                 pooling={"pooling_mode": "mean"})
    with pytest.raises(BundleError, match="Dense"):
        read_model_config(src, "m")


def test_window_xlmr_offset_and_overrides(tmp_path: Path) -> None:
    xlmr = hf_dir(tmp_path / "x", model_type="xlm-roberta", positions=8194, pad=1,
                  files={"tokenizer_config.json": {"model_max_length": 1000000000000000019884}})
    assert read_model_config(xlmr, "x", pooling="cls").max_length == 8192
    assert read_model_config(xlmr, "x", pooling="cls", max_length=512).max_length == 512
    bert = hf_dir(tmp_path / "b", files={"tokenizer_config.json": {"model_max_length": 256}})
    assert read_model_config(bert, "b", pooling="mean").max_length == 256
    st = hf_dir(tmp_path / "s", files={"sentence_bert_config.json": {"max_seq_length": 128}})
    assert read_model_config(st, "s", pooling="mean").max_length == 128


def test_prefixes_come_from_prompts(tmp_path: Path) -> None:
    src = hf_dir(tmp_path / "m", files={"config_sentence_transformers.json": {
        "prompts": {"query": "query: ", "passage": "passage: "}}})
    cfg = read_model_config(src, "m", pooling="mean")
    assert (cfg.query_prefix, cfg.passage_prefix) == ("query: ", "passage: ")


def test_resolve_source_records_a_plain_name(tmp_path: Path) -> None:
    src = hf_dir(tmp_path / "my-model")
    assert resolve_source(src) == (src, "my-model")
    (src / "config.json").write_text(json.dumps({"_name_or_path": "org/name"}))
    assert resolve_source(src)[1] == "org/name"
    (src / "config.json").write_text(json.dumps({"_name_or_path": "/abs/path"}))
    assert resolve_source(src)[1] == "my-model"  # a local path is not a name


def test_resolve_source_without_config_says_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no config.json"):
        resolve_source(tmp_path)


def test_invalid_json_names_the_file(tmp_path: Path) -> None:
    src = hf_dir(tmp_path / "m")
    (src / "modules.json").write_text("[{")
    with pytest.raises(BundleError, match="modules.json: invalid JSON"):
        read_model_config(src, "m")


def test_matryoshka_read_from_the_model_card(tmp_path: Path) -> None:
    pooling = {"word_embedding_dimension": 48, "pooling_mode_mean_tokens": True}
    plain = hf_dir(tmp_path / "plain", modules=ST, pooling=pooling)
    (plain / "README.md").write_text("# a model\ntrained with MultipleNegativesRankingLoss\n")
    assert read_model_config(plain, "m").matryoshka is None
    card = hf_dir(tmp_path / "mrl", modules=ST, pooling=pooling)
    (card / "README.md").write_text('#### MatryoshkaLoss\n```json\n{\n    "loss": "MNRL",\n'
                                    '    "matryoshka_dims": [\n        48,\n        24,\n'
                                    '        12\n    ],\n    "n_dims_per_step": -1\n}\n```\n')
    assert read_model_config(card, "m").matryoshka == {"dims": [48, 24, 12], "from": "README.md"}
