"""Wallet addresses: EIP-55 checksums, so a mistyped address is refused, not paid."""

from __future__ import annotations

import re

from Crypto.Hash import keccak

__all__ = ["InvalidAddress", "checksum_address", "keccak256", "normalize_address"]

_HEX40 = re.compile(r"0x[0-9a-fA-F]{40}")


class InvalidAddress(ValueError):
    """Not an address we accept: the message says why, for the 422 problem body."""


def keccak256(data: bytes) -> bytes:
    """Ethereum's hash (Keccak-256, not NIST SHA3-256: the padding differs)."""
    return keccak.new(data=data, digest_bits=256).digest()


def checksum_address(address: str) -> str:
    """The EIP-55 mixed-case form of a ``0x`` + 40 hex address."""
    lower = address[2:].lower()
    digest = keccak256(lower.encode("ascii")).hex()
    return "0x" + "".join(
        char.upper() if char.isalpha() and int(digest[i], 16) >= 8 else char
        for i, char in enumerate(lower)
    )


def normalize_address(value: str) -> str:
    """The checksummed form of an address given in lower case or with a valid checksum.

    Anything else is refused: a mixed-case address whose checksum does not match is a typo
    (that is what EIP-55 is for), and an all-upper-case one is neither form.
    """
    if not _HEX40.fullmatch(value):
        raise InvalidAddress("a wallet address is 0x followed by 40 hexadecimal digits")
    checksummed = checksum_address(value)
    if value[2:] == value[2:].lower() or value == checksummed:
        return checksummed
    raise InvalidAddress("the wallet address fails its EIP-55 checksum (mistyped?)")
