"""The sandbox's own reading of the published contract: which checkout bodies the API takes, and
its error body. Written from the API reference, never from paylinks.jobs.models, so that a bug
in our models is not mirrored by the stand-in API."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

# The reference's error table: (code, type) of the two ways a body is refused.
INVALID = ("11", "invalidParam")
MISSING = ("12", "missingParam")

# The provider's currencies, with the decimals the sandbox lets an amount carry in each.
CURRENCY_DECIMALS = {
    "CLP": 0, "MXN": 2, "COP": 2, "PEN": 2, "BOB": 2, "PYG": 0, "AUD": 2, "ARS": 2, "BRL": 2,
    "USD": 2, "CAD": 2, "EUR": 2, "GBP": 2, "USDC": 6, "USDT": 6,
}  # fmt: skip
PAYMENT_METHODS = frozenset({
    "CARD", "CRYPTO", "ACCOUNT", "BANK_ACCOUNT", "PIX", "PCT", "CVU", "ETPAY", "FINTOC", "WEBPAY",
    "SPEI", "PSE", "BANCOLOMBIA", "DAVIVIENDA", "DAVIPLATA", "NEQUI", "BREB", "WOMPI", "LIGO",
    "SIP", "ACH", "WIRE", "FEDNOW", "RTP", "SEPA", "FPE", "SWIFT",
})  # fmt: skip
CUSTOMER_REQUIREMENTS = frozenset({
    "firstName", "email", "lastName", "phoneNumber", "phoneNumberPrefix", "address",
    "documentNumber", "documentType",
})  # fmt: skip
# The reference's list, and CC and SSN, which its examples show.
DOCUMENT_TYPES = frozenset({
    "PASSPORT", "RFC", "CURP", "RUT", "CED_CIU", "CED_EXT", "NIT", "DNI", "CE", "RUC", "CUIL",
    "CUIT", "CC", "SSN",
})  # fmt: skip
ACCOUNT_TYPES = frozenset({"CHECKING", "ASSET", "SAVINGS", "ESCROW", "FEE"})
TAX_TYPES = frozenset({"FIXED", "PERCENTAGE"})
MIN_DURATION = 30

_DECIMAL = re.compile(r"(0|[1-9][0-9]*)(\.[0-9]+)?")
# What a payments API takes for an address: something@domain.tld, no spaces.
_EMAIL = re.compile(r"[^@\s]+@[^@\s.]+(\.[^@\s.]+)+")


class RefusalError(Exception):
    """A body the API refuses, with the reference's code and type and a detail that, as a real
    API's does, quotes what the request carried."""

    def __init__(self, kind: tuple[str, str], detail: str) -> None:
        super().__init__(detail)
        self.code, self.type = kind
        self.detail = detail


Rule = Callable[[str, Any], None]


def _invalid(path: str, value: Any, why: str) -> RefusalError:
    return RefusalError(INVALID, f"{path} {value!r} {why}")


def _string(path: str, value: Any) -> None:
    if not isinstance(value, str):
        raise _invalid(path, value, "is not a string")


def _text(path: str, value: Any) -> None:
    _string(path, value)
    if not value:
        raise _invalid(path, value, "is empty")


def _one_of(choices: frozenset[str]) -> Rule:
    def rule(path: str, value: Any) -> None:
        if value not in choices:
            raise _invalid(path, value, f"is not one of {', '.join(sorted(choices))}")

    return rule


def _decimal(path: str, value: Any) -> None:
    if not isinstance(value, str) or not _DECIMAL.fullmatch(value):
        raise _invalid(path, value, "is not a decimal string")


def _duration(path: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < MIN_DURATION:
        raise _invalid(path, value, f"is not a whole number of seconds of at least {MIN_DURATION}")


def _email(path: str, value: Any) -> None:
    _string(path, value)
    if not _EMAIL.fullmatch(value):
        raise _invalid(path, value, "is not valid")


def _list(rule: Rule, at_least: int = 0) -> Rule:
    def check(path: str, value: Any) -> None:
        if not isinstance(value, list):
            raise _invalid(path, value, "is not a list")
        if len(value) < at_least:
            raise RefusalError(INVALID, f"{path} needs at least {at_least} element")
        for i, element in enumerate(value):
            rule(f"{path}[{i}]", element)

    return check


def _object(fields: Mapping[str, tuple[bool, Rule]]) -> Rule:
    """An object of these fields, each (required, rule); null stands for an absent field."""

    def check(path: str, value: Any) -> None:
        if not isinstance(value, dict):
            raise _invalid(path, value, "is not an object")
        prefix = f"{path}." if path else ""
        for name in value:
            if name not in fields:
                raise RefusalError(INVALID, f"{prefix}{name} is not a field the API knows")
        for name, (required, rule) in fields.items():
            if value.get(name) is None:
                if required:
                    raise RefusalError(MISSING, f"{prefix}{name} is required")
                continue
            rule(f"{prefix}{name}", value[name])

    return check


def _any_object(path: str, value: Any) -> None:
    if not isinstance(value, dict):
        raise _invalid(path, value, "is not an object")


_TAX = _object(
    {
        "name": (True, _text),
        "type": (True, _one_of(TAX_TYPES)),
        "value": (True, _text),
        "amount": (True, _decimal),
    }
)
_ITEM = _object(
    {
        "preTaxAmount": (True, _decimal),
        "totalAmount": (True, _decimal),
        "description": (True, _text),
        "tax": (False, _TAX),
    }
)
_CUSTOMER = _object(
    {
        "id": (False, _string),
        "firstName": (False, _string),
        "lastName": (False, _string),
        "email": (False, _email),
        "phoneNumber": (False, _string),
        "phoneNumberPrefix": (False, _string),
        "documentType": (False, _one_of(DOCUMENT_TYPES)),
        "documentNumber": (False, _string),
        "address": (False, _any_object),
    }
)
_ACCOUNT = _object(
    {
        "type": (True, _one_of(ACCOUNT_TYPES)),
        "currency": (True, _one_of(frozenset(CURRENCY_DECIMALS))),
        "accountNumber": (True, _text),
        "accountHolder": (True, _text),
    }
)
_METADATA = _object(
    {"image": (True, _string), "description": (True, _string), "category": (True, _string)}
)
_DESTINATION = _object(
    {
        "type": (True, _one_of(frozenset({"ACCOUNT"}))),
        "amount": (True, _decimal),
        "account": (True, _ACCOUNT),
        "name": (False, _string),
        "externalId": (False, _string),
        "metadata": (False, _METADATA),
    }
)
_OWNER = _object(
    {
        "identityId": (True, _text),
        "name": (False, _string),
        "lastname": (False, _string),
        "nickname": (False, _string),
        "documentNumber": (False, _string),
        "entityType": (False, _string),
    }
)
_CHECKOUT = _object(
    {
        "checkoutToken": (False, _text),
        "items": (True, _list(_ITEM, at_least=1)),
        "currency": (True, _one_of(frozenset(CURRENCY_DECIMALS))),
        "paymentMethodsAllowed": (True, _list(_one_of(PAYMENT_METHODS), at_least=1)),
        "customer": (False, _CUSTOMER),
        "destinations": (True, _list(_DESTINATION, at_least=1)),
        "duration": (True, _duration),
        "customerRequirements": (False, _list(_one_of(CUSTOMER_REQUIREMENTS))),
        "owner": (True, _OWNER),
        "successUrl": (False, _string),
        "failedUrl": (False, _string),
    }
)


def check_checkout(body: Any) -> None:
    """Raise RefusalError for the first thing in `body` the API would refuse."""
    _CHECKOUT("", body)
    decimals = CURRENCY_DECIMALS[body["currency"]]
    for i, item in enumerate(body["items"]):
        tax = item.get("tax") or {}
        expected = Decimal(item["preTaxAmount"]) + Decimal(tax.get("amount", "0"))
        if Decimal(item["totalAmount"]) != expected:
            raise _invalid(
                f"items[{i}].totalAmount",
                item["totalAmount"],
                f"is not preTaxAmount plus tax.amount ({expected})",
            )
    amounts = [
        (f"items[{i}].{name}", amount)
        for i, item in enumerate(body["items"])
        for name, amount in (
            ("preTaxAmount", item["preTaxAmount"]),
            ("totalAmount", item["totalAmount"]),
            ("tax.amount", (item.get("tax") or {}).get("amount", "0")),
        )
    ]
    amounts += [
        (f"destinations[{i}].amount", d["amount"]) for i, d in enumerate(body["destinations"])
    ]
    for path, amount in amounts:
        if len(amount.partition(".")[2]) > decimals:
            why = f"has more decimals than {body['currency']} allows ({decimals})"
            raise _invalid(path, amount, why)
