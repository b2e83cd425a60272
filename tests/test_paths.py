"""`bastion._paths`: methods and paths in the form routers match them."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bastion._paths import normal_method, normal_path

PATHS = st.lists(st.sampled_from(["/", "//", "a", "pay", "%2F", "."]), max_size=8).map(
    lambda parts: "/" + "".join(parts)
)


@given(PATHS)
def test_normal_paths_have_single_slashes_and_no_trailing_one(path: str) -> None:
    """The result has no ``//`` and no trailing slash but the root, and is its own normal form."""
    normal = normal_path(path)
    assert "//" not in normal
    assert normal == "/" or not normal.endswith("/")
    assert normal_path(normal) == normal
    assert normal.replace("/", "") == path.replace("/", "")


def test_router_spellings_become_the_route() -> None:
    """The spellings Litestar routes to ``/pay`` all normalise to it; the root stays."""
    assert {normal_path(p) for p in ["/pay", "/pay/", "//pay", "/pay//", "///pay///"]} == {"/pay"}
    assert [normal_path(p) for p in ["/", "//", "/a//b/"]] == ["/", "/", "/a/b"]


def test_a_normal_path_is_returned_as_it_is() -> None:
    """The common case allocates nothing: the very same string comes back."""
    path = "".join(["/api/", "claims"])
    assert normal_path(path) is path


def test_percent_escapes_are_not_decoded_again() -> None:
    """``scope["path"]`` is decoded once by the server; decoding it again would differ from
    the routers, which match the path as they get it."""
    assert normal_path("/p%61y") == "/p%61y"
    assert normal_path("/a%2F%2Fb") == "/a%2F%2Fb"


def test_methods_are_upper_case() -> None:
    """``post`` is ``POST``; an upper-case method is returned as it is."""
    method = "".join(["PO", "ST"])
    assert normal_method("post") == "POST"
    assert normal_method("Patch") == "PATCH"
    assert normal_method(method) is method
