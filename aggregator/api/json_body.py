"""JSON request bodies: read only once the caller is authenticated, refused before anything is stored when the
server could not write them back.

FastAPI reads and parses a route's body model before it runs the route's dependencies, so a body model is
parsed for callers without credentials too; admin routes take their body from `json_body` instead, a
dependency that runs after the router's admin check. Python's json also reads what the server can neither
store nor answer with: lone UTF-16 surrogates ("\\ud800" is a valid JSON escape but no UTF-8 text), and NaN,
Infinity and numbers too large for a float (not JSON at all; they come back as null, or not at all).
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from typing import TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from aggregator.errors import BadRequest
from aggregator.json_values import MAX_DEPTH, NUL, is_text, nesting_depth, scalars

Model = TypeVar("Model", bound=BaseModel)


async def json_object(request: Request) -> dict:
    """The body as a JSON object whose every string (keys included) is UTF-8 text; BadRequest otherwise."""
    try:
        body = json.loads(await request.body())
    except (ValueError, RecursionError) as exc:  # RecursionError: arrays nested thousands deep
        raise BadRequest("body is not JSON") from exc
    if not isinstance(body, dict):
        raise BadRequest("body is not a JSON object")
    for field, value in body.items():
        if not is_text(field):
            raise BadRequest("a field name of the body is not valid UTF-8 text (it holds a lone UTF-16 surrogate); "
                             "send UTF-8 text")
        if not all(is_text(scalar) for scalar in scalars(value) if isinstance(scalar, str)):
            raise BadRequest(f"{field[:64]} is not valid UTF-8 text (it holds a lone UTF-16 surrogate); "
                             "send UTF-8 text")
        if NUL in field:
            raise BadRequest("a field name of the body holds a NUL character (\\u0000), which the database cannot "
                             "store; send text without it")
        if any(NUL in scalar for scalar in scalars(value) if isinstance(scalar, str)):
            raise BadRequest(f"{field[:64]} holds a NUL character (\\u0000), which the database cannot store; "
                             "send text without it")
    return body


def json_body(model: type[Model]) -> Callable[[Request], Awaitable[Model]]:
    """A dependency: the body as `model`, every field strict JSON (finite numbers, at most MAX_DEPTH levels)."""

    async def read(request: Request) -> Model:
        body = await json_object(request)
        for field, value in body.items():
            if not all(math.isfinite(scalar) for scalar in scalars(value) if isinstance(scalar, float)):
                raise BadRequest(f"{field[:64]} holds NaN, Infinity or a number too large for JSON; "
                                 "send finite numbers")
            if nesting_depth(value) > MAX_DEPTH:
                raise BadRequest(f"{field[:64]} nests deeper than {MAX_DEPTH} levels; send a flatter value")
        try:
            return model.model_validate(body)
        except ValidationError as exc:  # answered as FastAPI answers a body model it cannot read
            raise RequestValidationError([{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]) \
                from exc

    return read
