"""Amounts typed by operators (admin API bodies, CLI options): one strict parser."""

from __future__ import annotations

from typing import Any

import pytest

from imagerelay.domain.money import MAX_AMOUNT_MICROS, MoneyInputError, parse_usd


@pytest.mark.parametrize(
    ("text", "micros"),
    [
        ("25", 25_000_000),
        ("25.5", 25_500_000),
        ("0.000001", 1),
        ("0", 0),
        ("007.10", 7_100_000),
        ("1000000000", MAX_AMOUNT_MICROS),
        ("999999999.999999", MAX_AMOUNT_MICROS - 1),
    ],
)
def test_plain_decimals_are_exact(text: str, micros: int) -> None:
    got = parse_usd(text)
    assert got == micros and type(got) is int


def test_a_minus_sign_only_where_a_debit_is_meant() -> None:
    assert parse_usd("-2.5", signed=True) == -2_500_000
    assert parse_usd("-1000000000", signed=True) == -MAX_AMOUNT_MICROS
    with pytest.raises(MoneyInputError, match="negative"):
        parse_usd("-2.5")


@pytest.mark.parametrize(
    "bad",
    [
        "Infinity",
        "-Infinity",
        "inf",
        "NaN",
        "1e100",
        "1E3",
        "1e-3",
        "1_000",
        "1,000",
        "\u0661\u0660",  # Arabic-Indic "10": int() and Decimal() take it
        "\uff11\uff10",  # full-width "10"
        "\u00b2",  # superscript two: str.isdigit() says yes
        "10000000000",
        "1000000000.000001",
        "9" * 5000,
        "99999999999999999999999",
        "1.0000001",
        "0.0000005",
        " 10",
        "10 ",
        "10\n",
        "+10",
        ".5",
        "5.",
        "0x10",
        "",
        "-",
        "--1",
        "1-",
    ],
)
def test_anything_else_is_refused(bad: str) -> None:
    with pytest.raises(MoneyInputError):
        parse_usd(bad, signed=True)


@pytest.mark.parametrize("bad", [1.5, 10, True, None, ["1"], {"usd": "1"}])
def test_only_strings(bad: Any) -> None:
    with pytest.raises(MoneyInputError, match="decimal string"):
        parse_usd(bad)


def test_the_bound_is_named_in_the_message() -> None:
    with pytest.raises(MoneyInputError, match=r"\$1000000000\.000000"):
        parse_usd("1000000000.000001")
