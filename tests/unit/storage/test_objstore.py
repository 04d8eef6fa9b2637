"""storage.objstore against a real S3-protocol server (moto server mode)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage import objstore
from storage.errors import UsageError
from storage.objstore import check_location


def test_local_paths_and_file_uris_resolve_to_the_local_filesystem(tmp_path):
    fs, path = objstore.resolve(tmp_path / "x")
    assert fs.type_name == "local" and path == str(tmp_path / "x")
    fs2, path2 = objstore.resolve(f"file://{tmp_path}/y")
    assert fs2.type_name == "local" and path2 == f"{tmp_path}/y"


def test_unsupported_scheme_and_missing_bucket_name_the_uri():
    with pytest.raises(UsageError, match="ftp://h/x: unsupported scheme"):
        objstore.check_location("ftp://h/x", "corpus")
    with pytest.raises(UsageError, match="no bucket"):
        objstore.check_location("s3:///key", "corpus")


def test_redact_drops_credentials_and_signatures():
    assert objstore.redact("s3://id:secret@bkt/a?X-Amz-Signature=s") == "s3://bkt/a"
    assert "secret" not in objstore.redact("https://u:secret@host:9000/b/k")


@pytest.mark.integration
def test_s3_uri_round_trips_a_parquet_file(s3_server):
    base = s3_server.bucket("jobs-bucket")
    fs, path = objstore.resolve(objstore.join(base, "j1", "x.parquet"))
    assert fs.type_name == "s3" and path == "jobs-bucket/j1/x.parquet"
    pq.write_table(pa.table({"a": [1, 2, 3]}), path, filesystem=fs)
    assert pq.read_table(path, filesystem=fs).column("a").to_pylist() == [1, 2, 3]


def test_credentials_in_a_uri_are_refused_without_printing_them():
    with pytest.raises(UsageError, match="credentials in a URI are not accepted") as err:
        check_location("s3://key-id:very-secret@bucket/c.jsonl", "corpus")
    assert "very-secret" not in str(err.value) and "s3://bucket/c.jsonl" in str(err.value)
