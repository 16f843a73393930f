"""Message signing: HMAC-SHA256 with key ids, so keys can rotate.

Ceilometer signs a ``str()`` rendering of each sample dict; here the signed
bytes are the canonical Avro encoding itself (see ``schemas/sample_batch.avsc``):
everything in the record before its trailing 32-byte signature. The two pure
functions :func:`compute_signature` and :func:`verify_signature` hold the whole
rule and are tested without any broker.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field

SIGNATURE_SIZE = 32
"""Bytes of an HMAC-SHA256 digest."""


class SigningError(ValueError):
    """A keyring is misconfigured (no keys, unknown active key, empty secret)."""


def compute_signature(secret: bytes, data: bytes) -> bytes:
    """Return the 32-byte HMAC-SHA256 of ``data`` keyed with ``secret``."""
    return hmac.new(secret, data, hashlib.sha256).digest()


def verify_signature(secret: bytes, data: bytes, signature: bytes) -> bool:
    """True if ``signature`` is the HMAC-SHA256 of ``data`` under ``secret``.

    The comparison is constant-time (:func:`hmac.compare_digest`), so timing
    does not reveal how many leading bytes of a forged signature were right.
    """
    return hmac.compare_digest(compute_signature(secret, data), signature)


@dataclass(frozen=True)
class Keyring:
    """Signing keys by id, and the id that new messages are signed with.

    Verifiers accept any key in the ring, so rotation is: add the new key
    everywhere, switch ``active`` on the producers, then drop the old key once
    nothing signed with it is left on the topic.

    Args:
        keys: key id -> secret bytes. Ids are short ASCII strings.
        active: the key id producers sign with.

    Raises:
        SigningError: no keys, an empty secret, or ``active`` not in ``keys``.
    """

    keys: Mapping[str, bytes]
    active: str
    _keyed: dict[str, hmac.HMAC] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.keys:
            raise SigningError("no signing key configured")
        for key_id, secret in self.keys.items():
            if not key_id:
                raise SigningError("a signing key has an empty id")
            if not secret:
                raise SigningError(f"signing key {key_id!r} has an empty secret")
        if self.active not in self.keys:
            raise SigningError(
                f"active signing key {self.active!r} is not one of {sorted(self.keys)}"
            )
        # Pre-keyed HMAC objects: copy() skips re-deriving the key pads per message.
        keyed = {k: hmac.new(s, digestmod=hashlib.sha256) for k, s in self.keys.items()}
        object.__setattr__(self, "_keyed", keyed)

    def sign(self, data: bytes, key_id: str | None = None) -> bytes:
        """Return the 32-byte signature of ``data`` under ``key_id`` (default: active).

        Raises:
            KeyError: ``key_id`` is not in the ring.
        """
        mac = self._keyed[key_id or self.active].copy()
        mac.update(data)
        return mac.digest()

    def verify(self, key_id: str, data: bytes, signature: bytes) -> bool:
        """True if ``signature`` matches ``data`` under ``key_id``; False for unknown ids.

        Constant-time in the signature bytes.
        """
        base = self._keyed.get(key_id)
        if base is None:
            return False
        mac = base.copy()
        mac.update(data)
        return hmac.compare_digest(mac.digest(), signature)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self.keys
