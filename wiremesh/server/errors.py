"""Every error leaves the API as an RFC 9457 problem body naming the field at fault."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from wiremesh.core.policyfile import PolicyFileError
from wiremesh.store.repo import StoreError

PROBLEM = "application/problem+json"


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


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": _loc(tuple(e.get("loc", ()))),
             "message": str(e.get("msg", "invalid")).removeprefix("Value error, ")}
            for e in exc.errors()
        ]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return problem(422, "Invalid request", detail, errors)

    @app.exception_handler(StoreError)
    async def _store(_: Request, exc: StoreError) -> JSONResponse:
        errors = [{"field": exc.field, "message": str(exc)}] if exc.field else None
        titles = {403: "Refused", 404: "Not found", 409: "Conflict"}
        return problem(exc.status, titles.get(exc.status, "Bad request"), str(exc), errors)

    @app.exception_handler(PolicyFileError)
    async def _policy_file(_: Request, exc: PolicyFileError) -> JSONResponse:
        errors = [{"line": i.line, "field": i.field, "message": i.message} for i in exc.issues]
        return problem(422, "Invalid policy file", str(exc), errors)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail), str(exc.detail),
                       headers=getattr(exc, "headers", None))
