"""DKIM private keys: reading them safely, making new ones, and the TXT record that publishes them.

A key file is PEM (PKCS#1 "RSA PRIVATE KEY" or PKCS#8 "PRIVATE KEY", RSA or Ed25519, as
OpenDKIM, rspamd and openssl write them) or, for Ed25519, dkimpy's own format: the base64 of the
32-byte seed on one line.  Whatever the file holds is turned into what dkimpy signs with.

A key file must be a regular file that no "other" user can read or write (group read is allowed,
so a `filterd` group can share it): a private key anyone on the host can read is a key anyone
can sign our mail with, so filterd refuses to start with one.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from filterd.settings import ConfigError

KeyType = Literal["rsa", "ed25519"]
MIN_RSA_BITS = 1024  # RFC 8301: verifiers reject shorter keys
TXT_STRING_MAX = 255  # one character-string of a TXT record (RFC 1035 3.3.14)


@dataclass(frozen=True)
class SigningKey:
    """One private key, ready for dkimpy."""

    domain: str
    selector: str
    path: str
    key_type: KeyType
    bits: int
    private: bytes  # RSA: PKCS#1 PEM; Ed25519: base64 of the seed (what dkimpy's sign() takes)
    public: str  # the p= value: base64 SubjectPublicKeyInfo (RSA) or raw key (Ed25519, RFC 8463)

    @property
    def algorithm(self) -> bytes:
        return b"rsa-sha256" if self.key_type == "rsa" else b"ed25519-sha256"


class KeyFileError(ValueError):
    """A key file cannot be used; the message says why."""


def check_file_safety(path: Path) -> None:
    """Raise KeyFileError unless `path` is a regular file closed to "other" users."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist") from None
    except OSError as exc:
        raise KeyFileError(f"key file {path} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"key file {path} is not a regular file")
    if st.st_mode & (stat.S_IROTH | stat.S_IWOTH | stat.S_IXOTH) or st.st_mode & stat.S_IWGRP:
        raise KeyFileError(
            f"key file {path} has mode {stat.S_IMODE(st.st_mode):04o}: other users can read or change it "
            f"(chmod 0600 {path}, or 0640 with a group only filterd is in)"
        )


def parse_private_key(data: bytes, where: str) -> tuple[KeyType, int, bytes, str]:
    """(type, bits, what dkimpy signs with, p= value) of the key in `data`; KeyFileError if unusable."""
    text = data.strip()
    if text.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(text, password=None)
        except TypeError:
            raise KeyFileError(
                f"{where}: the key is encrypted with a passphrase; filterd needs it unencrypted"
            ) from None
        except (ValueError, binascii.Error) as exc:
            raise KeyFileError(f"{where}: not a readable PEM private key ({exc})") from None
    else:
        try:
            seed = base64.b64decode(text, validate=True)
        except (ValueError, binascii.Error):
            seed = b""
        if len(seed) != 32:
            raise KeyFileError(f"{where}: neither a PEM private key nor a base64 Ed25519 seed")
        key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise KeyFileError(
                f"{where}: RSA key of {key.key_size} bits; receivers reject keys under {MIN_RSA_BITS}"
            )
        pkcs1 = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        return "rsa", key.key_size, pkcs1, public_value(key)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        seed = key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        return "ed25519", 256, base64.b64encode(seed), public_value(key)
    raise KeyFileError(f"{where}: a {type(key).__name__}; DKIM signs with RSA or Ed25519 keys only")


def public_value(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    """The p= value publishing `key`'s public half."""
    if isinstance(key, rsa.RSAPrivateKey):
        der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode("ascii")
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def load_signing_key(domain: str, selector: str, path: str, config_key: str) -> SigningKey:
    """Read and check one key of the key table; ConfigError (naming `config_key`) if unusable."""
    p = Path(path)
    try:
        if not p.is_absolute():
            raise KeyFileError(f"key file {path!r} must be an absolute path")
        check_file_safety(p)
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise KeyFileError(f"key file {p} cannot be read: {exc.strerror}") from None
        key_type, bits, private, public = parse_private_key(data, str(p))
    except KeyFileError as exc:
        raise ConfigError(config_key, str(exc)) from None
    return SigningKey(domain, selector, str(p), key_type, bits, private, public)


def generate(key_type: KeyType, bits: int = 2048) -> tuple[bytes, str]:
    """A new private key as PKCS#8 PEM, and its p= value."""
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if key_type == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem, public_value(key)


def write_private_key(path: Path, pem: bytes, overwrite: bool = False) -> None:
    """Write `pem` to `path` with mode 0600 from the start (never briefly readable by others)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing file keeps its mode on O_TRUNC: set it
        os.write(fd, pem)
    finally:
        os.close(fd)


def txt_value(key_type: KeyType, public: str) -> str:
    """The DKIM key record (RFC 6376 3.6.1; k=ed25519 per RFC 8463)."""
    return f"v=DKIM1; k={key_type}; p={public}"


def split_txt(value: str, size: int = TXT_STRING_MAX) -> list[str]:
    """`value` cut into TXT character-strings of at most `size` bytes (they are joined when read)."""
    return [value[i : i + size] for i in range(0, len(value), size)] or [""]


def zone_record(selector: str, domain: str, key_type: KeyType, public: str, ttl: int = 3600) -> str:
    """The record as a zone-file line, ready to publish."""
    strings = " ".join(f'"{s}"' for s in split_txt(txt_value(key_type, public)))
    return f"{selector}._domainkey.{domain}. {ttl} IN TXT ( {strings} )"
