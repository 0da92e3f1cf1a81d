"""JVM dependencies from Maven Central, resolved once into the project cache.

Sets, each from a pom under ``jvm/``:

- ``kafka``: the Apache Kafka broker (KRaft) and its runtime dependencies;
- ``spark``: the Kafka source and Delta connector jars, minus every artifact
  the pyspark wheel already ships (two copies of a jar on one classpath is the
  classic source of ``NoSuchMethodError``);
- ``s3``: hadoop-aws and the AWS SDK, only when the storage root is ``s3a://``.

``fetch`` runs Maven only when the cache does not verify; the manifest records
each jar's SHA-256 so a truncated or corrupt jar is detected and re-fetched.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from riverdelta.config.settings import PROJECT_ROOT, settings
from riverdelta.errors import RiverdeltaError

SETS = ("kafka", "spark", "s3", "s3proxy")


def needed_sets() -> tuple[str, ...]:
    """The sets this configuration uses (the large s3 set only for an s3a:// root)."""
    from riverdelta.storage import roots as storage

    return ("kafka", "spark", *storage.jar_sets(settings().lake))


# A version has at least one dot and no underscore: "spark-sql-kafka-0-10_2.13-4.1.1".
_VERSIONED = re.compile(r"^(?P<artifact>.+?)-(?P<version>\d+(?:\.\d+)+(?:-[0-9A-Za-z.]+)?)\.jar$")


class JarCacheError(RiverdeltaError, RuntimeError):
    pass


def set_dir(name: str) -> Path:
    return settings().jar_dir / name


def manifest_path(name: str) -> Path:
    return set_dir(name) / "MANIFEST.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _pom_hash(name: str) -> str:
    data = (PROJECT_ROOT / "jvm" / name / "pom.xml").read_bytes()
    return hashlib.sha256(data).hexdigest()[:16]


def artifact_name(jar: str) -> str:
    m = _VERSIONED.match(jar)
    return m.group("artifact") if m else jar.removesuffix(".jar")


def pyspark_jar_artifacts() -> set[str]:
    import importlib.util

    spec = importlib.util.find_spec("pyspark")
    if spec is None or spec.origin is None:
        raise JarCacheError("pyspark is not installed: run `make setup`")
    jars = Path(spec.origin).parent / "jars"
    return {artifact_name(p.name) for p in jars.glob("*.jar")}


def verify(name: str) -> list[Path]:
    """Return the jars of a set, or raise saying what is wrong and how to fix it."""
    mpath = manifest_path(name)
    if not mpath.exists():
        raise JarCacheError(f"no cached {name} jars at {set_dir(name)}: run `make setup`")
    manifest = json.loads(mpath.read_text())
    if manifest.get("pom") != _pom_hash(name):
        raise JarCacheError(
            f"jvm/{name}/pom.xml changed since the cache was made: run `make setup`"
        )
    jars = []
    for jar, digest in manifest["jars"].items():
        path = set_dir(name) / jar
        if not path.exists():
            raise JarCacheError(f"cached jar {path} is missing: run `make setup` to fetch it again")
        if _sha256(path) != digest:
            raise JarCacheError(
                f"cached jar {path} is corrupt (SHA-256 differs from the manifest): "
                "run `make setup` to fetch it again"
            )
        jars.append(path)
    return jars


def jars(name: str) -> list[Path]:
    """The jars of a set, trusting the manifest for speed (no hashing)."""
    mpath = manifest_path(name)
    if not mpath.exists():
        raise JarCacheError(f"no cached {name} jars at {set_dir(name)}: run `make setup`")
    paths = [set_dir(name) / j for j in json.loads(mpath.read_text())["jars"]]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise JarCacheError(f"cached jars missing: {', '.join(missing)}: run `make setup`")
    return paths


def _mvn_copy(name: str, out: Path) -> None:
    s = settings()
    cmd = [
        "mvn",
        "-q",
        "-B",
        "-s",
        str(PROJECT_ROOT / "jvm" / "settings.xml"),
        "-f",
        str(PROJECT_ROOT / "jvm" / name / "pom.xml"),
        f"-Dmaven.repo.local={s.cache / 'm2'}",
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={out}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise JarCacheError(
            f"Maven could not resolve the {name} jars from Maven Central "
            f"(is the network to repo.maven.apache.org up?):\n{tail}"
        )


def fetch(name: str, *, force: bool = False) -> list[Path]:
    if not force:
        try:
            return verify(name)
        except JarCacheError as exc:
            print(f"jars: {name}: {exc.args[0].split(':')[0]}; resolving from Maven Central")
    target = set_dir(name)
    with tempfile.TemporaryDirectory(prefix=f"riverdelta-{name}-") as tmp:
        out = Path(tmp)
        _mvn_copy(name, out)
        skip = pyspark_jar_artifacts() if name in ("spark", "s3") else set()
        keep = sorted(p for p in out.glob("*.jar") if artifact_name(p.name) not in skip)
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for p in keep:
            shutil.copy2(p, target / p.name)
    manifest = {
        "pom": _pom_hash(name),
        "jars": {p.name: _sha256(target / p.name) for p in keep},
    }
    manifest_path(name).write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"jars: {name}: {len(keep)} jars cached in {target}")
    return verify(name)


def fetch_all(force: bool = False) -> None:
    for name in needed_sets():
        found = fetch(name, force=force)
        print(f"jars: {name}: {len(found)} jars verified")
