"""The workload's exception classes: one per failure a task can meet, grouped by what to do.

``TransientError`` subclasses are retried (capped exponential backoff with jitter) and, once
the retries are exhausted, dead-lettered with that same class name. ``PermanentError``
subclasses are dead-lettered at once. Each task has its own classes so that the exporter's
``celery_task_failed_total{exception=...}`` tells the failures apart.

Every class takes a single message argument so that Celery's JSON result backend can rebuild
it on the client side.
"""

from __future__ import annotations


class WorkloadError(Exception):
    """Base of every error the workload raises on purpose."""


class TransientError(WorkloadError):
    """Worth retrying: the next attempt may succeed."""


class PermanentError(WorkloadError):
    """Retrying cannot help: the input or the remote answer is final."""


# generate_report
class ReportInputError(PermanentError):
    """The report's data is invalid (wrong types, too many rows)."""


class ReportTransientError(TransientError):
    """Writing the report failed for a reason that may pass (or a requested fault)."""


# send_welcome_email
class InvalidEmailAddress(PermanentError):
    """The address is not a valid email address."""


class SmtpPermanentError(PermanentError):
    """The SMTP server refused the message with a 5xx reply."""


class SmtpTransientError(TransientError):
    """The SMTP server is unreachable or answered 4xx."""


# URL policy (process_image and fetch_data)
class UrlNotAllowed(PermanentError):
    """The URL's scheme, host or address is outside the configured allow-list."""


# process_image
class ImageDownloadError(PermanentError):
    """The image server answered 4xx (or a redirect loop)."""


class ImageTooLarge(PermanentError):
    """The image exceeds the byte or pixel limit."""


class InvalidImage(PermanentError):
    """The downloaded bytes are not an image Pillow can read."""


class ImageTransientError(TransientError):
    """The image server answered 5xx, timed out or refused the connection."""


# fetch_data
class FetchHttpError(PermanentError):
    """The endpoint answered 4xx."""


class FetchTooLarge(PermanentError):
    """The response exceeds WORKLOAD_HTTP_MAX_BYTES."""


class FetchTransientError(TransientError):
    """The endpoint answered 5xx, timed out or refused the connection."""


# debit_account
class InvalidDebitRequest(PermanentError):
    """A debit argument is invalid: amount not positive whole cents, bad user id or key."""


class InsufficientFunds(PermanentError):
    """The balance is lower than the amount."""


class AccountLocked(TransientError):
    """Another debit holds the account's lock."""


class IdempotencyConflict(PermanentError):
    """The idempotency key was already used for a different amount."""
