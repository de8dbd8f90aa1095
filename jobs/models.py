"""Checkout request and checkout session models, with the Conomy reference's wire names."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
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
# The API carries the token in a URL path (/checkout-sessions/token/{checkoutToken}/refresh):
# only URL-unreserved characters (RFC 3986), which no client or proxy escapes or rewrites.
TOKEN_PATTERN = r"^[A-Za-z0-9._~-]{1,128}$"
TOKEN_RULE = "must be 1 to 128 of the characters A-Z a-z 0-9 . _ ~ -"
# The published schema requires `duration`; intake fills this in when a request leaves it out
# (PAYLINKS_DEFAULT_DURATION), so the stored body is the body sent.
DEFAULT_DURATION = 86400
MIN_DURATION = 30

Currency = Literal[
    "CLP", "MXN", "COP", "PEN", "BOB", "PYG", "AUD", "ARS", "BRL", "USD", "CAD", "EUR", "GBP",
    "USDC", "USDT",
]  # fmt: skip
# Decimals an amount may carry, per currency: ISO 4217's minor units for money, and 6 for the
# stablecoins, the smallest unit USDC and USDT have on the chains that issue them.
DECIMALS: dict[str, int] = {
    "CLP": 0, "MXN": 2, "COP": 2, "PEN": 2, "BOB": 2, "PYG": 0, "AUD": 2, "ARS": 2, "BRL": 2,
    "USD": 2, "CAD": 2, "EUR": 2, "GBP": 2, "USDC": 6, "USDT": 6,
}  # fmt: skip
PaymentMethod = Literal[
    "CARD", "CRYPTO", "ACCOUNT", "BANK_ACCOUNT", "PIX", "PCT", "CVU", "ETPAY", "FINTOC", "WEBPAY",
    "SPEI", "PSE", "BANCOLOMBIA", "DAVIVIENDA", "DAVIPLATA", "NEQUI", "BREB", "WOMPI", "LIGO",
    "SIP", "ACH", "WIRE", "FEDNOW", "RTP", "SEPA", "FPE", "SWIFT",
]  # fmt: skip
CustomerRequirement = Literal[
    "firstName", "email", "lastName", "phoneNumber", "phoneNumberPrefix", "address",
    "documentNumber", "documentType",
]  # fmt: skip
# The reference's list, and CC and SSN, which its examples use.
DocumentType = Literal[
    "PASSPORT", "RFC", "CURP", "RUT", "CED_CIU", "CED_EXT", "NIT", "DNI", "CE", "RUC", "CUIL",
    "CUIT", "CC", "SSN",
]  # fmt: skip
AccountType = Literal["CHECKING", "ASSET", "SAVINGS", "ESCROW", "FEE"]


def decimals(amount: str) -> int:
    point = amount.find(".")
    return 0 if point < 0 else len(amount) - point - 1


def amounts_problem(
    currency: str, items: Sequence[tuple[str, str, str | None]], destinations: Sequence[str]
) -> str | None:
    """Why a request's amounts do not add up or have more decimals than its currency allows,
    or None. Items come as (preTaxAmount, totalAmount, tax.amount or None), amounts as the
    decimal strings the schema admits. Messages are only built once a check fails."""
    allowed = DECIMALS[currency]
    # Whether some amount has too many decimals: which one is only looked for to name it.
    # Counted inline, as `decimals` would: a call per amount was a third of this function.
    too_precise = False
    total = Decimal(0)
    wrong = []  # every item whose total is off, not just the first
    for i, (pre_tax, given, tax) in enumerate(items):
        expected = Decimal(pre_tax)
        if tax is not None:
            expected += Decimal(tax)
            too_precise = too_precise or len(tax.partition(".")[2]) > allowed
        if Decimal(given) != expected:
            wrong.append(
                f"items[{i}]: totalAmount {given} must equal preTaxAmount plus "
                f"tax.amount ({expected})"
            )
        too_precise = (
            too_precise
            or len(pre_tax.partition(".")[2]) > allowed
            or len(given.partition(".")[2]) > allowed
        )
        total += expected
    if wrong:
        return "; ".join(wrong)
    destined = Decimal(0)
    for amount in destinations:
        destined += Decimal(amount)
        too_precise = too_precise or len(amount.partition(".")[2]) > allowed
    if too_precise:
        return _too_many_decimals(currency, items, destinations)
    if destined != total:
        return f"destinations add up to {destined} but the items' totalAmount is {total}"
    return None


def _too_many_decimals(
    currency: str, items: Sequence[tuple[str, str, str | None]], destinations: Sequence[str]
) -> str:
    """The first amount, in the order the request lists them, with too many decimals."""
    allowed = DECIMALS[currency]
    named = [
        (f"items[{i}].{name}", amount)
        for i, item in enumerate(items)
        for name, amount in zip(("preTaxAmount", "totalAmount", "tax.amount"), item, strict=True)
        if amount is not None
    ]
    named += [(f"destinations[{i}].amount", amount) for i, amount in enumerate(destinations)]
    where, amount = next((w, a) for w, a in named if decimals(a) > allowed)
    return f"{where} {amount} has {decimals(amount)} decimals; {currency} allows {allowed}"


Amount = Annotated[str, StringConstraints(strict=True, pattern=AMOUNT_PATTERN)]
CheckoutToken = Annotated[str, StringConstraints(strict=True, pattern=TOKEN_PATTERN)]
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
    name: Text
    type: Literal["FIXED", "PERCENTAGE"]
    # The rate or the fixed amount, as the provider's string.
    value: Text
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
    document_type: DocumentType | None = None
    document_number: StrictStr | None = None
    address: dict[str, Any] | None = None


class Account(_Wire):
    type: AccountType
    currency: Currency
    account_number: Text
    account_holder: Text


class Metadata(_Wire):
    image: StrictStr
    description: StrictStr
    category: StrictStr


class Destination(_Wire):
    type: Literal["ACCOUNT"]
    amount: Amount
    account: Account
    name: StrictStr | None = None
    external_id: StrictStr | None = None
    metadata: Metadata | None = None


class Identity(_Wire):
    identity_id: Text
    name: StrictStr | None = None
    lastname: StrictStr | None = None
    nickname: StrictStr | None = None
    document_number: StrictStr | None = None
    entity_type: StrictStr | None = None


class CheckoutRequest(_Wire):
    """The body of `POST /checkout-sessions`, checked against the published schema."""

    checkout_token: CheckoutToken
    items: Annotated[list[Item], Field(min_length=1)]
    currency: Currency
    payment_methods_allowed: Annotated[list[PaymentMethod], Field(min_length=1)]
    customer: Customer | None = None
    destinations: Annotated[list[Destination], Field(min_length=1)]
    duration: Annotated[StrictInt, Field(ge=MIN_DURATION)]
    customer_requirements: list[CustomerRequirement] | None = None
    owner: Identity
    success_url: Text | None = None
    failed_url: Text | None = None

    # One validator for every sum, run once per request: a validator per item cost more than
    # the checks themselves. The rule itself is `amounts_problem`, which intake's wire check
    # (jobs/wire.py) applies to a request that has no model.
    @model_validator(mode="after")
    def _amounts_add_up_and_fit_currency(self) -> CheckoutRequest:
        items = [
            (item.pre_tax_amount, item.total_amount, item.tax.amount if item.tax else None)
            for item in self.items
        ]
        problem = amounts_problem(self.currency, items, [d.amount for d in self.destinations])
        if problem:
            raise ValueError(problem)
        return self

    def total_amount(self) -> Decimal:
        return sum((Decimal(item.total_amount) for item in self.items), Decimal(0))

    def wire(self) -> dict[str, Any]:
        """The JSON body to send: reference field names, only the fields the producer gave."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


def request_schema(default_duration: int = DEFAULT_DURATION) -> dict[str, Any]:
    """The JSON Schema of what intake accepts, by wire names: the request's published schema,
    with `duration` optional because intake fills in `default_duration`."""
    schema = CheckoutRequest.model_json_schema(by_alias=True, mode="validation")
    schema["required"].remove("duration")
    schema["properties"]["duration"]["default"] = default_duration
    return schema


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
