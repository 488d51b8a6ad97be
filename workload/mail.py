"""The welcome email: address validation and one real SMTP conversation.

SMTP replies decide what happens next: 5xx is final (SmtpPermanentError), 4xx or a server
that cannot be reached is worth retrying (SmtpTransientError).
"""

from __future__ import annotations

import smtplib
from email.message import EmailMessage
from email.utils import make_msgid

from email_validator import EmailNotValidError, validate_email

from workload.config import SmtpSettings
from workload.errors import InvalidEmailAddress, SmtpPermanentError, SmtpTransientError

MAX_ADDRESS_LENGTH = 254


def normalise_address(address: object) -> str:
    """The normalised address, or InvalidEmailAddress with the validator's reason."""
    if not isinstance(address, str) or not address:
        raise InvalidEmailAddress("address must be a non-empty string")
    if len(address) > MAX_ADDRESS_LENGTH:
        raise InvalidEmailAddress(f"address is longer than {MAX_ADDRESS_LENGTH} characters")
    try:
        # Syntax only: deliverability needs DNS, which a worker must not wait on here.
        return validate_email(address, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise InvalidEmailAddress(f"invalid email address: {exc}") from None


def build_message(sender: str, recipient: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = "Welcome aboard"
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    message.set_content(
        "Hello,\n\nyour account is ready. This message was sent by the celery-observatory "
        "reference workload.\n"
    )
    return message


def send(smtp: SmtpSettings, recipient: str) -> str:
    """Send the welcome email; returns its Message-ID."""
    message = build_message(smtp.sender, recipient)
    try:
        with smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout) as conn:
            if smtp.starttls:
                conn.starttls()
            if smtp.username:
                conn.login(smtp.username, smtp.password)
            conn.send_message(message)
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [code for code, _ in exc.recipients.values()]
        detail = "; ".join(
            f"{code} {text.decode(errors='replace')}" for code, text in exc.recipients.values()
        )
        raise _by_code(min(codes), f"recipient refused: {detail}") from None
    except smtplib.SMTPResponseException as exc:
        text = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else ""
        raise _by_code(exc.smtp_code, f"SMTP {exc.smtp_code} {text}") from None
    except (smtplib.SMTPException, OSError) as exc:
        raise SmtpTransientError(
            f"SMTP server {smtp.host}:{smtp.port} unavailable: {exc}"
        ) from None
    return str(message["Message-ID"])


def _by_code(code: int, text: str) -> SmtpPermanentError | SmtpTransientError:
    return SmtpPermanentError(text) if code >= 500 else SmtpTransientError(text)
