"""A checkout request's rules checked on its wire form (a decoded JSON object), no model built."""

from __future__ import annotations

from typing import Any

from pydantic_core import SchemaValidator, ValidationError

from paylinks.jobs.models import CheckoutRequest, amounts_problem

# Intake reads a file of requests only to send them on: building the request's seven models
# cost a fifth of its validation, and their after-validator reached the amounts through
# them. This is the model's own schema with each model made a typed dict of its wire names,
# so every constraint is the same one, run by pydantic-core; the amounts rule is the model's
# `amounts_problem`. It only says yes or no: a request it refuses is judged again by the model,
# whose verdict and message are final.


def _without_models(schema: Any) -> Any:
    """`schema` (pydantic-core's) with each model a typed dict keyed by its fields' aliases."""
    if isinstance(schema, list):
        return [_without_models(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    kind = schema.get("type", "")
    python_code = ("custom_init", "post_init", "root_model")
    if kind.startswith("function") or (kind == "model" and any(map(schema.get, python_code))):
        # Python code of the model's would be skipped here: refuse to build instead.
        raise TypeError(f"{kind} in a checkout request's schema: jobs/wire.py cannot check it")
    if kind != "model":
        return {key: _without_models(value) for key, value in schema.items()}
    fields = schema["schema"]["fields"]
    typed = {
        "type": "typed-dict",
        "fields": {
            _alias(name, field): {
                "type": "typed-dict-field",
                "schema": _without_models(field["schema"]),
                "required": field["schema"]["type"] != "default",
            }
            for name, field in fields.items()
        },
        # The model's settings, unknown fields forbidden among them.
        "config": schema["config"],
    }
    return typed | ({"ref": schema["ref"]} if "ref" in schema else {})


def _alias(name: str, field: dict[str, Any]) -> str:
    alias = field.get("validation_alias", name)
    if not isinstance(alias, str):  # AliasChoices or AliasPath: no single wire name
        raise TypeError(f"{name} has no single wire name: jobs/wire.py cannot check it")
    return alias


def _request_schema() -> Any:
    schema = CheckoutRequest.__pydantic_core_schema__
    # The request's one validator in Python is the amounts rule, which `valid` applies itself.
    if schema["type"] != "function-after" or (
        schema["function"]["function"].__name__ != "_amounts_add_up_and_fit_currency"
    ):
        raise TypeError("CheckoutRequest's validators changed: jobs/wire.py cannot check it")
    return _without_models(schema["schema"])


_SCHEMA = SchemaValidator(_request_schema())


def valid(body: dict[str, Any]) -> bool:
    """Whether `body`, as JSON decodes it, is a checkout request the model would accept."""
    try:
        _SCHEMA.validate_python(body)
    except ValidationError:
        return False
    items = [
        (item["preTaxAmount"], item["totalAmount"], (item.get("tax") or {}).get("amount"))
        for item in body["items"]
    ]
    destinations = [destination["amount"] for destination in body["destinations"]]
    return amounts_problem(body["currency"], items, destinations) is None
