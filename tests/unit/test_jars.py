from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("jar", "artifact"),
    [
        ("kafka-clients-3.9.1.jar", "kafka-clients"),
        ("delta-spark_4.1_2.13-4.3.1.jar", "delta-spark_4.1_2.13"),
        ("spark-sql-kafka-0-10_2.13-4.1.1.jar", "spark-sql-kafka-0-10_2.13"),
        ("zstd-jni-1.5.7-3.jar", "zstd-jni"),
    ],
)
def test_artifact_name(jar, artifact):
    from riverdelta.launch.jars import artifact_name

    assert artifact_name(jar) == artifact


def test_corrupt_jar_is_detected(tmp_path, monkeypatch):
    import json

    from riverdelta.launch import jars

    monkeypatch.setattr(jars, "set_dir", lambda name: tmp_path)
    monkeypatch.setattr(jars, "_pom_hash", lambda name: "p")
    (tmp_path / "a-1.0.jar").write_bytes(b"good")
    (tmp_path / "MANIFEST.json").write_text(
        json.dumps({"pom": "p", "jars": {"a-1.0.jar": jars._sha256(tmp_path / "a-1.0.jar")}})
    )
    assert jars.verify("x") == [tmp_path / "a-1.0.jar"]
    (tmp_path / "a-1.0.jar").write_bytes(b"truncated")
    with pytest.raises(jars.JarCacheError, match="corrupt"):
        jars.verify("x")
    (tmp_path / "a-1.0.jar").unlink()
    with pytest.raises(jars.JarCacheError, match="missing"):
        jars.verify("x")
