"""Money: the one place amounts are parsed, rounded and formatted.

Money is integer micro-dollars (1 USD = 1_000_000 µ$) everywhere outside this module;
``Decimal`` only inside a computation, never float (passing one is a ``TypeError``).

The rounding policy, the only one in the code base:

* A *computed* amount (a catalog price in USD, tokens x price x multiplier) is exact
  ``Decimal`` arithmetic at :data:`PRECISION` digits, rounded ONCE, on the total, half up
  (ties away from zero) to the micro-dollar: :func:`round_micros`, :func:`to_micros`.
  Catalog prices such as ``$0.0000025`` per token are legitimate, so sub-micro precision
  is rounded, not refused.
* A *typed* amount (an operator's top-up, a spend cap) is never rounded: anything that
  is not an exact micro-dollar is refused with a message (:func:`parse_usd`). Silently
  rounding what a person typed would credit or cap a different amount than they meant.
* Formatting is exact (six decimals), so ``parse_usd(format_amount(m)) == m``.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation, localcontext

__all__ = [
    "MAX_AMOUNT_MICROS",
    "MICROS_PER_USD",
    "PRECISION",
    "MoneyInputError",
    "format_amount",
    "format_usd",
    "parse_usd",
    "round_micros",
    "to_decimal",
    "to_micros",
]

MICROS_PER_USD = 1_000_000
# The largest amount an operator may type: $1,000,000,000. Far above any real top-up,
# far below what a 64-bit integer column holds (about $9.2 trillion in micro-dollars).
MAX_AMOUNT_MICROS = 1_000_000_000 * MICROS_PER_USD
PRECISION = 60  # digits: far beyond any token count x price x multiplier


class MoneyInputError(ValueError):
    """An amount typed by an operator is not a plain, bounded decimal; the message says why."""


# --------------------------------------------------------------------------- computed


def to_decimal(value: object, what: str) -> Decimal:
    """A catalog number (``Decimal``, ``str`` or ``int``) as a finite ``Decimal``."""
    if isinstance(value, (bool, float)):
        raise TypeError(f"{what} must be a Decimal, str or int, never {type(value).__name__}")
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, str):
        try:
            result = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"{what} {value!r} is not a number") from None
    else:
        raise TypeError(f"{what} must be a Decimal, str or int, not {type(value).__name__}")
    if not result.is_finite():
        raise ValueError(f"{what} must be finite; got {value!r}")
    return result


def round_micros(exact: Decimal) -> int:
    """An exact amount in micro-dollars, rounded half up (ties away from zero)."""
    with localcontext() as ctx:
        ctx.prec = PRECISION
        return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def to_micros(amount: Decimal | str | int) -> int:
    """USD -> micro-dollars, rounded by the policy above (``"0.0000005"`` -> 1,
    ``"-0.0000005"`` -> -1). Floats are refused (``TypeError``)."""
    with localcontext() as ctx:
        ctx.prec = PRECISION
        return round_micros(to_decimal(amount, "amount") * MICROS_PER_USD)


# --------------------------------------------------------------------------- typed

# ASCII digits only (``re.ASCII`` keeps ``\d`` out of it: "١٠" is a number to ``int``),
# no exponent, no ``_``, no whitespace, at most 6 decimals. The length of the whole part
# is bounded here so no huge string reaches ``int``.
_PLAIN_USD = re.compile(r"(-?)([0-9]{1,10})(?:\.([0-9]{1,6}))?", re.ASCII)


def parse_usd(text: object, *, signed: bool = False) -> int:
    """An amount an operator typed (API body, CLI option) -> exact micro-dollars.

    Only a plain decimal string such as ``"25"``, ``"25.5"`` or ``"0.000001"``: no float,
    exponent, ``Infinity``, ``1_000``, non-ASCII digit or seventh decimal, and nothing past
    :data:`MAX_AMOUNT_MICROS`. A leading ``-`` only when ``signed`` (a debit).
    Raises :class:`MoneyInputError`."""
    if not isinstance(text, str):
        raise MoneyInputError(f'must be a decimal string such as "10.00", not a {type(text).__name__}')
    match = _PLAIN_USD.fullmatch(text)
    if match is None:
        raise MoneyInputError(
            'must be a plain decimal amount in USD such as "25" or "0.5" '
            "(digits 0-9, at most 6 decimal places, no exponent)"
        )
    sign, whole, fraction = match.groups()
    if sign and not signed:
        raise MoneyInputError("must not be negative")
    micros = int(whole) * MICROS_PER_USD + int((fraction or "").ljust(6, "0"))
    if micros > MAX_AMOUNT_MICROS:
        raise MoneyInputError(f"must be at most {format_usd(MAX_AMOUNT_MICROS)}")
    return -micros if sign else micros


# --------------------------------------------------------------------------- shown


def format_amount(micros: int) -> str:
    """``30_000`` -> ``"0.030000"``: the JSON form (``*_usd`` fields), exact, six decimals."""
    if isinstance(micros, bool) or not isinstance(micros, int):
        raise TypeError(f"micros must be an int, not {type(micros).__name__}")
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS_PER_USD)
    return f"{sign}{whole}.{frac:06d}"


def format_usd(micros: int) -> str:
    """``30_000`` -> ``"$0.030000"``: the form in messages; ``-$`` for negatives."""
    text = format_amount(micros)
    return f"-${text[1:]}" if text.startswith("-") else f"${text}"


def plain_decimal(value: Decimal) -> str:
    """A catalog price as people write it: ``30.00`` -> ``"30"``, ``1.250`` -> ``"1.25"``
    (``normalize()`` alone gives ``"3E+1"``)."""
    return format(value.normalize(), "f")
