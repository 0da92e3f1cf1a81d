"""Expectation suites that follow the contract: derived from the registry, refined by a file.

Every table's baseline suite comes from the stream's registry entry: the lineage
columns a layer always has, non-null for each ``nullable: false`` field, the
contract's allowed sets and minimums, a unique id in silver, one row per Kafka
offset in bronze and its reconciliation with the ingest's own counts, the
quarantine's reason codes, and gold's keys, bounds and equality with a
recomputation from silver. Adding a stream therefore needs no suite file.

``expectations/<table>.json`` (optional, reviewed like code) refines it:

- an expectation with the same type and column(s) as a derived one replaces it;
- any other expectation is added;
- ``"drop": [{"type": ..., "column": ...}]`` removes derived ones;
- ``riverdelta_checks`` are added to the derived checks;
- ``meta`` is merged over the derived suite's.

Each expectation says where it came from, in ``meta.source`` (``contract`` or
``file``) and in its ``notes``, which Data Docs show next to it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from riverdelta.config.registry import REASONS, StreamSpec, load_registry
from riverdelta.config.settings import PROJECT_ROOT

SUITES_DIR = PROJECT_ROOT / "expectations"

BRONZE_LINEAGE = ("topic", "partition", "offset", "kafka_timestamp", "batch_id", "ingested_at")
QUARANTINE_LINEAGE = ("topic", "partition", "offset", "reason", "batch_id")
SILVER_LINEAGE = ("topic", "partition", "offset", "_app_id", "_batch_id")
EARLIEST_EVENT = "2000-01-01T00:00:00Z"


def _exp(kind: str, why: str, **kwargs: Any) -> dict[str, Any]:
    return {"type": kind, "kwargs": kwargs, "meta": {"why": why}}


def _not_null(columns: tuple[str, ...] | list[str], why: str) -> list[dict[str, Any]]:
    return [_exp("expect_column_values_to_not_be_null", why, column=c) for c in columns]


def _own_topics(spec: StreamSpec, layer: str) -> dict[str, Any]:
    why = f"A stream's {layer} holds its own topics only."
    if spec.topic_pattern is not None:
        # GX matches with Python's re.search: anchored here to mean what Spark's whole match does.
        return _exp(
            "expect_column_values_to_match_regex",
            why,
            column="topic",
            regex=f"^(?:{spec.topic_pattern})$",
        )
    return _exp(
        "expect_column_values_to_be_in_set", why, column="topic", value_set=list(spec.topics)
    )


def _bronze(spec: StreamSpec) -> dict[str, Any]:
    return {
        "notes": f"Raw Kafka records of {spec.source}, one row per offset.",
        "expectations": [
            *_not_null(
                BRONZE_LINEAGE, "Every record comes from a Kafka position and an ingest batch."
            ),
            _exp(
                "expect_compound_columns_to_be_unique",
                "One row per Kafka offset: a duplicate means an ingest batch was written twice.",
                column_list=["topic", "partition", "offset"],
            ),
            _own_topics(spec, "bronze"),
            _exp(
                "expect_column_values_to_be_between",
                "Kafka partitions are numbered from 0.",
                column="partition",
                min_value=0,
            ),
            _exp(
                "expect_column_values_to_be_between",
                "Kafka offsets are never negative.",
                column="offset",
                min_value=0,
            ),
        ],
        "riverdelta_checks": [{"check": "reconcile_bronze"}],
    }


def _quarantine(spec: StreamSpec) -> dict[str, Any]:
    return {
        "notes": "Records that broke the contract, with the reason code the ingest assigned.",
        "expectations": [
            *_not_null(
                QUARANTINE_LINEAGE,
                "A quarantined record must say where it came from and why it was rejected.",
            ),
            _exp(
                "expect_column_values_to_be_in_set",
                "Reason codes are the ingest's fixed list (registry.REASONS).",
                column="reason",
                value_set=list(REASONS),
            ),
            _own_topics(spec, "quarantine"),
        ],
    }


def _silver(spec: StreamSpec) -> dict[str, Any]:
    exps = _not_null(
        [f.name for f in spec.fields if not f.nullable], "Contract fields declared nullable: false."
    )
    exps += _not_null(
        SILVER_LINEAGE,
        "Lineage columns: every silver row traces back to a Kafka offset and an ingest batch.",
    )
    exps.append(
        _exp(
            "expect_column_values_to_be_unique",
            "Silver keeps one row per event id (de-duplicated within the watermark; a full "
            "validation checks the whole table).",
            column=spec.id_column,
        )
    )
    for f in spec.fields:
        if f.allowed is not None:
            exps.append(
                _exp(
                    "expect_column_values_to_be_in_set",
                    f"Contract: the registry's allowed list for {f.name}.",
                    column=f.name,
                    value_set=list(f.allowed),
                )
            )
        if f.min is not None:
            exps.append(
                _exp(
                    "expect_column_values_to_be_between",
                    f"Contract: {f.name} >= {f.min}.",
                    column=f.name,
                    min_value=_number(f.min),
                )
            )
    exps.append(
        _exp(
            "expect_column_values_to_be_between",
            f"Event time after 2000 and at most {spec.max_future} ahead of validation time "
            "(the ingest quarantines anything further ahead as future_timestamp).",
            column=spec.event_time_column,
            min_value={"$timestamp": EARLIEST_EVENT},
            max_value={"$now_plus": spec.max_future},
        )
    )
    return {"notes": f"Contract-valid, de-duplicated {spec.name} events.", "expectations": exps}


def _gold(spec: StreamSpec, layer: str) -> dict[str, Any]:
    gold = next(g for g in spec.gold if f"gold_{g.name}" == layer)
    columns = ["window_start", "window_end", *gold.group_by, *(a.name for a in gold.aggregates)]
    exps = _not_null(
        [*columns, "updated_at"], "Every gold row is a window, its group and its aggregates."
    )
    exps.append(
        _exp(
            "expect_compound_columns_to_be_unique",
            "One row per (window_start, group): two rows for one key mean a broken rewrite.",
            column_list=["window_start", *gold.group_by],
        )
    )
    for a in gold.aggregates:
        if a.fn in ("count", "count_distinct"):
            exps.append(
                _exp(
                    "expect_column_values_to_be_between",
                    "A window row exists only because at least one event fell in it.",
                    column=a.name,
                    min_value=1,
                )
            )
        elif a.column and spec.field_spec(a.column).min is not None:
            low = spec.field_spec(a.column).min
            if a.fn != "sum" or low >= 0:  # a sum of values >= 0 is >= 0; of others, unbounded
                exps.append(
                    _exp(
                        "expect_column_values_to_be_between",
                        f"A {a.fn} of {a.column} values that are each >= {low}.",
                        column=a.name,
                        min_value=_number(0 if a.fn == "sum" else low),
                    )
                )
    return {
        "notes": f"{gold.window} tumbling windows of {spec.name} by {', '.join(gold.group_by)}.",
        "expectations": exps,
        "riverdelta_checks": [{"check": "gold_matches_silver", "gold": gold.name}],
    }


def _number(value: Any) -> int | float:
    # JSON (and GX's kwargs) have no Decimal: a whole minimum stays an int.
    return int(value) if value == int(value) else float(value)


def _owner(table: str) -> tuple[StreamSpec, str]:
    for spec in load_registry().streams.values():
        for layer, name in spec.table_names().items():
            if name == table:
                return spec, layer
    raise KeyError(f"unknown table {table!r}: not a table of any stream in the registry")


def derived_suite(table: str) -> dict[str, Any]:
    """The suite the contract alone gives ``table``."""
    spec, layer = _owner(table)
    build = {"bronze": _bronze, "silver": _silver, "quarantine": _quarantine}.get(layer)
    body = build(spec) if build else _gold(spec, layer)
    for e in body["expectations"]:
        _mark(e, "contract", "contract", f"Derived from the contract of stream {spec.name}.")
    return {
        "name": table,
        "meta": {"notes": body["notes"], "derived_from": f"registry stream {spec.name}"},
        "expectations": body["expectations"],
        "riverdelta_checks": body.get("riverdelta_checks", []),
    }


def _mark(exp: dict[str, Any], source: str, label: str, fallback: str) -> None:
    meta = exp.setdefault("meta", {})
    meta["source"] = source
    exp["notes"] = f"[{label}] {meta.get('why') or fallback}"


def _key(exp: dict[str, Any]) -> tuple[str, str]:
    kw = exp.get("kwargs", {})
    target = kw.get("column") or kw.get("column_list") or [kw.get("column_A"), kw.get("column_B")]
    return exp["type"], json.dumps(target)


def suite_file(table: str) -> Path:
    return SUITES_DIR / f"{table}.json"


def file_suite(table: str) -> dict[str, Any] | None:
    path = suite_file(table)
    if not path.exists():
        return None
    doc = json.loads(path.read_text())
    if doc.get("name", table) != table:
        raise ValueError(f"{path}: suite name {doc.get('name')!r} does not match the file name")
    return doc


def effective_suite(table: str) -> dict[str, Any]:
    """The derived suite with ``expectations/<table>.json`` merged over it."""
    suite = derived_suite(table)
    doc = file_suite(table)
    if doc is None:
        return suite
    source = f"expectations/{table}.json"
    dropped = {_key({"type": d["type"], "kwargs": d}) for d in doc.get("drop", [])}
    unknown = dropped - {_key(e) for e in suite["expectations"]}
    if unknown:
        raise ValueError(
            f"{source}: drop names expectations the contract does not derive: {unknown}"
        )
    merged = {_key(e): e for e in suite["expectations"] if _key(e) not in dropped}
    for exp in doc.get("expectations", []):
        exp = json.loads(json.dumps(exp))  # the file's document stays as read
        _mark(exp, "file", source, f"Added in {source}.")
        merged[_key(exp)] = exp  # same key: the file overrides the contract
    suite["expectations"] = list(merged.values())
    checks = suite["riverdelta_checks"]
    checks += [c for c in doc.get("riverdelta_checks", []) if c not in checks]
    meta = {**suite["meta"], **(doc.get("meta") or {}), "refined_by": source}
    if (doc.get("meta") or {}).get("notes"):
        meta["notes"] = f"{suite['meta']['notes']} {source}: {doc['meta']['notes']}"
    suite["meta"] = meta
    return suite
