"""The columnar FOCUS reader (the `bills` extra: DuckDB): the FileTotals of focus.FocusReader's row
reader, at the pace of a columnar engine. DuckDB groups the file at read time, by only what the
figures need (month, provider, service, category, charge category, the raw Tags and, for
billing.run_join, the charge period of tagged rows), each group's costs summed exactly (DECIMAL(38,
18)), and the few thousand groups are then folded in Python by the row reader's own rules (tags,
aliases, joins), each of the file's figures rounded once to nano-units as the row reader does it.

A file with anything only the row reader can name exactly (a cost or time that is not one, another
currency, a ragged CSV row, an unusual column type) is Irregular: the caller reads it row by row
instead, for the same figures or the same error.
"""

from __future__ import annotations

import os
from decimal import localcontext
from pathlib import Path
from typing import Any

from mlops_kpi_exporter.bill import COMPUTE_CATEGORIES, EXACT, MISSING, FileTotals, add_costs, parse_tags
from mlops_kpi_exporter.runs import UNTAGGED

FocusReader = Any  # focus.FocusReader, which calls this module (its rules: keys, join_keys, join_one, check_columns)

MAX_DECIMALS = 18  # DECIMAL(38, 18): any amount a bill writes; more decimals are read row by row
COSTS = ("BilledCost", "EffectiveCost", "ListCost")  # in the order of bill.BASES
MISSING_SQL = "(" + ", ".join(f"'{m}'" for m in sorted(MISSING)) + ")"


SETTINGS = {"threads": min(4, os.cpu_count() or 1)}  # up to 4 cores


def connect():
    """A DuckDB of its own, without its progress bar (it writes to stdout, where `once` writes the exposition)."""
    import duckdb

    con = duckdb.connect(config=SETTINGS)
    con.execute("SET enable_progress_bar = false")
    return con


class Irregular(Exception):
    """The file needs the row reader (its message says why, for the log)."""


def available() -> bool:
    try:
        import duckdb  # noqa: F401
    except ImportError:
        return False
    return True


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def quoted(column: str) -> str:
    """A column's name in SQL, whatever it holds."""
    return '"' + column.replace('"', '""') + '"'


def _text(column: str | None) -> str:
    """A column as text, or NULL when the file has no such column."""
    return f"CAST({quoted(column)} AS VARCHAR)" if column else "CAST(NULL AS VARCHAR)"


def _amount_text(column: str, kind: str) -> str:
    """A cost column as trimmed text, NULL when missing. A Parquet float is taken at 18 decimals (its
    shortest text may be written 1.5e-09)."""
    if kind in ("DOUBLE", "FLOAT"):
        return f'CAST(CAST("{column}" AS DECIMAL(38, {MAX_DECIMALS})) AS VARCHAR)'
    return _present(column)


def _too_fine(text: str) -> str:
    """True when an amount needs more decimals than DECIMAL(38, 18) keeps (1.5e-20 needs 21): read row by row."""
    plain = f"(length({text}) - position('.' IN {text}) > {MAX_DECIMALS} AND position('.' IN {text}) > 0)"
    mantissa, exponent = f"split_part(lower({text}), 'e', 1)", f"split_part(lower({text}), 'e', 2)"
    scientific = (f"(length(split_part({mantissa}, '.', 2)) - coalesce(TRY_CAST(nullif({exponent}, '') AS INTEGER), 0)"
                  f" > {MAX_DECIMALS})")
    return f"CASE WHEN contains(lower({text}), 'e') THEN {scientific} ELSE {plain} END"


def _present(column: str) -> str:
    """A column as trimmed text, NULL when missing."""
    text = f"trim({_text(column)})"
    return f"CASE WHEN {text} NOT IN {MISSING_SQL} THEN {text} END"


def _utc(text: str) -> str:
    """A FOCUS timestamp (text) as UTC wall time, NULL when it is none: as an instant, then in UTC
    (without DuckDB's ICU extension, which the wheel may not bring)."""
    return f"CAST(TRY_CAST(replace({text}, 'Z', '+00:00') AS TIMESTAMPTZ) AS TIMESTAMP)"


def source_sql(path: Path, name: str) -> str:
    """The file as a DuckDB relation: Parquet as typed, CSV as text (the row reader's view of it)."""
    if name.endswith(".parquet"):
        return f"read_parquet({_literal(str(path))})"
    return (f"read_csv({_literal(str(path))}, header = true, all_varchar = true, delim = ',', quote = '\"', "
            "escape = '\"', strict_mode = true, compression = " + ("'gzip'" if name.endswith(".gz") else "'none'") + ")")


def columns_of(path: Path, name: str) -> dict[str, str]:
    """The file's columns and their DuckDB types (Irregular if DuckDB cannot read it)."""
    import duckdb

    try:
        with connect() as con:
            return {row[0]: row[1] for row in con.execute(f"DESCRIBE SELECT * FROM {source_sql(path, name)}").fetchall()}
    except duckdb.Error as exc:
        raise Irregular(f"{type(exc).__name__}: {str(exc)[:160]}") from None


def totals(reader: FocusReader, path: Path, name: str) -> FileTotals:
    """The file's totals, or Irregular (NotFocus for a file that is no FOCUS export at all)."""
    import duckdb

    types = columns_of(path, name)
    columns = list(types)
    reader.check_columns(name, columns)

    odd = [c for c in ("Tags", "AllocatedTags") if c in types and types[c] != "VARCHAR"]
    if odd:
        raise Irregular(f"{', '.join(odd)} not text")
    have = set(columns)
    col = {c: (c if c in have else None) for c in ("ServiceProviderName", "ProviderName", "ServiceName",
                                                   "ServiceCategory", "ChargeCategory", "BillingCurrency", "Tags",
                                                   "AllocatedTags")}
    def cleaned(column: str | None, default: str) -> str:
        text = f"trim(coalesce({_text(column)}, ''))"
        return f"CASE WHEN {text} IN {MISSING_SQL} THEN '{default}' ELSE {text} END"

    # the row reader takes the first provider column not missing as written, then strips it
    provider = "coalesce(" + ", ".join(
        f"CASE WHEN {_text(c)} NOT IN {MISSING_SQL} THEN trim({_text(c)}) END"
        for c in (col["ServiceProviderName"], col["ProviderName"]) if c) + ", 'unknown')"
    currency = f"trim(coalesce({_text(col['BillingCurrency'])}, ''))"
    # three layers, so each cell is cleaned once: the amounts' text, their decimals, then the groups' columns
    texts = ", ".join(f"{_amount_text(c, types[c])} AS t{i}" for i, c in enumerate(COSTS))
    amounts = ", ".join(f"TRY_CAST(t{i} AS DECIMAL(38, {MAX_DECIMALS})) AS d{i}" for i in range(3))
    exacts = ", ".join(f"coalesce(d{i}, 0) AS c{i}" for i in range(3))  # summed exactly, rounded once in Python
    bad = " OR ".join([*(f"(t{i} IS NOT NULL AND (d{i} IS NULL OR {_too_fine(f't{i}')}))" for i in range(3)),
                       "start_ts IS NULL", "(et IS NOT NULL AND end_ts IS NULL)",
                       f"({currency} NOT IN {MISSING_SQL} AND {currency} <> {_literal(reader.currency)})"])
    rows = (f"SELECT strftime(start_ts, '%Y-%m') AS month, {provider} AS provider, "
            f"{cleaned(col['ServiceName'], 'unknown')} AS service, {cleaned(col['ServiceCategory'], 'Other')} AS category, "
            f"trim(coalesce({_text(col['ChargeCategory'])}, '')) AS charge, {_text(col['Tags'])} AS tags, "
            f"{_text(col['AllocatedTags'])} AS allocated, epoch_us(start_ts) AS start_us, epoch_us(end_ts) AS end_us, "
            f"{exacts}, ({bad}) AS bad "
            f"FROM (SELECT *, {amounts}, {_utc('st')} AS start_ts, {_utc('et')} AS end_ts "
            f"FROM (SELECT *, {texts}, {_present('ChargePeriodStart')} AS st, {_present('ChargePeriodEnd')} AS et "
            f"FROM {{source}}))")
    source = source_sql(path, name)
    cost_sums = "sum(c0), sum(c1), sum(c2)"
    with connect() as con:
        try:
            con.execute(f"CREATE TEMP VIEW r AS {rows.format(source=source)}")
            groups = con.execute(
                f"SELECT month, provider, service, category, charge, tags, end_us IS NOT NULL, {cost_sums}, "
                "max(end_us), count(*), bool_or(bad) FROM r GROUP BY ALL").fetchall()
            if any(g[-1] for g in groups):
                raise Irregular("a row the row reader must name")
            keys = sorted({k for keys in reader.join_keys for k in keys})
            joined = []
            if keys and groups:
                found = " OR ".join(f"position(? IN coalesce({field}, '')) > 0" for field in ("tags", "allocated")
                                    for _ in keys)
                joined = con.execute(
                    f"SELECT provider, month, start_us, end_us, tags, allocated, {cost_sums} FROM r "
                    f"WHERE end_us IS NOT NULL AND ({found}) GROUP BY ALL", [*keys, *keys]).fetchall()
        except duckdb.Error as exc:
            raise Irregular(f"{type(exc).__name__}: {str(exc)[:160]}") from None
    with localcontext(EXACT):
        return _fold(reader, groups, joined).in_nano()


def _fold(reader: FocusReader, groups: list[tuple], joined: list[tuple]) -> FileTotals:
    """The groups folded into FileTotals by the row reader's rules."""
    out = FileTotals()
    for month, provider, service, category, charge, tags_text, has_end, c0, c1, c2, end_us, count, _ in groups:
        costs = [c0, c1, c2]  # exact Decimals
        add_costs(out.costs, (month, provider, service, category), costs)
        compute = category in COMPUTE_CATEGORIES
        if compute and charge in ("Usage", *MISSING):
            add_costs(out.compute_usage, (month, provider), costs)
        tags = parse_tags(tags_text)
        for tag, keys in reader.keys.items():
            value = next((tags[k] for k in keys if k in tags), UNTAGGED)[:100]
            add_costs(out.by_tag, (month, tag, value, compute), costs)
        if has_end:
            out.last_charge[provider] = max(out.last_charge.get(provider, 0.0), end_us / 1e6)
        out.rows += count
    for provider, month, start_us, end_us, tags_text, allocated_text, c0, c1, c2 in joined:
        row = {"AllocatedTags": allocated_text}
        reader.join_one(out, row, parse_tags(tags_text), provider, month, start_us // 1000, end_us // 1000,
                        [c0, c1, c2])
    return out
