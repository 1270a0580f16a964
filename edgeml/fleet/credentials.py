"""Secrets the fleet hands out and how it keeps them: API/enrolment tokens and MQTT passwords.

API and enrolment tokens are 256-bit random strings, so a plain sha256 is enough to keep them at rest
(nobody brute-forces 2^256); lookups go by that hash and the stored value is compared again in constant
time. MQTT passwords are stored in mosquitto's ``$7$`` format (PBKDF2-SHA512) so the same value can be
written into a mosquitto password_file and checked by the embedded broker.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

API_TOKEN_PREFIX = "efl_"
ENROLL_TOKEN_PREFIX = "efe_"
MOSQUITTO_ITERATIONS = 101  # mosquitto_passwd's own default
_SALT_BYTES = 12


def new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(6)}"


def new_secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def hashes_match(stored: str, candidate: str) -> bool:
    return hmac.compare_digest(stored.encode(), candidate.encode())


def mosquitto_hash(password: str, *, salt: bytes | None = None, iterations: int = MOSQUITTO_ITERATIONS) -> str:
    """``$7$<iterations>$<b64 salt>$<b64 PBKDF2-SHA512>``, the format ``mosquitto_passwd`` writes."""
    salt = salt if salt is not None else secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, dklen=64)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_mosquitto_hash(stored: str, password: str) -> bool:
    try:
        _, kind, iterations, salt_b64, _digest = stored.split("$")
        if kind != "7":
            return False
        salt = base64.b64decode(salt_b64)
        expected = mosquitto_hash(password, salt=salt, iterations=int(iterations))
    except ValueError:
        return False
    return hmac.compare_digest(expected.encode(), stored.encode())
