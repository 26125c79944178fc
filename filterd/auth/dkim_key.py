"""DKIM key records (RFC 6376 3.6.1, RFC 8463): parsed once, and the signature checks themselves.

A key record is parsed once per distinct record text and kept in a bounded memo.  The text comes
from the resolver, whose cache honours the record's TTL, so a parsed key is never used after DNS
would have been asked again: when the record changes, its new text is parsed afresh.

RSA keys are read from the DER that ``p=`` holds (a SubjectPublicKeyInfo, or a bare PKCS#1
RSAPublicKey as some publishers put there) with a small reader that is as forgiving as dkimpy's
(data after the structure is ignored, the algorithm identifier is not checked), so a key dkimpy
used, we use.  RSA verification is `cryptography`'s (OpenSSL): PKCS#1 v1.5 over the prehashed
digest.  Ed25519 (over the SHA-256 digest of the signed headers, RFC 8463 3) is libsodium's, through
PyNaCl, as in dkimpy: 44 us a signature here against OpenSSL's 91 us, and libsodium's checks
(small-order keys, non-canonical encodings refused) are exactly the ones dkimpy applied.  The rare public key
OpenSSL refuses to build (an even or tiny exponent) is checked with Python's `pow`, the same
arithmetic the RFC describes, so it gets the result dkimpy gave and not an error.
"""

from __future__ import annotations

import base64
import binascii
import threading
from dataclasses import dataclass, field

import nacl.bindings
import nacl.exceptions
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from filterd.auth.dkim_canon import parse_tag_list

# OpenSSL's own limit for RSA verification (OPENSSL_RSA_MAX_MODULUS_BITS); a longer key could
# only make verification slow.
MAX_RSA_BITS = 16384


class KeyRecordError(ValueError):
    """The key record cannot be used (permerror); the message says why."""


@dataclass(frozen=True)
class KeyRecord:
    """What a key record says, ready to verify with."""

    key_type: str  # "rsa" or "ed25519"
    bits: int  # the RSA modulus length; 256 for Ed25519
    # Of the s= tag: "" when it allows email, "tlsrpt" for a TLS-report-only key, "unknown" for
    # a service that is neither (such a key is unusable, but dkimpy only found out late: see
    # dkim_verify for the order that gives its results).
    service: str = ""
    hash_algorithms: frozenset[bytes] | None = None  # h=, None when absent (all allowed)
    flags: frozenset[bytes] = frozenset()  # t=: b"y" testing, b"s" no subdomains in i=
    rsa_numbers: tuple[int, int] | None = None  # (n, e)
    rsa_key: rsa.RSAPublicKey | None = field(default=None, compare=False)
    ed25519_public: bytes = b""  # the raw 32-byte key

    @property
    def modulus_bytes(self) -> int:
        n = self.rsa_numbers[0] if self.rsa_numbers else 0
        return max(1, (n.bit_length() + 7) // 8)


# libmilter calls the checks from one thread per connection: the memo is changed under a lock
# (parsing happens outside it; two threads parsing one new record both get the same result).
_MEMO: dict[bytes, KeyRecord | KeyRecordError] = {}
_MEMO_LOCK = threading.Lock()
MEMO_SIZE = 2048  # distinct key records kept parsed; a server sees a few hundred signing keys


def key_record(text: bytes) -> KeyRecord:
    """The key record `text` parsed, from the memo when seen before; KeyRecordError if unusable."""
    found = _MEMO.get(text)
    if found is None:
        try:
            found = _parse_record(text)
        except KeyRecordError as exc:
            found = exc
        except (ValueError, IndexError, TypeError) as exc:  # any other way the record is broken
            found = KeyRecordError(f"unusable key record: {type(exc).__name__}: {exc}"[:120])
        with _MEMO_LOCK:
            if len(_MEMO) >= MEMO_SIZE:
                del _MEMO[next(iter(_MEMO))]  # the oldest: records change rarely, FIFO will do
            _MEMO[text] = found
    if isinstance(found, KeyRecordError):
        raise found
    return found


def _parse_record(text: bytes) -> KeyRecord:
    if not text:
        raise KeyRecordError("missing public key")
    tags = parse_tag_list(text)
    if tags is None:
        raise KeyRecordError("key record is not a tag=value list")
    if b"v" in tags and tags[b"v"] != b"DKIM1":
        raise KeyRecordError("key record: bad version")
    service = tags.get(b"s")
    # s= (RFC 6376 3.6.1): absent, "*" or "email" allow email; dkimpy took no list apart.
    usage = "" if service in (None, b"*", b"email") else "tlsrpt" if service == b"tlsrpt" else "unknown"
    allowed = _colon_list(tags[b"h"]) if b"h" in tags else None
    flags = _colon_list(tags.get(b"t", b""))
    # dkimpy reads a k=ed25519 record with no p= as an RSA one (and finds no RSA key in it).
    key_type = tags.get(b"k", b"rsa")
    if key_type == b"ed25519" and b"p" not in tags:
        key_type = b"rsa"
    if key_type == b"ed25519":
        raw = _lenient_base64(tags[b"p"])
        if len(raw) != 32:
            raise KeyRecordError(f"could not parse ed25519 public key: {len(raw)} bytes, not 32")
        return KeyRecord("ed25519", 256, usage, allowed, flags, ed25519_public=raw)
    if key_type != b"rsa":
        raise KeyRecordError(f"unknown algorithm in k= tag: {key_type[:20]!r}")
    if b"p" not in tags:
        raise KeyRecordError("incomplete RSA public key: no p=")
    n, e = _rsa_numbers(_lenient_base64(tags[b"p"]))
    if n.bit_length() > MAX_RSA_BITS:
        raise KeyRecordError(f"RSA key of {n.bit_length()} bits: over {MAX_RSA_BITS}")
    try:
        rsa_key: rsa.RSAPublicKey | None = rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError:  # OpenSSL refuses it (even or tiny exponent...): checked with pow()
        if e.bit_length() > 64:  # ... unless pow() with that exponent would take seconds
            raise KeyRecordError("RSA public exponent unusable") from None
        rsa_key = None
    return KeyRecord("rsa", max(1, n.bit_length()), usage, allowed, flags, (n, e), rsa_key)


def _colon_list(value: bytes) -> frozenset[bytes]:
    return frozenset(v.strip().lower() for v in value.split(b":") if v.strip())


def _lenient_base64(value: bytes) -> bytes:
    """Base64 decoded as dkimpy and PyNaCl decode it: characters outside the alphabet skipped.
    binascii.Error (a ValueError) on wrong padding."""
    try:
        return base64.b64decode(value)
    except binascii.Error as exc:
        raise KeyRecordError(f"p= is not base64: {exc}") from None


# --- a forgiving DER reader, for the two shapes an RSA p= takes ------------------------------

_SEQUENCE, _INTEGER, _BIT_STRING, _NULL, _OID = 0x30, 0x02, 0x03, 0x05, 0x06


def _read(data: bytes, at: int, tag: int) -> tuple[bytes, int, int]:
    """The content of the element of type `tag` at `at`, where the next one starts, and the
    length the element declares.

    Lengths are read as DER says (short form, or 0x80|n then n bytes) but content running past
    the end is cut short, not refused, and nothing checks what follows: dkimpy's leniency."""
    if at >= len(data) or data[at] != tag:
        raise KeyRecordError(f"unexpected ASN.1 tag at byte {at}")
    if at + 1 >= len(data):
        raise KeyRecordError("ASN.1 data truncated")
    length, at = data[at + 1], at + 2
    if length & 0x80:
        count = length & 0x7F
        if at + count > len(data):
            raise KeyRecordError("ASN.1 data truncated")
        length, at = int.from_bytes(data[at : at + count], "big"), at + count
    if tag == _INTEGER and at + length > len(data):
        raise KeyRecordError("ASN.1 integer truncated")
    return data[at : at + length], at + length, length


class _NullWithContent(KeyRecordError):
    """dkimpy stops at this one instead of trying the key as a bare RSAPublicKey."""


def _rsa_public_key(data: bytes) -> tuple[int, int]:
    body, _, _ = _read(data, 0, _SEQUENCE)
    n, at, _ = _read(body, 0, _INTEGER)
    e, _, _ = _read(body, at, _INTEGER)
    return int.from_bytes(n, "big"), int.from_bytes(e, "big")


def _rsa_numbers(der: bytes) -> tuple[int, int]:
    """(n, e) from a SubjectPublicKeyInfo, else from a bare RSAPublicKey."""
    try:
        spki, _, _ = _read(der, 0, _SEQUENCE)
        algorithm, at, _ = _read(spki, 0, _SEQUENCE)
        _, inner, _ = _read(algorithm, 0, _OID)
        _, _, null_length = _read(algorithm, inner, _NULL)
        if null_length:
            raise _NullWithContent("ASN.1 NULL with content")
        bits, _, _ = _read(spki, at, _BIT_STRING)
        return _rsa_public_key(bits[1:])  # the first byte counts unused bits
    except _NullWithContent:
        raise
    except KeyRecordError as spki_error:
        try:
            return _rsa_public_key(der)
        except KeyRecordError as bare_error:
            raise KeyRecordError(f"could not parse RSA public key: {spki_error}; {bare_error}") from None


# --- the signature checks ----------------------------------------------------------------

# DigestInfo prefixes (RFC 8017 9.2 note 1): the DER of SEQUENCE { algorithm, OCTET STRING }.
_DIGEST_INFO = {
    "sha1": bytes.fromhex("3021300906052b0e03021a05000414"),
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
}
_HASHES = {"sha1": hashes.SHA1, "sha256": hashes.SHA256}


class DigestTooLarge(ValueError):
    """The modulus is too short to hold the digest (dkimpy: a key format error, dkim=policy)."""


def rsa_verify(key: KeyRecord, digest: bytes, hash_name: str, signature: bytes) -> bool:
    """PKCS#1 v1.5 (RFC 8017 8.2.2) of `digest` under `key`.

    The signature is taken as a number and reduced modulo n (what s^e mod n does anyway), so one
    whose length differs from the modulus' (leading zero bytes dropped by a signer) verifies as
    it did in dkimpy."""
    assert key.rsa_numbers is not None
    n, e = key.rsa_numbers
    size = key.modulus_bytes
    expected_info = _DIGEST_INFO[hash_name] + digest
    if len(expected_info) + 11 > size:
        raise DigestTooLarge(f"digest too large for a {key.bits}-bit modulus")
    value = int.from_bytes(signature, "big") % n
    if key.rsa_key is not None:
        try:
            key.rsa_key.verify(
                value.to_bytes(size, "big"), digest, padding.PKCS1v15(), Prehashed(_HASHES[hash_name]())
            )
            return True
        except InvalidSignature:
            return False
    encoded = b"\x00\x01" + b"\xff" * (size - len(expected_info) - 3) + b"\x00" + expected_info
    return pow(value, e, n).to_bytes(size, "big") == encoded


class BadSignatureLength(ValueError):
    """An Ed25519 signature that is not 64 bytes (dkimpy: an error, dkim=permerror)."""


def ed25519_verify(key: KeyRecord, digest: bytes, signature: bytes) -> bool:
    """Ed25519 (RFC 8032) of the SHA-256 digest of the signed headers (RFC 8463 3), by libsodium."""
    if len(signature) != 64:
        raise BadSignatureLength(f"Ed25519 signature of {len(signature)} bytes, not 64")
    try:
        nacl.bindings.crypto_sign_open(signature + digest, key.ed25519_public)
        return True
    except nacl.exceptions.BadSignatureError:
        return False


HASH_OF_ALGORITHM = {b"rsa-sha1": "sha1", b"rsa-sha256": "sha256", b"ed25519-sha256": "sha256"}
