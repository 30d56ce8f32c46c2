"""Errors as the real API server reports them: a `Status` body with reason, details and code.

e.g. GET a missing Deployment answers 404 with
{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
 "message":"deployments.apps \"web\" not found","reason":"NotFound",
 "details":{"name":"web","group":"apps","kind":"deployments"},"code":404}
"""

from __future__ import annotations

from typing import Any

from .resources import Resource


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        }
        if self.details is not None:
            body["details"] = self.details
        body["code"] = self.code
        return body


def _details(res: Resource, name: str, kind: str | None = None, **extra: Any) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name}
    if res.group:  # omitempty on the real server
        details["group"] = res.group
    details["kind"] = kind or res.plural
    details.update(extra)
    return details


def not_found(res: Resource, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{res.qualified} "{name}" not found', _details(res, name))


def already_exists(res: Resource, name: str) -> ApiError:
    return ApiError(409, "AlreadyExists", f'{res.qualified} "{name}" already exists', _details(res, name))


def stale_write(res: Resource, name: str) -> ApiError:
    message = (
        f'Operation cannot be fulfilled on {res.qualified} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again"
    )
    return ApiError(409, "Conflict", message, _details(res, name))


def apply_conflict(res: Resource, name: str, conflicts: list[tuple[str, str]]) -> ApiError:
    """conflicts: (manager, field path like `.spec.replicas`)."""
    causes = [
        {
            "reason": "FieldManagerConflict",
            "message": f'conflict with "{m}" using {res.api_version}',
            "field": f,
        }
        for m, f in conflicts
    ]
    n = len(conflicts)
    if n == 1:
        m, f = conflicts[0]
        message = f'Apply failed with 1 conflict: conflict with "{m}" using {res.api_version}: {f}'
    else:
        lines = "".join(f'\n- conflict with "{m}" using {res.api_version}: {f}' for m, f in conflicts)
        message = f"Apply failed with {n} conflicts:{lines}"
    return ApiError(409, "Conflict", message, _details(res, name, causes=causes))


def invalid(res: Resource, name: str, causes: list[tuple[str, str, str]]) -> ApiError:
    """causes: (reason e.g. FieldValueRequired, field path, message)."""
    parts = [f"{f}: {m}" for _, f, m in causes]
    text = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    message = f'{res.qualified_kind} "{name}" is invalid: {text}'
    details = _details(
        res, name, kind=res.kind, causes=[{"reason": r, "message": m, "field": f} for r, f, m in causes]
    )
    return ApiError(422, "Invalid", message, details)


def expired(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def unauthorized() -> ApiError:
    return ApiError(401, "Unauthorized", "Unauthorized")


def no_route() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource", {})


def namespace_missing(ns: str) -> ApiError:
    return ApiError(404, "NotFound", f'namespaces "{ns}" not found', {"name": ns, "kind": "namespaces"})


def unsupported_media(content_type: str) -> ApiError:
    return ApiError(
        415,
        "UnsupportedMediaType",
        f"the body of the request was in an unknown format - accepted "
        f"media types include: application/json-patch+json, application/merge-patch+json, "
        f'application/apply-patch+yaml (got "{content_type}")',
    )


def method_not_allowed(method: str) -> ApiError:
    return ApiError(
        405,
        "MethodNotAllowed",
        f"the server does not allow this method on the requested resource ({method})",
        {},
    )
