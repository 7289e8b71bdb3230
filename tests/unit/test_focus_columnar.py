"""The columnar bill reader (DuckDB) gives exactly the row reader's totals, or hands the file to it:
the same figures, the same errors, whatever the file holds."""

from __future__ import annotations

from dataclasses import asdict
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from focus_rows import FOCUS_12, FOCUS_13_SPLIT, row, write_csv, write_parquet
from mlops_kpi_exporter.sources import focus_columnar
from mlops_kpi_exporter.sources.focus import FocusReader, NotFocus

READER = FocusReader(("team", "project"), {"team": ["team", " Team", "user:team"]}, "USD",
                     join_tags=("mlflow_run_id", "ClusterId"))


def by_rows(path, monkeypatch) -> dict:
    with monkeypatch.context() as patched:
        patched.setattr(focus_columnar, "available", lambda: False)
        return asdict(READER.read(path))


def columnar(path) -> dict:
    return asdict(focus_columnar.totals(READER, path, str(path)))


QUIRKS = [
    row("1.25", "1", "1.5", "2026-10-05T00:00:00Z", "2026-10-05T01:00:00Z", tags={"user:team": "a", "project": "x"}),
    row("NULL", "", "null", "2026-10-05T00:00:00Z", "2026-10-05T01:00:00Z"),  # empty amounts are 0
    row("-3.5", "-3.5", "0", "2026-10-06T00:00:00Z", "2026-10-07T00:00:00Z", charge="Credit"),  # a credit
    row("0.0000000015", "0.0000000025", "0.0000000035", "2026-11-02 00:00:00", "2026-11-02 01:00:00",  # halves to even
        tags={" Team ": " b ", "flag": True}),  # odd key spacing, a tag without a value
    row("2", "2", "2", "2026-11-01T02:00:00+05:00", "2026-11-01T03:00:00+05:00", category="NULL"),  # October in UTC
    row("7", "7", "7", "2026-11-03T00:00:00Z", "2026-11-03T01:00:00Z", service="NULL",
        tags={"mlflow_run_id": "r1"}),
    row("3", "2", "4", "2026-11-12T08:00:00Z", "2026-11-12T09:00:00Z", tags={"ClusterId": "c-1"},
        allocated={"mlflow_run_id": "r2"}),
    row("1", "1", "1", "2026-11-12T08:00:00Z", "", tags={"mlflow_run_id": "r3"}),  # no end: no join, no last charge
]


@pytest.mark.parametrize("kind", ["csv", "csv.gz", "parquet"])
def test_the_columnar_reader_gives_the_row_readers_totals(tmp_path, monkeypatch, kind):
    path = tmp_path / f"bill.{kind}"
    if kind == "parquet":
        write_parquet(path, QUIRKS, FOCUS_13_SPLIT)
    else:
        write_csv(path, QUIRKS, FOCUS_13_SPLIT, gz=kind == "csv.gz")
    got = columnar(path)  # not Irregular: every quirk above is read in columns
    assert got == by_rows(path, monkeypatch)
    assert got["rows"] == len(QUIRKS) and got["joined"]


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_a_groups_costs_are_summed_exactly_and_rounded_once(tmp_path, monkeypatch, kind):
    """1,000 rows of 0.0000000004 (0.4 nano-units each: 0 if each row were rounded) are 400 nano-units,
    in both readers; the FinOps sample writes 11 decimals, so a month of it is a sum of such fractions."""
    rows = [row("0.0000000004", "0.00000000045", "0.0000000005", "2026-11-02T00:00:00Z", "2026-11-02T01:00:00Z")
            for _ in range(1000)]
    path = tmp_path / f"bill.{kind}"
    (write_parquet if kind == "parquet" else write_csv)(path, rows, FOCUS_12)
    got = columnar(path)
    assert got == by_rows(path, monkeypatch)
    assert list(got["costs"].values()) == [[400, 450, 500]]


def test_an_amount_no_bill_writes_is_named(tmp_path):
    path = tmp_path / "bill.csv"
    write_csv(path, [{**QUIRKS[0], "BilledCost": "1e31"}], FOCUS_12)
    with pytest.raises(NotFocus, match="row 2: not an amount: '1e31'"):
        READER.read(path)


@pytest.mark.parametrize("bad, error", [
    ({"BilledCost": "1,5"}, "not a number"),
    ({"BilledCost": "1e-21"}, None),  # a number the row reader reads exactly: the same figures
    ({"BilledCost": "0." + "1" * 20}, None),  # more decimals than DECIMAL(38, 18)
    ({"ChargePeriodStart": "NULL"}, "ChargePeriodStart is empty"),
    ({"ChargePeriodStart": "yesterday"}, "Invalid isoformat"),
    ({"BillingCurrency": "EUR"}, "BillingCurrency EUR"),
])
def test_what_only_the_row_reader_can_name_is_read_row_by_row(tmp_path, monkeypatch, bad, error):
    path = tmp_path / "bill.csv"
    write_csv(path, [QUIRKS[0], {**QUIRKS[1], **bad}], FOCUS_12)
    with pytest.raises(focus_columnar.Irregular):
        columnar(path)
    if error is None:
        assert asdict(READER.read(path)) == by_rows(path, monkeypatch)
    else:
        with pytest.raises(NotFocus, match=error):
            READER.read(path)


def test_a_ragged_csv_and_a_missing_column_get_the_row_readers_answer(tmp_path):
    path = tmp_path / "bill.csv"
    path.write_text("BilledCost,EffectiveCost,ListCost,ChargePeriodStart,ChargePeriodEnd,ServiceName\n1,1,1,2026-11-01,2026-11-02,S\n")
    with pytest.raises(NotFocus, match="no ProviderName"):
        READER.read(path)
    path.write_text(path.read_text().replace("ServiceName\n", "ServiceName,ProviderName\n") + "1,1\n")
    with pytest.raises(focus_columnar.Irregular):
        columnar(path)
    with pytest.raises(NotFocus, match="row 3: ChargePeriodStart is empty"):  # the short row, named
        READER.read(path)


AMOUNT = st.one_of(st.decimals(min_value=Decimal("-1000"), max_value=Decimal("1000"), places=12, allow_nan=False,
                               allow_infinity=False).map(str),
                   st.sampled_from(["", "NULL", "null", "0", "0.0000000005", "-0.0000000005", "1.0000000015",
                                    "1.5e-9", "2.5E-9", "0E-12", "3e2"]))


@settings(max_examples=60)  # within the fixed profile: each example writes and reads a file twice
@given(st.lists(st.tuples(AMOUNT, AMOUNT, AMOUNT, st.integers(0, 2), st.sampled_from([None, "a", "b"])),
                min_size=1, max_size=30))
def test_any_amounts_sum_to_the_same_nano_units(tmp_path_factory, amounts):
    path = tmp_path_factory.mktemp("bill") / "bill.csv"
    rows = [row(b, e, lst, f"2026-1{m}-01T00:00:00Z", f"2026-1{m}-01T01:00:00Z",
                tags={"team": team} if team else None) for b, e, lst, m, team in amounts]
    write_csv(path, rows, FOCUS_12)
    got = focus_columnar.totals(READER, path, str(path))
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(focus_columnar, "available", lambda: False)
        assert asdict(got) == asdict(READER.read(path))


def test_a_regular_file_is_never_read_row_by_row(tmp_path, caplog, monkeypatch):
    path = tmp_path / "bill.csv.gz"
    write_csv(path, QUIRKS, FOCUS_13_SPLIT, gz=True)
    with caplog.at_level("INFO"):
        got = asdict(READER.read(path))
    assert not [r for r in caplog.records if "row by row" in r.getMessage()], caplog.records
    assert got == by_rows(path, monkeypatch)


def test_a_file_named_parquet_that_is_none_is_named(tmp_path):
    path = tmp_path / "bill.parquet"
    path.write_bytes(b"PAR1 and then nothing of a Parquet file")
    with pytest.raises(NotFocus, match="bill.parquet: not a Parquet file"):
        READER.read(path)
