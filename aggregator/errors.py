"""Errors the aggregation server answers with.

    ApiError                 an HTTP status and a short, fixed message (the JSON body is {"error": message})
    ├── Unauthorized         401: missing or wrong credentials
    ├── Forbidden            403: a leaf asking for another branch's resources, a bad or expired link
    ├── NotFound             404
    ├── BadRequest           400: a malformed request or archive
    ├── Conflict             409: valid on its own, but not now or not with this aggregation
    ├── Gone                 410: an aggregate the retention policy deleted
    ├── PayloadTooLarge      413: over the upload or decompressed-archive limit
    └── ServiceUnavailable   503: the server cannot take it now (a round it cannot read); try again later

Messages are short fixed strings (with the offending name or value where it helps) so that tests can
assert them exactly and clients can show them as they are.
"""

from __future__ import annotations


class ApiError(Exception):
    status_code = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unauthorized(ApiError):
    status_code = 401


class Forbidden(ApiError):
    status_code = 403


class NotFound(ApiError):
    status_code = 404


class BadRequest(ApiError):
    status_code = 400


class Conflict(ApiError):
    status_code = 409


class Gone(ApiError):
    status_code = 410


class PayloadTooLarge(ApiError):
    status_code = 413


class ServiceUnavailable(ApiError):
    status_code = 503
