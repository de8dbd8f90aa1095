"""Rules of the checkout request models, the idempotency key and the example files."""

from __future__ import annotations

import copy
import importlib.util
import io
import json
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic import BaseModel, ValidationError, field_validator

from paylinks.jobs import wire
from paylinks.jobs.intake import Accepted, accept, checked, parse, read_csv, read_json_lines
from paylinks.jobs.layout import IDEMPOTENCY_NAMESPACE, idempotency_key
from paylinks.jobs.models import (
    AMOUNT_RULE,
    DECIMALS,
    DEFAULT_DURATION,
    TOKEN_PATTERN,
    TOKEN_RULE,
    CheckoutRequest,
    Currency,
    personal_data,
    request_schema,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# Every field the reference names, per object: wire() must use exactly these spellings.
REQUEST_FIELDS = {
    "checkoutToken",
    "items",
    "currency",
    "paymentMethodsAllowed",
    "customer",
    "destinations",
    "duration",
    "customerRequirements",
    "owner",
    "successUrl",
    "failedUrl",
}
ITEM_FIELDS = {"preTaxAmount", "totalAmount", "description", "tax"}
CUSTOMER_FIELDS = {
    "id",
    "firstName",
    "lastName",
    "email",
    "phoneNumber",
    "phoneNumberPrefix",
    "documentType",
    "documentNumber",
    "address",
}
DESTINATION_FIELDS = {"type", "amount", "account", "name", "externalId", "metadata"}
ACCOUNT_FIELDS = {"type", "currency", "accountNumber", "accountHolder"}
OWNER_FIELDS = {"identityId", "name", "lastname", "nickname", "documentNumber", "entityType"}
TAX_FIELDS = {"name", "type", "value", "amount"}
METADATA_FIELDS = {"image", "description", "category"}
ACCOUNT = {
    "type": "CHECKING",
    "currency": "USD",
    "accountNumber": "000000000001",
    "accountHolder": "Merchant Demo",
}


def minimal(**changes: Any) -> dict[str, Any]:
    """The smallest valid request (USD 10.00, no tax), with top-level fields replaced."""
    request: dict[str, Any] = {
        "checkoutToken": "INV-2026-000001",
        "items": [{"preTaxAmount": "10.00", "totalAmount": "10.00", "description": "Seat"}],
        "currency": "USD",
        "paymentMethodsAllowed": ["CARD"],
        "destinations": [{"type": "ACCOUNT", "amount": "10.00", "account": ACCOUNT}],
        "duration": 3600,
        "owner": {"identityId": "idn_example_0001"},
    }
    # A copy: tests change what they are given, and ACCOUNT is shared.
    return copy.deepcopy(request | changes)


def full() -> dict[str, Any]:
    """A request that sets every field the reference documents."""
    return {
        "checkoutToken": "INV-2026-000002",
        "items": [
            {
                "preTaxAmount": "10000",
                "totalAmount": "11900",
                "description": "Plan mensual Pro",
                "tax": {"name": "IVA", "type": "PERCENTAGE", "value": "19", "amount": "1900"},
            },
            {"preTaxAmount": "5000", "totalAmount": "5000", "description": "Soporte"},
        ],
        "currency": "CLP",
        "paymentMethodsAllowed": ["CARD", "WEBPAY"],
        "customer": {
            "id": "cus_1",
            "firstName": "Ana",
            "lastName": "Pérez",
            "email": "ana@example.com",
            "phoneNumber": "912345678",
            "phoneNumberPrefix": "+56",
            "documentType": "RUT",
            "documentNumber": "11111111-1",
            "address": {"city": "Santiago"},
        },
        "destinations": [
            {
                "type": "ACCOUNT",
                "amount": "1000",
                "account": {
                    "type": "CHECKING",
                    "currency": "CLP",
                    "accountNumber": "000000000001",
                    "accountHolder": "Marketplace Demo",
                },
                "name": "fee",
                "externalId": "INV-2026-000002-D1",
                "metadata": {
                    "image": "https://billing.example.com/logo.png",
                    "description": "Marketplace fee",
                    "category": "fee",
                },
            },
            {"type": "ACCOUNT", "amount": "15900", "account": ACCOUNT | {"currency": "CLP"}},
        ],
        "duration": 86400,
        "customerRequirements": ["firstName", "email"],
        "owner": {
            "identityId": "idn_example_0001",
            "name": "Ferretería",
            "lastname": "Ejemplo",
            "nickname": "ferre",
            "documentNumber": "76000000-0",
            "entityType": "COMPANY",
        },
        "successUrl": "https://billing.example.com/paid",
        "failedUrl": "https://billing.example.com/retry",
    }


def with_amount(amount: Any, currency: str = "USD") -> dict[str, Any]:
    """A one-item, one-destination request whose every amount is `amount`."""
    return minimal(
        currency=currency,
        items=[{"preTaxAmount": amount, "totalAmount": amount, "description": "Seat"}],
        destinations=[{"type": "ACCOUNT", "amount": amount, "account": ACCOUNT}],
    )


def error_of(data: dict[str, Any]) -> str:
    """Why the producer refuses `data`, as it reports it for a request given in Python and
    for the same request as a line of a file: both entries must refuse it alike."""
    _, from_python = checked(1, data)
    [(_, from_file)] = read_json_lines([json.dumps(data)])
    assert isinstance(from_python, str), f"the Python API accepted {data}"
    assert from_file == from_python, "a file line and a Python object are judged differently"
    # Intake's check without models must refuse it too, or a file could let it through.
    assert not wire.valid({"duration": DEFAULT_DURATION} | json.loads(json.dumps(data)))
    return from_python


def sent(data: dict[str, Any]) -> dict[str, Any]:
    """The body the producer would store and send for `data`, which must be valid."""
    [(_, from_file)] = read_json_lines([json.dumps(data)])
    assert isinstance(from_file, Accepted), from_file
    assert checked(1, data) == (1, from_file)
    assert wire.valid({"duration": DEFAULT_DURATION} | json.loads(json.dumps(data)))
    body: dict[str, Any] = json.loads(from_file.body)
    return body


def test_minimal_and_full_requests_are_valid() -> None:
    assert parse(minimal()).checkout_token == "INV-2026-000001"
    assert parse(full()).total_amount() == 16900
    assert sent(minimal()) == minimal()
    assert sent(full()) == full()


def test_snake_case_names_are_refused_by_name() -> None:
    # pydantic would take them (populate_by_name), but the API only knows camelCase: a body
    # sent with them would be refused, or its fields ignored, by the API.
    request = minimal()
    request["checkout_token"] = request.pop("checkoutToken")
    request["payment_methods_allowed"] = request.pop("paymentMethodsAllowed")
    error = error_of(request)
    assert "checkout_token: unknown field" in error
    assert "payment_methods_allowed: unknown field" in error
    assert "checkoutToken: Field required" in error


# Amounts


@pytest.mark.parametrize("amount", ["0", "7", "1500", "12.50", "0.99", "10.1"])
def test_plain_decimal_strings_are_amounts(amount: str) -> None:
    body = sent(with_amount(amount))
    # Sent as the same string: no rounding, no padding to the currency's decimals.
    assert body["items"][0]["preTaxAmount"] == amount
    assert body["destinations"][0]["amount"] == amount


@pytest.mark.parametrize(
    ("amount", "why"),
    [
        (1000.5, "a JSON float loses cents"),
        (1000, "a JSON integer is not a string"),
        ("1e3", "exponent"),
        ("NaN", "not a number"),
        ("Infinity", "not a number"),
        ("-5", "negative"),
        ("+5", "signed"),
        (" 5", "leading space"),
        ("5 ", "trailing space"),
        ("01", "leading zero"),
        ("", "empty"),
        ("1,000", "thousands separator"),
        ("10,50", "decimal comma"),
        (".5", "no integer part"),
        ("5.", "no fraction digits"),
        (None, "null"),
    ],
)
def test_other_amounts_are_rejected(amount: Any, why: str) -> None:
    assert "items[0].preTaxAmount" in error_of(with_amount(amount)), why


@pytest.mark.parametrize("amount", ["1e3", "-5", "5\n", "01", "1234567890123456789"])
def test_a_malformed_amount_is_explained_with_its_value(amount: str) -> None:
    error = error_of(with_amount(amount))
    assert "items[0].preTaxAmount: must be a non-negative decimal string" in error
    assert f"got {amount!r}" in error


@pytest.mark.parametrize(
    ("request_data", "field"),
    [
        (
            minimal(
                items=[
                    {
                        "preTaxAmount": "10.00",
                        "totalAmount": "11.00",
                        "description": "Seat",
                        "tax": {"name": "VAT", "type": "FIXED", "value": "1", "amount": 1.0},
                    }
                ],
                destinations=[{"type": "ACCOUNT", "amount": "11.00", "account": ACCOUNT}],
            ),
            "items[0].tax.amount",
        ),
        (
            minimal(destinations=[{"type": "ACCOUNT", "amount": 10, "account": ACCOUNT}]),
            "destinations[0].amount",
        ),
    ],
)
def test_tax_and_destination_amounts_are_decimal_strings_too(
    request_data: dict[str, Any], field: str
) -> None:
    assert f"{field}: Input should be a valid string" in error_of(request_data)


# Item totals


def item(pre_tax: str, total: str, tax: str | None = None) -> dict[str, Any]:
    line: dict[str, Any] = {"preTaxAmount": pre_tax, "totalAmount": total, "description": "Seat"}
    if tax is not None:
        line["tax"] = {"name": "VAT", "type": "FIXED", "value": tax, "amount": tax}
    return line


@pytest.mark.parametrize(
    "line",
    [
        item("100.00", "119.00", tax="19.00"),
        item("100.00", "100.00"),
        item("100.00", "100.00", tax="0"),
        item("100", "119.00", tax="19"),  # equal as numbers; the decimals need not match
    ],
)
def test_total_is_pre_tax_plus_tax(line: dict[str, Any]) -> None:
    total = line["totalAmount"]
    body = sent(
        minimal(
            items=[line], destinations=[{"type": "ACCOUNT", "amount": total, "account": ACCOUNT}]
        )
    )
    assert body["items"] == [line]


@pytest.mark.parametrize(
    "line",
    [
        item("100.00", "119.01", tax="19.00"),
        item("100.00", "100.00", tax="19.00"),
        item("100.00", "119.00"),
        item("100.00", "99.99"),
    ],
)
def test_total_other_than_pre_tax_plus_tax_is_rejected(line: dict[str, Any]) -> None:
    total = line["totalAmount"]
    message = error_of(
        minimal(
            items=[line], destinations=[{"type": "ACCOUNT", "amount": total, "account": ACCOUNT}]
        )
    )
    assert message.startswith("items[0]: totalAmount")
    assert "preTaxAmount plus tax.amount" in message


@pytest.mark.parametrize("field", sorted(TAX_FIELDS))
def test_a_tax_needs_all_four_fields(field: str) -> None:
    line = item("100.00", "119.00", tax="19.00")
    del line["tax"][field]
    request = minimal(
        items=[line], destinations=[{"type": "ACCOUNT", "amount": "119.00", "account": ACCOUNT}]
    )
    assert f"items[0].tax.{field}: Field required" in error_of(request)


@pytest.mark.parametrize(
    ("changes", "field"), [({"type": "fixed"}, "type"), ({"rate": "19"}, "rate")]
)
def test_a_tax_type_is_fixed_or_percentage_and_no_other_field_is_taken(
    changes: dict[str, str], field: str
) -> None:
    line = item("100.00", "119.00", tax="19.00")
    line["tax"] |= changes
    request = minimal(
        items=[line], destinations=[{"type": "ACCOUNT", "amount": "119.00", "account": ACCOUNT}]
    )
    assert f"items[0].tax.{field}: " in error_of(request)


# Currencies and their decimals


PROVIDER_CURRENCIES = [
    "CLP", "MXN", "COP", "PEN", "BOB", "PYG", "AUD", "ARS", "BRL", "USD", "CAD", "EUR", "GBP",
    "USDC", "USDT",
]  # fmt: skip


def test_the_decimals_table_covers_exactly_the_providers_currencies() -> None:
    assert list(get_args(Currency)) == PROVIDER_CURRENCIES
    assert list(DECIMALS) == PROVIDER_CURRENCIES


@pytest.mark.parametrize("currency", PROVIDER_CURRENCIES)
def test_the_providers_currencies_are_accepted(currency: str) -> None:
    assert sent(with_amount("10", currency))["currency"] == currency


@pytest.mark.parametrize(
    ("currency", "why"),
    [
        ("ZZZ", "not a currency"),
        ("JPY", "ISO 4217, but not one the provider takes"),
        ("CLF", "ISO 4217, but not one the provider takes"),
        ("usd", "lower case"),
        ("US", "too short"),
        ("USDD", "too long"),
        ("", "empty"),
        (840, "numeric code"),
    ],
)
def test_other_currencies_are_rejected(currency: Any, why: str) -> None:
    error = error_of(with_amount("10", currency))
    assert error.startswith("currency: Input should be 'CLP'"), why
    assert f"got {currency!r}" in error


@pytest.mark.parametrize(
    ("currency", "amount"),
    [
        ("CLP", "1000"),
        ("PYG", "15000"),
        ("USD", "10.12"),
        ("USD", "10.1"),
        ("USD", "10"),
        ("COP", "15990.50"),
        ("USDC", "1.234567"),
        ("USDT", "0.000001"),
    ],
)
def test_amounts_within_the_currency_decimals_are_accepted(currency: str, amount: str) -> None:
    body = sent(with_amount(amount, currency))
    assert (body["currency"], body["items"][0]["totalAmount"]) == (currency, amount)


@pytest.mark.parametrize(
    ("currency", "amount", "allowed"),
    [
        ("CLP", "1000.5", 0),
        ("CLP", "1000.0", 0),
        ("PYG", "100.5", 0),
        ("USD", "10.123", 2),
        ("EUR", "10.123", 2),
        ("USDC", "1.2345678", 6),
    ],
)
def test_amounts_beyond_the_currency_decimals_are_rejected(
    currency: str, amount: str, allowed: int
) -> None:
    message = error_of(with_amount(amount, currency))
    assert f"items[0].preTaxAmount {amount}" in message
    assert f"{currency} allows {allowed}" in message


def test_destination_amounts_obey_the_currency_decimals() -> None:
    request = with_amount("1000", "CLP")
    request["destinations"] = [
        {"type": "ACCOUNT", "amount": "999.5", "account": ACCOUNT},
        {"type": "ACCOUNT", "amount": "0.5", "account": ACCOUNT},
    ]
    assert "destinations[0].amount 999.5 has 1 decimals; CLP allows 0" in error_of(request)


# Required fields and non-empty lists


@pytest.mark.parametrize("field", ["items", "paymentMethodsAllowed", "destinations"])
def test_lists_must_not_be_empty(field: str) -> None:
    assert error_of(minimal(**{field: []})).startswith(f"{field}: List should have at least 1")


def test_payment_methods_must_not_be_blank() -> None:
    assert error_of(minimal(paymentMethodsAllowed=[""])).startswith("paymentMethodsAllowed[0]: ")


@pytest.mark.parametrize(
    "field",
    ["checkoutToken", "items", "currency", "paymentMethodsAllowed", "destinations", "owner"],
)
def test_required_fields(field: str) -> None:
    request = minimal()
    del request[field]
    assert f"{field}: Field required" in error_of(request)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"checkoutToken": ""}, "checkoutToken"),
        ({"checkoutToken": None}, "checkoutToken"),
        ({"checkoutToken": 123}, "checkoutToken"),
        ({"checkoutToken": "T" * 256}, "checkoutToken"),
        ({"owner": {}}, "owner.identityId"),
        ({"owner": {"identityId": ""}}, "owner.identityId"),
        ({"owner": {"name": "Ferretería"}}, "owner.identityId"),
    ],
)
def test_checkout_token_and_owner_identity_are_required(
    changes: dict[str, Any], field: str
) -> None:
    assert error_of(minimal(**changes)).startswith(f"{field}: ")


@pytest.mark.parametrize("duration", [29, 0, -1, "86400", 1.5, True, None])
def test_duration_is_an_integer_of_at_least_30_seconds(duration: Any) -> None:
    assert error_of(minimal(duration=duration)).startswith("duration: ")


def test_a_request_without_duration_is_sent_with_the_default() -> None:
    request = minimal()
    del request["duration"]
    assert sent(request)["duration"] == DEFAULT_DURATION
    [(_, accepted)] = read_json_lines([json.dumps(request)], default_duration=600)
    assert isinstance(accepted, Accepted)
    assert json.loads(accepted.body)["duration"] == 600
    _, from_python = checked(1, request, default_duration=600)
    assert from_python == accepted
    assert "duration" not in request  # the caller's dict is left alone


def test_the_duration_is_required_by_the_model_itself() -> None:
    request = minimal()
    del request["duration"]
    with pytest.raises(ValidationError, match="duration"):
        CheckoutRequest.model_validate(request)


@pytest.mark.parametrize("token", ["INV-2026-000001", "a", "A.b_c~d-9", "T" * 128])
def test_checkout_tokens_of_url_safe_characters_are_accepted(token: str) -> None:
    assert sent(minimal(checkoutToken=token))["checkoutToken"] == token


@pytest.mark.parametrize(
    "token", ["INV 1", "INV/1", "INV?1", "INV#1", "INV%201", "Factura Nº7", "T" * 129, "a\n"]
)
def test_checkout_tokens_a_url_path_cannot_carry_as_is_are_rejected(token: str) -> None:
    error = error_of(minimal(checkoutToken=token))
    assert error == f"checkoutToken: {TOKEN_RULE}, got {token!r}"


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (["paymentMethodsAllowed", 0], "BANK_TRANSFER"),
        (["customerRequirements", 0], "phone"),
        (["customer", "documentType"], "ID"),
        (["destinations", 0, "account", "type"], "CURRENT"),
        (["destinations", 0, "account", "currency"], "JPY"),
        (["destinations", 0, "type"], "WALLET"),
    ],
)
def test_values_outside_the_published_lists_are_rejected(path: list[Any], value: str) -> None:
    request = minimal(customer={"documentType": "RUT"}, customerRequirements=["email"])
    target: Any = request
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    error = error_of(request)
    assert error.startswith(f"{where}: Input should be "), error
    assert error.endswith(f"got {value!r}")


@pytest.mark.parametrize("document_type", ["PASSPORT", "RUT", "CUIT", "CC", "SSN"])
def test_document_types_of_the_list_and_of_the_examples_are_accepted(document_type: str) -> None:
    assert sent(minimal(customer={"documentType": document_type}))["customer"] == {
        "documentType": document_type
    }


@pytest.mark.parametrize("field", sorted(ACCOUNT_FIELDS))
def test_an_account_needs_all_four_fields(field: str) -> None:
    account = dict(ACCOUNT)
    del account[field]
    request = minimal(destinations=[{"type": "ACCOUNT", "amount": "10.00", "account": account}])
    assert f"destinations[0].account.{field}: Field required" in error_of(request)


@pytest.mark.parametrize("field", sorted(METADATA_FIELDS))
def test_metadata_needs_all_three_fields(field: str) -> None:
    metadata = {"image": "https://x.example/i.png", "description": "fee", "category": "fee"}
    del metadata[field]
    destination = {"type": "ACCOUNT", "amount": "10.00", "account": ACCOUNT, "metadata": metadata}
    request = minimal(destinations=[destination])
    assert f"destinations[0].metadata.{field}: Field required" in error_of(request)


def test_the_failed_url_is_taken_under_its_published_name() -> None:
    assert sent(minimal(failedUrl="https://x.example/f"))["failedUrl"] == "https://x.example/f"
    assert error_of(minimal(failureUrl="https://x.example/f")) == "failureUrl: unknown field"


# Destinations


def test_destinations_adding_up_to_the_items_total_are_accepted() -> None:
    request = full()
    assert sum(int(d["amount"]) for d in request["destinations"]) == 16900
    assert sent(request)["destinations"] == request["destinations"]


@pytest.mark.parametrize(("fee", "seller"), [("1000", "15899"), ("1000", "15901"), ("0", "0")])
def test_destinations_not_adding_up_are_rejected(fee: str, seller: str) -> None:
    request = full()
    request["destinations"][0]["amount"] = fee
    request["destinations"][1]["amount"] = seller
    total = int(fee) + int(seller)
    assert error_of(request) == (
        f"destinations add up to {total} but the items' totalAmount is 16900"
    )


# Sums are taken in Decimal's default context of 28 digits. Amounts of at most 18 integer
# digits (with a currency's at most 6 decimals, 24 digits) keep every sum a request can carry
# exact; a larger amount could make a sum round, and a total that is off look right.
LARGEST = "9" * 18
TOO_LARGE = "1" + "0" * 18  # 19 digits: the smallest amount past the rule


@pytest.mark.parametrize(
    ("field", "request_data"),
    [
        ("items[0].preTaxAmount", with_amount(TOO_LARGE, "CLP")),
        ("items[0].tax.amount", minimal(currency="CLP", items=[item("1", TOO_LARGE, TOO_LARGE)])),
        (
            "destinations[0].amount",
            minimal(
                currency="CLP",
                items=[item("1", "1")],
                destinations=[{"type": "ACCOUNT", "amount": TOO_LARGE, "account": ACCOUNT}],
            ),
        ),
    ],
)
def test_amounts_too_large_to_sum_exactly_are_rejected(
    field: str, request_data: dict[str, Any]
) -> None:
    assert f"{field}: {AMOUNT_RULE}, got {TOO_LARGE!r}" in error_of(request_data)


def test_the_largest_amounts_allowed_still_sum_exactly() -> None:
    # A hundred items at the largest amount with the most decimals any currency allows sum
    # to 26 digits: one millionth off must still show.
    amount = f"{LARGEST}.999999"
    items = [item(amount, amount)] * 100
    total = Decimal(amount) * 100
    exact = [{"type": "ACCOUNT", "amount": amount, "account": ACCOUNT}] * 100
    assert sent(minimal(currency="USDC", items=items, destinations=exact))["items"] == items
    short = [*exact[:-1], {"type": "ACCOUNT", "amount": f"{LARGEST}.999998", "account": ACCOUNT}]
    destined = total - Decimal("0.000001")
    assert error_of(minimal(currency="USDC", items=items, destinations=short)) == (
        f"destinations add up to {destined} but the items' totalAmount is {total}"
    )


# Intake's check without models (jobs/wire.py)


def test_the_wire_check_refuses_a_schema_with_a_validator_it_would_skip() -> None:
    class Seat(BaseModel):
        row: int

        @field_validator("row")
        @classmethod
        def _front_rows_only(cls, row: int) -> int:
            return row

    with pytest.raises(TypeError, match="function-after"):
        wire._without_models(Seat.__pydantic_core_schema__)


def test_the_wire_check_keeps_the_models_constraints() -> None:
    # Each model a typed dict under its wire names, with nothing else of the model lost.
    assert wire.valid(minimal(duration=DEFAULT_DURATION))
    assert not wire.valid(minimal(duration=DEFAULT_DURATION, checkoutToken="INV 1"))
    assert not wire.valid(minimal(duration=DEFAULT_DURATION, owner={"identity_id": "idn_1"}))
    assert not wire.valid(minimal(duration=DEFAULT_DURATION, owner={}))
    assert not wire.valid(minimal(duration=29))


# Unknown fields


@pytest.mark.parametrize(
    ("path", "misspelled"),
    [
        ([], "checkoutTokn"),
        ([], "sucessUrl"),
        (["items", 0], "totalAmmount"),
        (["customer"], "mail"),
        (["destinations", 0], "ammount"),
        (["owner"], "identity_Id"),
    ],
)
def test_a_misspelled_field_is_rejected_by_name(path: list[Any], misspelled: str) -> None:
    request = minimal(customer={"email": "ana@example.com"})
    target = request
    for step in path:
        target = target[step]
    target[misspelled] = "x"
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in [*path, misspelled])
    assert f"{where.lstrip('.')}: unknown field" in error_of(request)


def test_a_misspelled_checkout_token_names_both_fields() -> None:
    request = minimal()
    request["checkoutTokn"] = request.pop("checkoutToken")
    assert error_of(request) == "checkoutToken: Field required; checkoutTokn: unknown field"


# wire() and personal_data()


def test_wire_round_trips_every_reference_field() -> None:
    body = parse(full()).wire()
    assert body == full()
    assert set(body) == REQUEST_FIELDS
    assert set(body["items"][0]) == ITEM_FIELDS
    assert set(body["customer"]) == CUSTOMER_FIELDS
    assert set(body["destinations"][0]) == DESTINATION_FIELDS
    assert set(body["destinations"][0]["account"]) == ACCOUNT_FIELDS
    assert set(body["owner"]) == OWNER_FIELDS
    assert set(body["items"][0]["tax"]) == TAX_FIELDS
    assert set(body["destinations"][0]["metadata"]) == METADATA_FIELDS


def test_wire_keeps_only_the_fields_given() -> None:
    body = parse(minimal()).wire()
    assert body == minimal()
    assert "customer" not in body
    assert "tax" not in body["items"][0]


def test_wire_keeps_an_explicit_null() -> None:
    body = parse(minimal(customer=None)).wire()
    assert body["customer"] is None


def test_wire_is_camel_case_when_built_in_python() -> None:
    request = parse(minimal())
    rebuilt = CheckoutRequest(
        checkout_token=request.checkout_token,
        items=request.items,
        currency=request.currency,
        payment_methods_allowed=request.payment_methods_allowed,
        destinations=request.destinations,
        duration=request.duration,
        owner=request.owner,
        success_url="https://billing.example.com/paid",
    )
    assert rebuilt.wire() == minimal(successUrl="https://billing.example.com/paid")


def test_personal_data_lists_contact_and_document_numbers() -> None:
    body = parse(full()).wire()
    assert set(personal_data(body)) == {
        "ana@example.com",
        "912345678",
        "11111111-1",
        "76000000-0",
    }


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (minimal(), []),
        (minimal(customer=None), []),
        (minimal(customer={"email": "ana@example.com", "firstName": "Ana"}), ["ana@example.com"]),
        (minimal(customer={"email": "", "phoneNumber": "912345678"}), ["912345678"]),
    ],
)
def test_personal_data_skips_what_is_not_given(body: dict[str, Any], expected: list[str]) -> None:
    assert personal_data(body) == expected


# The JSON Schema for producers that are not Python


def test_the_schema_is_the_published_one_by_wire_names_with_the_default_duration() -> None:
    schema = request_schema(600)
    assert set(schema["properties"]) == REQUEST_FIELDS
    assert set(schema["required"]) == {
        "checkoutToken",
        "items",
        "currency",
        "paymentMethodsAllowed",
        "destinations",
        "owner",
    }
    assert schema["properties"]["duration"] | {"default": 600} == {
        "type": "integer",
        "minimum": 30,
        "default": 600,
        "title": "Duration",
    }
    assert schema["properties"]["checkoutToken"]["pattern"] == TOKEN_PATTERN
    assert schema["properties"]["currency"]["enum"] == PROVIDER_CURRENCIES
    definitions = schema["$defs"]
    assert set(definitions["Tax"]["required"]) == TAX_FIELDS
    assert set(definitions["Account"]["required"]) == ACCOUNT_FIELDS
    assert set(definitions["Metadata"]["required"]) == METADATA_FIELDS
    assert all(d["additionalProperties"] is False for d in definitions.values())


# Idempotency key


def test_idempotency_key_never_changes() -> None:
    # The documented contract: a token re-sent under another key could pay twice.
    assert idempotency_key("INV-2026-000001") == "165a0d21-20c8-5b6a-a068-90de45b01cc2"
    assert idempotency_key("INV-2026-000001") == idempotency_key("INV-2026-000001")


def test_idempotency_keys_differ_per_token() -> None:
    tokens = [f"INV-2026-{n:06d}" for n in range(1, 1001)] + ["inv-2026-000001", " INV"]
    assert len({idempotency_key(t) for t in tokens}) == len(tokens)


def test_idempotency_key_is_uuid5_of_the_token_in_the_namespace() -> None:
    # The key is formatted by hand for speed; the standard library is the reference.
    tokens = [f"T{n}-{chr(0x61 + n % 26) * (n % 40)}" for n in range(2000)] + ["Nº ñ 支払 🧾", ""]
    for token in tokens:
        assert idempotency_key(token) == str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, token)), token


@pytest.mark.parametrize("token", ["INV-2026-000001", "x", "Factura Nº 7 ñ"])
def test_idempotency_key_is_a_uuid(token: str) -> None:
    key = idempotency_key(token)
    assert str(uuid.UUID(key)) == key
    assert uuid.UUID(key).version == 5


# Example files


def test_bad_examples_are_reported_by_line_and_field() -> None:
    with (EXAMPLES / "bad-checkouts.jsonl").open("rb") as lines:
        results = dict(read_json_lines(lines))
    errors = {n: r for n, r in results.items() if isinstance(r, str)}
    parsed = {n: r.checkout_token for n, r in results.items() if isinstance(r, Accepted)}
    assert parsed == {1: "INV-2026-900001", 6: "INV-2026-900006", 11: "INV-2026-900011"}
    expected = {
        2: "invalid JSON",
        3: "owner: Field required",
        4: "items[0]: totalAmount 12000",
        5: "currency: Input should be 'CLP'",
        7: "items[0].preTaxAmount 1000.5 has 1 decimals; CLP allows 0",
        8: "items[0].preTaxAmount: Input should be a valid string",
        9: "checkoutTokn: unknown field",
        10: "destinations add up to 47500.00",
    }
    assert set(errors) == set(expected)
    for number, fragment in expected.items():
        assert fragment in errors[number], f"line {number}: {errors[number]}"


def example_lines() -> list[str]:
    return (EXAMPLES / "checkouts.jsonl").read_text(encoding="utf-8").splitlines()


def test_a_file_line_and_the_same_request_as_a_model_give_the_same_body() -> None:
    # Files skip the model dump; the Python API dumps. Both must store the same bytes, or a
    # token enqueued both ways would be taken for a reused token.
    lines = [*example_lines(), json.dumps(full()), json.dumps(minimal(customer=None))]
    for number, accepted in read_json_lines(lines):
        assert isinstance(accepted, Accepted), accepted
        from_model = accept(parse(json.loads(lines[number - 1])))
        assert accepted == from_model, f"line {number}"
        assert json.loads(accepted.body) == json.loads(lines[number - 1])


def test_every_example_is_valid_and_sent_as_written() -> None:
    for number, line in enumerate(example_lines(), start=1):
        data = json.loads(line)
        # Validation must neither drop nor rename anything the file says.
        assert parse(data).wire() == data, f"line {number}"


def test_examples_are_many_unique_and_varied() -> None:
    requests = [CheckoutRequest.model_validate_json(line) for line in example_lines()]
    assert len(requests) >= 200
    tokens = [r.checkout_token for r in requests]
    assert len(set(tokens)) == len(tokens)
    currencies = {r.currency for r in requests}
    assert "CLP" in currencies
    assert len(currencies) >= 4
    assert any(item.tax for r in requests for item in r.items)
    assert any(len(r.destinations) > 1 for r in requests)


def test_examples_file_is_what_the_generator_writes() -> None:
    # examples/ is not a package; load the script by path so a stale file is caught.
    spec = importlib.util.spec_from_file_location("generate", EXAMPLES / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    assert [json.loads(line) for line in example_lines()] == generate.generate()


def test_a_number_json_cannot_carry_is_a_rejection_not_a_crash() -> None:
    # orjson writes integers of at most 64 bits; such a request must be refused by its line.
    template = {**minimal(), "checkoutToken": "{token}", "duration": "{minutes:int}"}
    rows = b"token,minutes\nA-1,60\nA-2,99999999999999999999\nA-3,30\n"
    results = dict(read_csv(io.BytesIO(rows), template))
    assert [results[n].checkout_token for n in (2, 4)] == ["A-1", "A-3"]  # type: ignore[union-attr]
    assert results[3] == "cannot be sent as JSON: Integer exceeds 64-bit range"
    position, error = checked(1, minimal(customer={"address": {"n": 2**64}}))
    assert (position, error) == (1, "cannot be sent as JSON: Integer exceeds 64-bit range")


def test_every_item_whose_total_is_off_is_named() -> None:
    request = minimal(
        items=[item("1.00", "2.00"), item("1.00", "1.00"), item("3.00", "4.00")],
        destinations=[{"type": "ACCOUNT", "amount": "7.00", "account": ACCOUNT}],
    )
    error = error_of(request)
    assert "items[0]: totalAmount 2.00 must equal" in error
    assert "items[2]: totalAmount 4.00 must equal" in error
    assert "items[1]" not in error
