"""Stored format 3: a response stored with its request's trace context, and formats 1 and 2."""

from __future__ import annotations

import pytest

from bastion._core.records import TRACE_SIZE, StoredResponse, encode_response

TRACE = bytes(range(16)) + bytes(range(100, 108)) + b"\x01"
HEADERS = [(b"content-type", b"application/json"), (b"set-cookie", b"s=1")]


def test_a_traced_record_is_format_3_and_only_the_context_longer() -> None:
    """With a trace context the record is format 3, exactly 25 bytes longer than format 2,
    and reads back with the same response and the context."""
    plain = encode_response(201, HEADERS, b'{"ok":true}')
    traced = encode_response(201, HEADERS, b'{"ok":true}', trace=TRACE)
    assert (plain[0], traced[0]) == (2, 3)
    assert len(traced) - len(plain) == TRACE_SIZE == 25
    response = StoredResponse.decode(traced)
    assert response == StoredResponse(
        201, ((b"content-type", b"application/json"),), b'{"ok":true}', TRACE
    )
    assert StoredResponse.decode(response.encode()) == response
    assert StoredResponse.decode(plain).trace is None


def test_formats_1_and_2_are_still_read() -> None:
    """Records written before format 3 replay as they did, with no trace context."""
    v1 = b'1[200, [["content-type", "text/plain"]]]\nhello'
    v2 = encode_response(200, [(b"content-type", b"text/plain")], b"hello")
    expected = StoredResponse(200, ((b"content-type", b"text/plain"),), b"hello")
    assert StoredResponse.decode(v1) == expected
    assert StoredResponse.decode(v2) == expected


@pytest.mark.parametrize("cut", [5, 6, 29])
def test_a_truncated_format_3_record_is_unreadable(cut: int) -> None:
    """A format 3 record cut inside its trace context or headers is a ValueError (answered
    as unreadable), never a response made of the wrong bytes."""
    traced = encode_response(200, [(b"a", b"b")], b"", trace=TRACE)
    with pytest.raises(ValueError, match="truncated"):
        StoredResponse.decode(traced[:cut])


def test_a_trace_context_of_another_size_is_refused() -> None:
    """Only the 25-byte context is stored: anything else is a caller's bug."""
    with pytest.raises(ValueError, match="25 bytes"):
        encode_response(200, [], b"", trace=b"\x00" * 24)
