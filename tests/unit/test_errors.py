"""Every exception class the package defines derives from RiverdeltaError (errors.py).

The classes are found by importing every module and walking its classes; the
pyspark modules (ingest, transforms) import in well under a second and start no
JVM, so none is skipped. An AST pass makes sure no exception class hides where
the walk cannot see it (inside a function).
"""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parents[2] / "include" / "riverdelta"

# The builtin base each class had before RiverdeltaError: `except ValueError` etc. must
# still catch them.
BUILTIN_BASES = {
    "riverdelta.airflow.env.AirflowError": RuntimeError,
    "riverdelta.backfill.replay.BackfillRefused": ValueError,
    "riverdelta.ops.control.CrashLoopError": RuntimeError,
    "riverdelta.ops.control.HealthBreachError": RuntimeError,
    "riverdelta.stream.job.CheckpointMismatchError": ValueError,
    "riverdelta.launch.jars.JarCacheError": RuntimeError,
    "riverdelta.embedded.kafka_broker.BrokerError": RuntimeError,
    "riverdelta.embedded.kafka_certs.CertError": RuntimeError,
    "riverdelta.kafka.client.KafkaClientError": RuntimeError,
    "riverdelta.ops.state.StaleStateError": RuntimeError,
    "riverdelta.quality.gate.ValidationFailedError": RuntimeError,
    "riverdelta.quality.gate.NeedsSparkError": RuntimeError,
    "riverdelta.quality.publications.NotValidatedError": LookupError,
    "riverdelta.config.registry.ContractError": ValueError,
    "riverdelta.config.registry.UnknownStreamError": ValueError,
    "riverdelta.config.settings.ConfigError": ValueError,
    "riverdelta.stream.kafka_sink.SinkError": RuntimeError,
    "riverdelta.embedded.spark_cluster.ClusterError": RuntimeError,
    "riverdelta.airflow.ui_app.LoginRequired": Exception,
}


def _exception_classes() -> dict[str, type[BaseException]]:
    import riverdelta

    found = {}
    for info in pkgutil.walk_packages(riverdelta.__path__, "riverdelta."):
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and issubclass(cls, BaseException):
                found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return found


def test_every_exception_class_derives_from_riverdelta_error():
    from riverdelta.errors import RiverdeltaError

    found = _exception_classes()
    assert set(BUILTIN_BASES) <= set(found), sorted(set(BUILTIN_BASES) - set(found))
    outside = sorted(
        name
        for name, cls in found.items()
        if cls is not RiverdeltaError and not issubclass(cls, RiverdeltaError)
    )
    assert not outside, f"derive these from riverdelta.errors.RiverdeltaError: {outside}"


@pytest.mark.parametrize("name", sorted(BUILTIN_BASES))
def test_the_builtin_base_is_kept(name):
    from riverdelta.errors import RiverdeltaError

    cls = _exception_classes()[name]
    builtin = BUILTIN_BASES[name]
    assert issubclass(cls, builtin) and issubclass(cls, RiverdeltaError), cls.__mro__
    with pytest.raises(builtin):  # what existing `except <builtin>` clauses rely on
        raise cls.__new__(cls)  # (without __init__: some take more than a message)


def _is_exception_base(base: ast.expr) -> bool:
    name = base.id if isinstance(base, ast.Name) else getattr(base, "attr", "")
    builtin = getattr(builtins, name, None)
    return (isinstance(builtin, type) and issubclass(builtin, BaseException)) or name.endswith(
        ("Error", "Exception", "Refused", "Required")
    )


def test_no_exception_class_is_defined_out_of_the_walks_sight():
    """Exception classes are module-level: one defined inside a function escapes the walk."""
    nested = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.ClassDef)
                and id(node) not in top
                and any(_is_exception_base(b) for b in node.bases)
            ):
                nested.append(f"{path.name}:{node.lineno} {node.name}")
    assert not nested, nested
