"""The provider error tree. Every upstream failure becomes exactly one of these.

::

    ProviderError                      anything that went wrong talking to the model
    ├── TransientError                 retry with backoff (counts an attempt)
    │   ├── UpstreamTimeout            read/connect/pool timeout
    │   ├── UpstreamUnavailable        connection refused/reset/dropped, 500/502/503/504
    │   └── NoImageReturned            200 without an image, finishReason NO_IMAGE/IMAGE_OTHER/OTHER
    ├── RateLimited                    429: wait `retry_after` (a lower bound), never counts an attempt;
    │   │                              bounded per task (workers.retry.WaitBounds)
    │   └── DailyQuotaExhausted        429 on a PerDay quota: park until Pacific midnight
    └── PermanentError                 fail now, do not retry
        ├── ContentBlocked             safety block (promptFeedback.blockReason / finishReason)
        ├── QuotaMisconfigured         429 with a quota of 0 (limit 0, billing not enabled for the model)
        ├── BillingError               credits depleted, insufficient_quota, billing hard limit, 402
        ├── AccountRestricted          the account is limited or disabled (finishReason PUP_LIMITED_DISABLED)
        └── InvalidRequest             400/401/403/404: bad request, bad key, unknown model

httpx exceptions and HTTP statuses are translated into this tree in one place per provider
(``workers.providers.*``), always ``raise … from exc``; the task's retry decision reads only the
type and its fields (``workers.retry``), never message strings. Messages are redacted of API keys
before they are stored on the error.
"""

from __future__ import annotations

from nanobatch.models.status import ErrorCode


class ProviderError(Exception):
    """Base of every upstream failure. ``code`` is the :class:`ErrorCode` recorded on the task."""

    code: ErrorCode = ErrorCode.PROVIDER_ERROR

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        provider_status: str | None = None,
        code: ErrorCode | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.provider_status = provider_status
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        status = f"{self.status_code} " if self.status_code else ""
        return f"{status}{self.provider_status or ''}: {self.message}".strip(": ")


class TransientError(ProviderError):
    code = ErrorCode.TRANSIENT


class UpstreamTimeout(TransientError):
    code = ErrorCode.TIMEOUT


class UpstreamUnavailable(TransientError):
    code = ErrorCode.UNAVAILABLE


class NoImageReturned(TransientError):
    code = ErrorCode.NO_IMAGE


class RateLimited(ProviderError):
    """A 429. ``retry_after`` is seconds (``None`` when the server gave no hint)."""

    code = ErrorCode.RATE_LIMITED

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        quota_ids: tuple[str, ...] = (),
        status_code: int | None = 429,
        provider_status: str | None = "RESOURCE_EXHAUSTED",
        code: ErrorCode | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, provider_status=provider_status, code=code)
        self.retry_after = retry_after
        self.quota_ids = quota_ids


class DailyQuotaExhausted(RateLimited):
    code = ErrorCode.DAILY_QUOTA


class PermanentError(ProviderError):
    code = ErrorCode.PERMANENT


class ContentBlocked(PermanentError):
    """The model refused the prompt or the output for safety; ``reason`` is Google's enum value."""

    code = ErrorCode.BLOCKED

    def __init__(self, message: str, *, reason: str, status_code: int | None = 200) -> None:
        super().__init__(message, status_code=status_code, provider_status=reason, code=None)
        self.reason = reason


class QuotaMisconfigured(PermanentError):
    code = ErrorCode.QUOTA_ZERO


class BillingError(PermanentError):
    """The account cannot pay for the call (prepaid credits depleted, spend limit reached)."""

    code = ErrorCode.BILLING


class AccountRestricted(PermanentError):
    code = ErrorCode.ACCOUNT_RESTRICTED


class InvalidRequest(PermanentError):
    code = ErrorCode.INVALID_REQUEST
