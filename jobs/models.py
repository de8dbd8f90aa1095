"""Checkout request and checkout session models, with the Conomy reference's wire names."""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from functools import cache
from typing import Annotated, Any, Literal

import iso4217
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    StringConstraints,
    model_validator,
)
from pydantic.alias_generators import to_camel

# A plain decimal string: no sign, exponent, NaN, spaces or leading zeros. At most 18 integer
# digits, so sums stay exact in Decimal's default 28-digit context. pydantic-core's own regex
# engine checks it: a Python validator per amount cost a tenth of a request's validation.
AMOUNT_PATTERN = r"^(0|[1-9][0-9]{0,17})(\.[0-9]{1,8})?$"
AMOUNT_RULE = (
    "must be a non-negative decimal string such as '1500' or '12.50' "
    "(at most 18 digits before the point)"
)


def _currency_code(value: str) -> str:
    if minor_units(value) is None:
        raise ValueError(f"{value!r} is not an ISO 4217 currency code with minor units")
    return value


@cache
def minor_units(currency: str) -> int | None:
    """Decimals ISO 4217 allows for `currency`, or None when it is not a payable currency."""
    if not re.fullmatch(r"[A-Z]{3}", currency):
        return None
    try:
        exponent = iso4217.Currency(currency).exponent
    except ValueError:
        return None
    return exponent if isinstance(exponent, int) else None


def decimals(amount: str) -> int:
    point = amount.find(".")
    return 0 if point < 0 else len(amount) - point - 1


Amount = Annotated[str, StringConstraints(strict=True, pattern=AMOUNT_PATTERN)]
CurrencyCode = Annotated[StrictStr, AfterValidator(_currency_code)]
Text = Annotated[StrictStr, Field(min_length=1)]


class _Wire(BaseModel):
    """Fields are snake_case in Python and camelCase on the wire; unknown fields are errors."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )


class Tax(_Wire):
    # The reference documents only `amount`; other provider fields pass through untouched.
    model_config = ConfigDict(extra="allow")

    amount: Amount


class Item(_Wire):
    pre_tax_amount: Amount
    total_amount: Amount
    description: Text
    tax: Tax | None = None


class Customer(_Wire):
    id: StrictStr | None = None
    first_name: StrictStr | None = None
    last_name: StrictStr | None = None
    email: StrictStr | None = None
    phone_number: StrictStr | None = None
    phone_number_prefix: StrictStr | None = None
    document_type: StrictStr | None = None
    document_number: StrictStr | None = None
    address: dict[str, Any] | None = None


class Account(_Wire):
    type: StrictStr | None = None
    currency: StrictStr | None = None
    account_number: StrictStr | None = None
    account_holder: StrictStr | None = None


class Destination(_Wire):
    type: Literal["ACCOUNT"]
    amount: Amount
    account: Account
    name: StrictStr | None = None
    external_id: StrictStr | None = None
    metadata: dict[str, Any] | None = None


class Identity(_Wire):
    identity_id: Text
    name: StrictStr | None = None
    lastname: StrictStr | None = None
    nickname: StrictStr | None = None
    document_number: StrictStr | None = None
    entity_type: StrictStr | None = None


class CheckoutRequest(_Wire):
    """The body of `POST /checkout-sessions`, checked as a careful client does before calling."""

    checkout_token: Annotated[StrictStr, Field(min_length=1, max_length=255)]
    items: Annotated[list[Item], Field(min_length=1)]
    currency: CurrencyCode
    payment_methods_allowed: Annotated[list[Text], Field(min_length=1)]
    customer: Customer | None = None
    destinations: Annotated[list[Destination], Field(min_length=1)]
    duration: Annotated[StrictInt, Field(gt=0)] | None = None
    customer_requirements: list[Text] | None = None
    owner: Identity
    success_url: Text | None = None
    # The reference does not name the failure url field; `failureUrl` is its likely name.
    failure_url: Text | None = None

    # One validator for every sum, run once per request: a validator per item cost more than
    # the checks themselves. The message names the item, as an item's own validator would.
    @model_validator(mode="after")
    def _amounts_add_up_and_fit_currency(self) -> CheckoutRequest:
        total = Decimal(0)
        # Every amount with where it is; the path is only formatted for an error message.
        amounts: list[tuple[tuple[str, int, str], str]] = []
        wrong = []  # every item whose total is off, not just the first
        for i, item in enumerate(self.items):
            expected = Decimal(item.pre_tax_amount)
            amounts.append((("items", i, "preTaxAmount"), item.pre_tax_amount))
            amounts.append((("items", i, "totalAmount"), item.total_amount))
            if item.tax:
                expected += Decimal(item.tax.amount)
                amounts.append((("items", i, "tax.amount"), item.tax.amount))
            if Decimal(item.total_amount) != expected:
                wrong.append(
                    f"items[{i}]: totalAmount {item.total_amount} must equal preTaxAmount plus "
                    f"tax.amount ({expected})"
                )
            total += expected
        if wrong:
            raise ValueError("; ".join(wrong))
        destined = Decimal(0)
        for i, destination in enumerate(self.destinations):
            destined += Decimal(destination.amount)
            amounts.append((("destinations", i, "amount"), destination.amount))
        allowed = minor_units(self.currency) or 0
        for (section, index, name), amount in amounts:
            if decimals(amount) > allowed:
                raise ValueError(
                    f"{section}[{index}].{name} {amount} has {decimals(amount)} decimals; "
                    f"{self.currency} allows {allowed}"
                )
        if destined != total:
            raise ValueError(
                f"destinations add up to {destined} but the items' totalAmount is {total}"
            )
        return self

    def total_amount(self) -> Decimal:
        return sum((Decimal(item.total_amount) for item in self.items), Decimal(0))

    def wire(self) -> dict[str, Any]:
        """The JSON body to send: reference field names, only the fields the producer gave."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


def personal_data(body: Mapping[str, Any]) -> list[str]:
    """Values in a request body that must never reach a log line."""
    customer = body.get("customer") or {}
    owner = body.get("owner") or {}
    values = [
        customer.get("email"),
        customer.get("phoneNumber"),
        customer.get("documentNumber"),
        owner.get("documentNumber"),
    ]
    return [v for v in values if isinstance(v, str) and v]


class CheckoutSession(BaseModel):
    """A created checkout session as the API answers it.

    Parsed leniently: the session exists once the API says so, so only `id` is required, and
    fields the provider adds later are ignored rather than turned into a failure.
    """

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    id: Text
    payment_link_id: str | None = None
    checkout_token: str | None = None
    status: str | None = None
    url: str | None = None
    created_at: str | None = None
    expires_at: str | None = None
    currency: str | None = None
    pre_tax_amount: str | None = None
    total_amount: str | None = None
