"""Every error leaves the API as an RFC 9457 problem body naming the field at fault."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.routing import Match

from wiremesh.core.policyfile import PolicyFileError
from wiremesh.store.errors import Conflict, NotFound, Refused, StoreError

PROBLEM = "application/problem+json"


class Problem(BaseModel):
    """The body of every error response (RFC 9457)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[dict[str, Any]] = Field(
        default_factory=list, description="one per fault, naming its field (and line)")


# What the API's operations may answer besides success, so that clients (and the fuzzer in
# tests/api/test_fuzz.py) can hold every answer to the OpenAPI document.
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"description": HTTPStatus(code).phrase,
           "content": {PROBLEM: {"schema": Problem.model_json_schema()}}}
    for code in (400, 401, 403, 404, 409, 413, 415, 422)
}


# The store's refusals, as HTTP answers (anything else it refuses is a bad request).
STORE_ERRORS: dict[type[StoreError], tuple[int, str]] = {
    Refused: (403, "Refused"), NotFound: (404, "Not found"), Conflict: (409, "Conflict"),
}


def problem(status: int, title: str, detail: str, errors: list[dict[str, Any]] | None = None,
            headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status,
                            "detail": detail}
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [str(x) for x in loc if x not in ("body", "query", "path")]
    return ".".join(parts) or str(loc[0] if loc else "body")


def _allowed(app: FastAPI, request: Request) -> str:
    """Every method some route takes at the request's path: the router's 405 names only the
    first route whose path matched (GET for /peers/{ref}, though PATCH and DELETE are too)."""
    return ", ".join(m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
                     if any(r.matches({**request.scope, "method": m})[0] == Match.FULL
                            for r in app.routes))


def _fault(e: dict[str, Any]) -> dict[str, Any]:
    loc = tuple(e.get("loc", ()))
    if e.get("type") == "json_invalid" and loc[:1] == ("body",):
        # FastAPI puts the character offset where the field would be ("26: JSON decode
        # error") and the decoder's reason in ctx.
        at = f" at character {loc[1]}" if len(loc) > 1 else ""
        why = (e.get("ctx") or {}).get("error", "cannot be decoded")
        return {"field": "body", "message": f"not valid JSON{at}: {why}"}
    return {"field": _loc(loc),
            "message": str(e.get("msg", "invalid")).removeprefix("Value error, ")}


def _unsupported_type(request: Request) -> JSONResponse:
    given = request.headers.get("content-type")
    detail = (f"the request body must be application/json, not {given}" if given else
              "the request body must be application/json, and the request names no Content-Type")
    return problem(415, "Unsupported media type", detail,
                   [{"field": "Content-Type", "message": detail}])


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        # A body FastAPI did not decode as JSON (its Content-Type was missing or not JSON)
        # reaches validation as raw bytes; "Input should be a valid dictionary" would blame
        # the body when the header is at fault.
        if isinstance(exc.body, bytes):
            return _unsupported_type(request)
        errors = [_fault(e) for e in exc.errors()]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return problem(422, "Invalid request", detail, errors)

    @app.exception_handler(StoreError)
    async def _store(_: Request, exc: StoreError) -> JSONResponse:
        errors = [{"field": exc.field, "message": str(exc)}] if exc.field else None
        status, title = next((v for k, v in STORE_ERRORS.items() if isinstance(exc, k)),
                             (400, "Bad request"))
        return problem(status, title, str(exc), errors)

    @app.exception_handler(PolicyFileError)
    async def _policy_file(_: Request, exc: PolicyFileError) -> JSONResponse:
        errors = [{"line": i.line, "field": i.field, "message": i.message} for i in exc.issues]
        return problem(422, "Invalid policy file", str(exc), errors)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": _allowed(app, request)}
        detail = str(exc.detail)
        # FastAPI answers "There was an error parsing the body" for a JSON body its decoder
        # cannot even start on; say why.
        cause = exc.__cause__
        if isinstance(cause, RecursionError):  # [[[[...]]]]
            detail = "the JSON body nests too deeply to decode"
        elif isinstance(cause, UnicodeDecodeError):
            detail = (f"the JSON body is not UTF-8 text (byte {cause.start + 1} is "
                      f"{cause.object[cause.start]:#04x})")
        # The title names the kind of problem, the same for every occurrence (RFC 9457).
        return problem(exc.status_code, HTTPStatus(exc.status_code).phrase, detail,
                       headers=headers)
