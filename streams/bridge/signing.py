"""Ceilometer's message signature, as ``ceilometer/publisher/utils.py`` computes it.

Ceilometer signs each metering or event message (one element of the
envelope's ``payload``, never the envelope) with HMAC-SHA256 keyed with
``[publisher] telemetry_secret``. The signed text is not a canonical byte
form but Python's ``str()`` of the values, so this module reproduces it
rule by rule (the rules and 14 recorded vectors are in
``tests/data/ceilometer/README.md`` and ``signature_vectors.json``):

1. walk the message's keys in sorted order, skipping the top-level
   ``message_signature``;
2. a JSON object is not emitted: its keys are walked in sorted order, right
   there (depth first), named ``parent:child``; an empty object emits nothing;
3. any other value is fed as ``str(value)``: ``True``, ``None``, ``512.5``,
   ``2.0``, ``1e-07``, exact integers; a list is first turned into its "bytes
   form" (every string, at any depth and including the keys of objects in it,
   becomes UTF-8 ``bytes``, and every such object gets sorted keys), so it
   reads ``[b'default', b'web']``;
4. the HMAC is fed each name and then its value text, UTF-8, with nothing
   between them.

Messages must be decoded with Python's :mod:`json` (integers and floats stay
distinct, big integers exact, ``NaN``/``Infinity`` accepted), or the text
differs from what Ceilometer signed.

The two pure functions :func:`compute_signature` and :func:`verify_signature`
hold the whole rule and are tested on the captured vectors without a broker.

The text walk runs in C (``streams._bridge.signed_text``, built from
``streams/_bridge.c`` with the package) when it is built, and in the Python
walk below otherwise; the C walk hands anything it does not handle exactly
(keys that are not ``str``, subclasses of ``str``/``dict``/``list``/``tuple``)
back to the Python walk, and lists to :func:`_list_text`. Both give the same
bytes on every captured vector and on fuzzed messages
(``tests/unit/bridge/test_native.py``).
"""

from __future__ import annotations

import hashlib
import hmac
import marshal
from collections.abc import Mapping
from typing import Any

try:
    from streams import _bridge as _native
except ImportError:  # not built (e.g. a source checkout without build_ext): the Python walk does it all
    _native = None

SIGNATURE_KEY = "message_signature"
"""The field that carries the signature; skipped when signing (top level only, as in Ceilometer)."""

CEILOMETER_DEFAULT_SECRET = "change this for valid signing"
"""Ceilometer's built-in ``telemetry_secret`` when none is set: public, so it authenticates nothing."""


def _bytes_form(value: Any) -> Any:
    """A list element as Ceilometer's ``decode_unicode`` leaves it: str -> UTF-8 bytes, dicts key-sorted."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, list | tuple):
        return [_bytes_form(v) for v in value]
    if isinstance(value, dict):
        return {_bytes_form(k): _bytes_form(v) for k, v in sorted(value.items())}
    return value


def _list_text(value: list | tuple) -> str:
    """What a list (or tuple) value contributes: ``str()`` of its bytes form (the C walk calls this)."""
    return str(_bytes_form(value))


def _walk(message: Mapping[str, Any], prefix: str, out: list[str]) -> None:
    # The bridge's hot path (a sample has ~40 signed fields): exact type checks, then str().
    for name in sorted(message):
        value = message[name]
        kind = type(value)
        if kind is str:
            out.append(prefix + name)
            out.append(value)
        elif kind is dict:
            _walk(value, f"{prefix}{name}:", out)
        elif kind is list or kind is tuple:
            out.append(prefix + name)
            out.append(str(_bytes_form(value)))
        elif isinstance(value, dict):  # a Mapping subclass walks like a dict
            _walk(value, f"{prefix}{name}:", out)
        else:
            out.append(prefix + name)
            out.append(value if isinstance(value, str) else str(value))


def nested_text(name: str, value: Mapping[str, Any]) -> str:
    """The text a top-level object ``name`` contributes to :func:`signed_text` (names ``name:...``).

    A string with a lone surrogate stays in the text (it has no UTF-8 form:
    signing refuses it later).

    Raises:
        TypeError: as :func:`signing_pairs`.
    """
    if _native is not None and type(value) is dict:
        try:
            data = _native.signed_text({name: value}, None, None, _list_text)
        except UnicodeEncodeError:
            data = None  # the Python walk below keeps the surrogate, as it always did
        if data is not None:
            return data.decode("utf-8")
    out: list[str] = []
    _walk(value, f"{name}:", out)
    return "".join(out)


def signing_pairs(message: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The (name, value text) pairs Ceilometer feeds to the HMAC for ``message``, in order.

    Raises:
        TypeError: two keys of one object cannot be ordered (only possible for
            non-JSON input, e.g. mixed key types).
    """
    out: list[str] = []
    _walk({k: v for k, v in message.items() if k != SIGNATURE_KEY}, "", out)
    return list(zip(out[0::2], out[1::2], strict=True))


def signed_text(message: Mapping[str, Any]) -> bytes:
    """The exact bytes Ceilometer's HMAC covers: every name and value text of
    :func:`signing_pairs`, concatenated, UTF-8.

    Raises:
        UnicodeEncodeError: a string holds a lone surrogate (``"\\ud800"`` in the
            JSON), which has no UTF-8 form; Ceilometer cannot sign it either.
        TypeError: as :func:`signing_pairs`.
    """
    if _native is not None:
        data = _native.signed_text(message, SIGNATURE_KEY, None, _list_text)
        if data is not None:
            return data
    out: list[str] = []
    _walk({k: v for k, v in message.items() if k != SIGNATURE_KEY}, "", out)
    return "".join(out).encode("utf-8")


def compute_signature(message: Mapping[str, Any], secret: str | bytes) -> str:
    """Ceilometer's signature of ``message``: lowercase hex HMAC-SHA256, or ``""`` for an empty secret.

    Args:
        message: one metering or event message as decoded from JSON; its own
            ``message_signature`` is ignored.
        secret: ``telemetry_secret`` (text is UTF-8 encoded, as Ceilometer does).

    Raises:
        UnicodeEncodeError, TypeError: as :func:`signed_text`.
    """
    if not secret:
        return ""
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    return hmac.new(key, signed_text(message), hashlib.sha256).hexdigest()


def verify_signature(message: Mapping[str, Any], secret: str | bytes) -> bool:
    """True if ``message["message_signature"]`` is :func:`compute_signature` of ``message``.

    Constant-time in the signature. Unlike Ceilometer's own
    ``verify_signature``, an empty secret does not accept everything: it
    accepts exactly what a publisher with an empty secret writes, an empty
    signature (the bridge allows an empty secret only when configured to).
    A missing or non-text signature, or a message that cannot be signed
    (see :func:`signed_text`), does not verify.
    """
    given = message.get(SIGNATURE_KEY)
    if not isinstance(given, str):
        return False
    try:
        expected = compute_signature(message, secret)
    except (ValueError, TypeError):
        return False
    try:
        return hmac.compare_digest(expected.encode("ascii"), given.encode("ascii"))
    except UnicodeEncodeError:
        return False


def _hmac_pads(key: bytes) -> tuple[Any, Any]:
    """SHA-256 states after the HMAC key pads (RFC 2104): ``(H(K ^ ipad), H(K ^ opad))``.

    ``HMAC(K, m) = H(K ^ opad || H(K ^ ipad || m))``, with K hashed first when
    longer than the 64-byte block and zero-padded to it. Copying these two
    states per message gives :func:`hmac.new`'s digest for about half the
    calls (``hmac.HMAC.copy`` builds a Python object per message).
    """
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key.ljust(64, b"\0")
    return (hashlib.sha256(bytes(b ^ 0x36 for b in key)), hashlib.sha256(bytes(b ^ 0x5C for b in key)))


class Verifier:
    """:func:`verify_signature` for the bridge's hot path: key pads derived once, and the text of
    nested objects remembered.

    The samples of one instance carry the same ``resource_metadata``, which is
    most of what is signed. Its text is remembered by the object's exact
    :mod:`marshal` form (which keeps ``1``, ``1.0`` and ``True`` apart, as
    ``str()`` does, and every key order), so equal-looking but different
    values never share a text.

    Args:
        secret: ``telemetry_secret``; empty accepts only empty signatures.
        cache_size: nested objects remembered; the memory is forgotten when full.
    """

    def __init__(self, secret: str | bytes, cache_size: int = 4096) -> None:
        key = secret.encode("utf-8") if isinstance(secret, str) else secret
        self._keyed = key or None
        self._pads = _hmac_pads(key) if key else None
        self.signs = bool(key)
        """False for an empty secret: nothing is really verified."""
        self._texts: dict[tuple[str, bytes], str] = {}
        self._cache_size = cache_size

    def signed_text(self, message: Mapping[str, Any], texts: Mapping[str, str] | None = None) -> bytes:
        """Same bytes as :func:`signed_text`.

        Args:
            texts: :func:`nested_text` of some top-level objects, already known to the caller.
        """
        if _native is not None:
            data = _native.signed_text(message, SIGNATURE_KEY, texts if type(texts) is dict else None, _list_text)
            if data is not None:
                return data
        out: list[str] = []
        memo = self._texts
        for name in sorted(message):
            if name == SIGNATURE_KEY:
                continue
            value = message[name]
            kind = type(value)
            if kind is str:
                out.append(name)
                out.append(value)
            elif kind is dict:
                text = texts.get(name) if texts else None
                if text is None:
                    key = (name, marshal.dumps(value, 2))
                    text = memo.get(key)
                    if text is None:
                        text = nested_text(name, value)
                        if len(memo) >= self._cache_size:
                            memo.clear()
                        memo[key] = text
                out.append(text)
            elif kind is list:
                out.append(name)
                out.append(str(_bytes_form(value)))
            elif isinstance(value, dict | list | tuple | str):  # subclasses: as the generic walk does
                _walk({name: value}, "", out)
            else:  # numbers, booleans, None
                out.append(name)
                out.append(str(value))
        return "".join(out).encode("utf-8")

    def __call__(self, message: Mapping[str, Any], texts: Mapping[str, str] | None = None) -> bool:
        """Same result as ``verify_signature(message, secret)`` (``texts``: as :meth:`signed_text`)."""
        given = message.get(SIGNATURE_KEY)
        if not isinstance(given, str):
            return False
        if self._keyed is None:
            return given == ""
        try:
            data = self.signed_text(message, texts)
        except (ValueError, TypeError):
            return False
        inner, outer = self._pads  # type: ignore[misc]
        inner = inner.copy()
        inner.update(data)
        outer = outer.copy()
        outer.update(inner.digest())
        try:
            return hmac.compare_digest(outer.hexdigest().encode("ascii"), given.encode("ascii"))
        except UnicodeEncodeError:
            return False
