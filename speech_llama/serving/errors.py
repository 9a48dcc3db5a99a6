"""Errors in OpenAI's shape: every refusal is one `APIError`, answered as
``{"error": {"message", "type", "param", "code"}}`` with its HTTP status."""

from __future__ import annotations


class APIError(Exception):
    """A request the server refuses or could not answer; `message` names the problem in one line.

    `type` is OpenAI's error class ("invalid_request_error", "rate_limit_error", "server_error", …),
    `param` the request field at fault (``messages[0].content[1]``) when there is one, `code` a
    short machine-readable reason (``audio_too_long``).
    """

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, " ".join(message.split()), type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


__all__ = ["APIError", "bad_request"]
