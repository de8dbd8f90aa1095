"""Write examples/checkouts.jsonl: checkout requests from a fictional invoicing system."""

from __future__ import annotations

import argparse
import json
import random
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from paylinks.jobs.models import DECIMALS, CheckoutRequest

HERE = Path(__file__).resolve().parent
SEED = 20260401
COUNT = 240
FIRST_INVOICE = 100

# Weights follow the invoicing system's fictional customer base, mostly Chilean.
CURRENCIES = {"CLP": 30, "MXN": 18, "COP": 15, "USD": 15, "PEN": 11, "ARS": 11}

# Value-added tax per currency's country, as a name and a percentage; USD invoices carry a
# US-style sales tax.
TAXES = {
    "CLP": ("IVA", "19"),
    "MXN": ("IVA", "16"),
    "COP": ("IVA", "19"),
    "PEN": ("IGV", "18"),
    "ARS": ("IVA", "21"),
    "USD": ("Sales tax", "7.25"),
}

# Besides cards, the local way to pay in each currency's country.
LOCAL_METHODS = {
    "CLP": "WEBPAY",
    "MXN": "SPEI",
    "COP": "PSE",
    "PEN": "BANK_ACCOUNT",
    "ARS": "CVU",
    "USD": "ACH",
}

# Unit prices in major units, wide enough to give invoices of plausible size per currency.
PRICE_RANGES = {
    "CLP": (2_990, 189_990),
    "MXN": (149, 8_999),
    "COP": (29_900, 1_499_000),
    "USD": (9, 1_499),
    "PEN": (29, 2_499),
    "ARS": (4_999, 899_999),
}

COUNTRIES = {
    "CLP": ("+56", "RUT"),
    "MXN": ("+52", "RFC"),
    "COP": ("+57", "CC"),
    "PEN": ("+51", "DNI"),
    "ARS": ("+54", "DNI"),
    "USD": ("+1", "PASSPORT"),
}

PRODUCTS_ES = [
    "Plan mensual Pro",
    "Plan anual Empresa",
    "Licencia de usuario adicional",
    "Horas de consultoría",
    "Soporte prioritario",
    "Implementación y capacitación",
    "Almacenamiento extra 100 GB",
    "Módulo de facturación electrónica",
    "Desarrollo a medida",
    "Mantención mensual",
]
PRODUCTS_EN = [
    "Pro plan, monthly",
    "Business plan, yearly",
    "Additional seat",
    "Consulting hours",
    "Priority support",
    "Onboarding and training",
    "Extra storage 100 GB",
    "E-invoicing module",
    "Custom development",
    "Monthly maintenance",
]

FIRST_NAMES = ["Ana", "Bruno", "Camila", "Diego", "Elena", "Felipe", "Gabriela", "Hugo", "Isabel"]
LAST_NAMES = ["Pérez", "González", "Rojas", "Muñoz", "Silva", "Torres", "Castro", "Vargas", "Díaz"]

# A few tenants of the invoicing system, each the owner of its checkouts.
OWNERS = [
    {"identityId": "idn_example_0001", "name": "Ferretería Ejemplo SpA"},
    {"identityId": "idn_example_0002"},
    {"identityId": "idn_example_0003", "name": "Estudio Demo", "entityType": "COMPANY"},
    {"identityId": "idn_example_0004"},
]

DURATIONS = [3_600, 86_400, 259_200, 604_800, 2_592_000]
REQUIREMENTS = [["firstName", "lastName", "email"], ["email"], ["email", "phoneNumber"]]


def quantum(currency: str) -> Decimal:
    return Decimal(1).scaleb(-DECIMALS[currency])


def money(value: Decimal, currency: str) -> str:
    return f"{value.quantize(quantum(currency), rounding=ROUND_HALF_UP):f}"


def unit_price(rng: random.Random, currency: str) -> Decimal:
    low, high = PRICE_RANGES[currency]
    price = Decimal(rng.randint(low, high))
    if currency == "CLP":
        # Chilean prices usually end in 990 or in a round thousand.
        return (price // 1000) * 1000 + rng.choice([0, 990])
    # Colombian pesos have cents in ISO 4217 but prices are quoted in whole pesos.
    if currency != "COP" and rng.random() < 0.5:
        return price + Decimal(rng.choice([50, 90, 99])) / 100
    return price


def items(rng: random.Random, currency: str, taxed: bool) -> list[dict[str, Any]]:
    catalogue = PRODUCTS_EN if currency == "USD" else PRODUCTS_ES
    lines = []
    for product in rng.sample(catalogue, k=rng.choice([1, 1, 2, 2, 3, 4, 5])):
        quantity = rng.choice([1, 1, 1, 2, 3, 5, 10])
        pre_tax = Decimal(money(unit_price(rng, currency) * quantity, currency))
        item: dict[str, Any] = {
            "preTaxAmount": money(pre_tax, currency),
            "totalAmount": money(pre_tax, currency),
            "description": product if quantity == 1 else f"{product} x{quantity}",
        }
        # Some lines of a taxed invoice are exempt, as services abroad often are.
        if taxed and rng.random() < 0.9:
            name, percent = TAXES[currency]
            tax = Decimal(money(pre_tax * Decimal(percent) / 100, currency))
            item["tax"] = {
                "name": name,
                "type": "PERCENTAGE",
                "value": percent,
                "amount": money(tax, currency),
            }
            item["totalAmount"] = money(pre_tax + tax, currency)
        lines.append(item)
    return lines


def customer(rng: random.Random, currency: str, number: int) -> dict[str, Any]:
    prefix, document_type = COUNTRIES[currency]
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    person: dict[str, Any] = {
        "firstName": first,
        "lastName": last,
        "email": f"customer{number:06d}@example.com",
    }
    if rng.random() < 0.8:
        # 555-01xx numbers are reserved for fiction in the US; elsewhere the digits are random.
        if currency == "USD":
            phone = f"202555{rng.randint(100, 199):04d}"
        else:
            phone = "9" + "".join(str(rng.randint(0, 9)) for _ in range(8))
        person |= {"phoneNumber": phone, "phoneNumberPrefix": prefix}
    if rng.random() < 0.7:
        person |= {"documentType": document_type, "documentNumber": document(rng, document_type)}
    return person


def document(rng: random.Random, document_type: str) -> str:
    if document_type == "RUT":
        return f"{rng.randint(5_000_000, 25_999_999)}-{rng.choice('0123456789K')}"
    if document_type == "RFC":
        letters = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(4))
        return f"{letters}{rng.randint(600101, 991231)}XX{rng.randint(0, 9)}"
    if document_type == "PASSPORT":
        return f"X{rng.randint(10_000_000, 99_999_999)}"
    return str(rng.randint(10_000_000, 99_999_999))


def account(rng: random.Random, currency: str, holder: str) -> dict[str, Any]:
    return {
        "type": rng.choice(["CHECKING", "SAVINGS"]),
        "currency": currency,
        "accountNumber": "".join(str(rng.randint(0, 9)) for _ in range(12)),
        "accountHolder": holder,
    }


def destinations(
    rng: random.Random, currency: str, total: Decimal, invoice: str
) -> list[dict[str, Any]]:
    if rng.random() < 0.75:
        return [
            {
                "type": "ACCOUNT",
                "amount": money(total, currency),
                "account": account(rng, currency, "Merchant Demo"),
            }
        ]
    # Marketplace split: the platform keeps a fee, sellers share the rest; the last share takes
    # the rounding remainder so the amounts add up to the total exactly.
    fee = Decimal(money(total * Decimal(rng.choice(["0.05", "0.08", "0.12"])), currency))
    shares = [("Marketplace Demo (fee)", fee)]
    rest = total - fee
    sellers = rng.choice([1, 2])
    if sellers == 2:
        first = Decimal(money(rest * Decimal(rng.choice(["0.4", "0.5", "0.6"])), currency))
        shares += [("Seller A", first), ("Seller B", rest - first)]
    else:
        shares.append(("Seller A", rest))
    return [
        {
            "type": "ACCOUNT",
            "amount": money(amount, currency),
            "account": account(rng, currency, name),
            "name": name,
            "externalId": f"{invoice}-D{index}",
            "metadata": {
                "image": "https://billing.example.com/logo.png",
                "description": f"{name}, share {index} of {invoice}",
                "category": "marketplace-split",
            },
        }
        for index, (name, amount) in enumerate(shares, start=1)
    ]


def checkout(rng: random.Random, number: int) -> dict[str, Any]:
    token = f"INV-2026-{number:06d}"
    currency = rng.choices(list(CURRENCIES), weights=list(CURRENCIES.values()))[0]
    lines = items(rng, currency, taxed=rng.random() < 0.5)
    total = sum((Decimal(item["totalAmount"]) for item in lines), Decimal(0))
    request: dict[str, Any] = {
        "checkoutToken": token,
        "items": lines,
        "currency": currency,
        "paymentMethodsAllowed": rng.choice([["CARD"], ["CARD", LOCAL_METHODS[currency]]]),
    }
    if rng.random() < 0.85:
        request["customer"] = customer(rng, currency, number)
    request["destinations"] = destinations(rng, currency, total, token)
    request["duration"] = rng.choice(DURATIONS)
    if rng.random() < 0.3:
        request["customerRequirements"] = rng.choice(REQUIREMENTS)
    request["owner"] = rng.choice(OWNERS)
    if rng.random() < 0.4:
        base = f"https://billing.example.com/invoices/{token}"
        request |= {"successUrl": f"{base}/paid", "failedUrl": f"{base}/retry"}
    return request


def generate(seed: int = SEED, count: int = COUNT) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    requests, number = [], FIRST_INVOICE
    for _ in range(count):
        # Invoices that were paid another way leave gaps in the numbering.
        number += rng.choice([1, 1, 1, 2, 3])
        request = checkout(rng, number)
        CheckoutRequest.model_validate(request)  # a generator bug must not reach the file
        requests.append(request)
    return requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--count", type=int, default=COUNT)
    parser.add_argument("--output", type=Path, default=HERE / "checkouts.jsonl")
    args = parser.parse_args()
    lines = [json.dumps(r, ensure_ascii=False) for r in generate(args.seed, args.count)]
    args.output.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} checkout requests to {args.output}")


if __name__ == "__main__":
    main()
