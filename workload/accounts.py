"""Balances and idempotent debits for ``debit_account``.

Amounts are whole cents. A debit runs under the account's lock (see locks.py) and commits in
one MULTI/EXEC that WATCHes the balance, so even a lock that expired mid-debit cannot make two
debits read the same balance. The idempotency record is written in the same transaction: a
retry or a redelivered message with the same key returns the first outcome and debits nothing.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import redis

from workload.datastore import KEY_PREFIX
from workload.errors import (
    AccountLocked,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidDebitRequest,
)
from workload.locks import RedisLock

# Idempotency records outlive any sensible redelivery window.
RECORD_TTL_SECONDS = 7 * 24 * 3600
ACCOUNT_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_KEY_LENGTH = 128


def balance_key(user_id: str) -> str:
    return f"{KEY_PREFIX}account:{user_id}:balance"


def lock_key(user_id: str) -> str:
    return f"{KEY_PREFIX}lock:account:{user_id}"


def record_key(user_id: str, idempotency_key: str) -> str:
    return f"{KEY_PREFIX}account:{user_id}:debit:{idempotency_key}"


def ledger_key(user_id: str) -> str:
    return f"{KEY_PREFIX}account:{user_id}:ledger"


def validate(user_id: object, amount: object, idempotency_key: object) -> tuple[str, int, str]:
    """Normalise the arguments or raise InvalidDebitRequest naming the bad one."""
    if isinstance(user_id, bool) or not isinstance(user_id, int | str):
        raise InvalidDebitRequest("user_id must be a string or an integer")
    account = str(user_id)
    if not ACCOUNT_ID.match(account):
        raise InvalidDebitRequest("user_id must be 1-64 characters of A-Z a-z 0-9 _ . -")
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise InvalidDebitRequest(
            f"amount must be a positive whole number of cents, got {amount!r}"
        )
    if not isinstance(idempotency_key, str) or not 0 < len(idempotency_key) <= MAX_KEY_LENGTH:
        raise InvalidDebitRequest(
            f"idempotency_key must be a string of 1-{MAX_KEY_LENGTH} characters"
        )
    return account, amount, idempotency_key


def balance(client: redis.Redis, user_id: str, opening_balance: int) -> int:
    raw = client.get(balance_key(user_id))
    return opening_balance if raw is None else int(raw)


def debit(
    client: redis.Redis,
    user_id: str,
    amount: int,
    idempotency_key: str,
    *,
    opening_balance: int,
    lock_ttl_ms: int,
    hold_seconds: float = 0.0,
) -> dict[str, Any]:
    """Debit once; raises AccountLocked (retry), InsufficientFunds or IdempotencyConflict."""
    lock = RedisLock(client, lock_key(user_id), lock_ttl_ms)
    if not lock.acquire():
        raise AccountLocked(f"account {user_id} is locked by another debit")
    try:
        if hold_seconds:
            # Stands for work done under the lock (a payment provider call) so that
            # concurrent debits really contend; 0 unless WORKLOAD_DEBIT_HOLD_SECONDS is set.
            time.sleep(hold_seconds)
        return _commit(client, user_id, amount, idempotency_key, opening_balance)
    finally:
        lock.release()


def _commit(
    client: redis.Redis, user_id: str, amount: int, key: str, opening_balance: int
) -> dict[str, Any]:
    keys = (balance_key(user_id), record_key(user_id, key))

    def transaction(pipe: Any) -> dict[str, Any]:
        previous = pipe.get(keys[1])
        if previous is not None:
            record = json.loads(previous)
            if record["amount"] != amount:
                raise IdempotencyConflict(
                    f"idempotency key {key!r} was used for {record['amount']} cents, not {amount}"
                )
            pipe.multi()
            return {**record, "duplicate": True}
        raw = pipe.get(keys[0])
        current = opening_balance if raw is None else int(raw)
        if amount > current:
            raise InsufficientFunds(f"account {user_id} has {current} cents; cannot debit {amount}")
        record = {
            "user_id": user_id,
            "amount": amount,
            "idempotency_key": key,
            "balance_before": current,
            "balance_after": current - amount,
            "at": time.time(),
        }
        encoded = json.dumps(record)
        pipe.multi()
        pipe.set(keys[0], current - amount)
        pipe.set(keys[1], encoded, ex=RECORD_TTL_SECONDS)
        pipe.rpush(ledger_key(user_id), encoded)
        return {**record, "duplicate": False}

    return client.transaction(transaction, *keys, value_from_callable=True)
