"""S3-style signed URLs: round trip, expiry, tampering, canonicalization and fuzzing."""

from __future__ import annotations

import pickle
import random
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atlas_tasks.auth import InvalidSignedUrl, sign_url, verify_request_target, verify_url
from atlas_tasks.errors import AtlasError, UnauthorizedError, ValidationError

SECRET = "test-signing-secret"
NOW = 1_700_000_000
BASE = "https://pod-abc-8000.proxy.runpod.net/video/session-42.m3u8"


def signed(url: str = BASE, **kw: Any) -> str:
    kw.setdefault("secret", SECRET)
    kw.setdefault("expires_in", 3600)
    kw.setdefault("now", NOW)
    return sign_url(url, **kw)


def reason_of(url: Any, *, secret: str | bytes = SECRET, now: float = NOW + 1) -> str:
    with pytest.raises(InvalidSignedUrl) as info:
        verify_url(url, secret=secret, now=now)
    return info.value.reason


def query_of(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


def replace_query(url: str, query: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


# --------------------------------------------------------------------------- round trip


def test_round_trip() -> None:
    url = signed()
    verify_url(url, secret=SECRET, now=NOW)  # returns None, raises on failure
    params = query_of(url)
    assert params["exp"] == str(NOW + 3600)
    assert len(params["sig"]) == 64 and int(params["sig"], 16) >= 0
    assert url.startswith(BASE + "?exp=")


def test_round_trip_keeps_existing_query_and_fragment() -> None:
    url = signed(BASE + "?quality=720p&lang=en#t=10")
    assert url.startswith(BASE + "?quality=720p&lang=en&exp=")
    assert url.endswith("#t=10")
    verify_url(url, secret=SECRET, now=NOW)
    # The fragment is never sent to a server, so it is not signed.
    verify_url(url.replace("#t=10", "#t=99"), secret=SECRET, now=NOW)


def test_bytes_and_str_secrets_are_interchangeable() -> None:
    url = signed(secret=SECRET.encode())
    verify_url(url, secret=SECRET, now=NOW)
    verify_url(signed(secret=SECRET), secret=SECRET.encode(), now=NOW)


def test_signature_is_deterministic() -> None:
    assert signed() == signed()


def test_resigning_replaces_old_exp_and_sig() -> None:
    first = signed()
    second = sign_url(first, secret=SECRET, expires_in=60, now=NOW + 10)
    params = parse_qsl(urlsplit(second).query)
    assert [k for k, _ in params].count("exp") == 1
    assert [k for k, _ in params].count("sig") == 1
    assert query_of(second)["exp"] == str(NOW + 70)
    verify_url(second, secret=SECRET, now=NOW + 69)


def test_ws_urls_can_be_signed() -> None:
    url = signed("wss://pod-abc-8000.proxy.runpod.net/ws")
    verify_url(url, secret=SECRET, now=NOW)


def test_scheme_host_and_port_are_not_signed() -> None:
    # The pod behind a proxy sees another host/scheme than the browser does.
    url = signed()
    moved = url.replace("https://pod-abc-8000.proxy.runpod.net", "http://10.0.0.5:8000")
    verify_url(moved, secret=SECRET, now=NOW)


def test_path_without_slash_signs_as_root() -> None:
    url = signed("https://pod.example")
    verify_url(url.replace("https://pod.example?", "https://pod.example/?"), secret=SECRET, now=NOW)


# --------------------------------------------------------------------------- expiry


def test_valid_until_exp_then_expired() -> None:
    url = signed(expires_in=60)
    verify_url(url, secret=SECRET, now=NOW + 59.999)
    assert reason_of(url, now=NOW + 60) == "expired"
    assert reason_of(url, now=NOW + 10_000) == "expired"


def test_default_clock_is_used_when_now_is_omitted() -> None:
    fresh = sign_url(BASE, secret=SECRET)
    verify_url(fresh, secret=SECRET)
    old = sign_url(BASE, secret=SECRET, expires_in=1, now=NOW)
    with pytest.raises(InvalidSignedUrl) as info:
        verify_url(old, secret=SECRET)
    assert info.value.reason == "expired"


def test_expired_and_tampered_reports_bad_signature_not_expired() -> None:
    # Only a genuine URL may learn that it merely expired.
    url = signed(expires_in=60).replace("session-42", "session-43")
    assert reason_of(url, now=NOW + 1_000) == "bad_signature"


def test_moving_exp_forward_breaks_the_signature() -> None:
    url = signed(expires_in=60)
    later = url.replace(f"exp={NOW + 60}", f"exp={NOW + 999_999}")
    assert later != url
    assert reason_of(later, now=NOW + 120) == "bad_signature"


# --------------------------------------------------------------------------- tampering


def test_tampered_path() -> None:
    url = signed()
    assert reason_of(url.replace("session-42", "session-43")) == "bad_signature"
    assert reason_of(url.replace("/video/", "/admin/")) == "bad_signature"


def test_tampered_query_value_name_added_or_removed() -> None:
    url = signed(BASE + "?user=42")
    assert reason_of(url.replace("user=42", "user=43")) == "bad_signature"
    assert reason_of(url.replace("user=42", "uses=42")) == "bad_signature"
    assert reason_of(url.replace("user=42", "user=42&admin=1")) == "bad_signature"
    assert reason_of(url.replace("user=42&", "")) == "bad_signature"
    # A repeated (non-signature) parameter is a different query too.
    assert reason_of(url.replace("user=42", "user=42&user=42")) == "bad_signature"


def test_tampered_sig() -> None:
    url = signed()
    sig = query_of(url)["sig"]
    flipped = ("0" if sig[0] != "0" else "1") + sig[1:]
    assert reason_of(url.replace(sig, flipped)) == "bad_signature"
    assert reason_of(url.replace(sig, sig[:-1])) == "bad_signature"
    assert reason_of(url.replace(sig, sig + "0")) == "bad_signature"
    assert reason_of(url.replace(sig, "z" * 64)) == "bad_signature"
    assert reason_of(url.replace(sig, "")) == "bad_signature"


def test_upper_case_hex_signature_is_accepted() -> None:
    url = signed()
    sig = query_of(url)["sig"]
    verify_url(url.replace(sig, sig.upper()), secret=SECRET, now=NOW)


def test_wrong_secret() -> None:
    url = signed()
    assert reason_of(url, secret=SECRET + "x") == "bad_signature"
    assert reason_of(url, secret=b"\x00" * 32) == "bad_signature"


# --------------------------------------------------------------------------- malformed


@pytest.mark.parametrize(
    "url",
    [
        BASE,  # no exp, no sig
        BASE + "?sig=" + "0" * 64,  # no exp
        BASE + f"?exp={NOW + 60}",  # no sig
        BASE + "?exp=soon&sig=" + "0" * 64,  # non-numeric exp
        BASE + "?exp=-5&sig=" + "0" * 64,
        BASE + "?exp=1.5&sig=" + "0" * 64,
        BASE + "?exp=&sig=" + "0" * 64,
        BASE + "?exp=%D9%A1%D9%A2&sig=" + "0" * 64,  # Arabic-Indic digits: int() takes them
        BASE + "?exp=1_000&sig=" + "0" * 64,  # int() takes underscores too
        BASE + "?exp=1234567890123&sig=" + "0" * 64,  # 13 digits: not a date
        BASE + f"?exp={NOW}&exp={NOW}&sig=" + "0" * 64,  # duplicate exp
        BASE + f"?exp={NOW}&sig=" + "0" * 64 + "&sig=" + "0" * 64,  # duplicate sig
        "ftp://pod/file?exp=1&sig=" + "0" * 64,  # not http
        "javascript:alert(1)",
        "/relative/path?exp=1&sig=" + "0" * 64,  # no host
        "https://[::1/x?exp=1&sig=" + "0" * 64,  # urlsplit raises ValueError
        "",
        "not a url",
        "https://pod/\ud800?exp=1&sig=" + "0" * 64,  # lone surrogate
    ],
)
def test_malformed(url: str) -> None:
    assert reason_of(url) == "malformed"


def test_duplicate_sig_of_a_valid_url_is_malformed() -> None:
    url = signed()
    sig = query_of(url)["sig"]
    assert reason_of(url + "&sig=" + sig) == "malformed"


def test_percent_encoded_parameter_names_count_as_duplicates() -> None:
    # "%73ig" decodes to "sig": two readers must never disagree on which one counts.
    url = signed()
    sig = query_of(url)["sig"]
    assert reason_of(url + "&%73ig=" + sig) == "malformed"


@pytest.mark.parametrize("value", [None, 42, b"https://pod/?exp=1&sig=00", ["https://x"], object()])
def test_non_str_input_is_malformed(value: Any) -> None:
    assert reason_of(value) == "malformed"


# --------------------------------------------------------------------------- canonicalization


def test_extra_params_are_order_independent() -> None:
    url = signed(BASE + "?a=1&b=2&c=3")
    pairs = parse_qsl(urlsplit(url).query)
    for seed in range(10):
        random.Random(seed).shuffle(pairs)
        verify_url(replace_query(url, urlencode(pairs)), secret=SECRET, now=NOW)


def test_equivalent_encodings_verify() -> None:
    url = signed("https://pod/a b/c?q=x y&t=~")
    verify_url(url.replace("/a b/", "/a%20b/"), secret=SECRET, now=NOW)
    verify_url(url.replace("q=x y", "q=x+y"), secret=SECRET, now=NOW)
    verify_url(url.replace("q=x y", "q=x%20y"), secret=SECRET, now=NOW)
    verify_url(url.replace("t=~", "t=%7E"), secret=SECRET, now=NOW)
    verify_url(url.replace("/c?", "/%63?"), secret=SECRET, now=NOW)


def test_literal_plus_and_encoded_plus_differ() -> None:
    url = signed("https://pod/x?q=a%2Bb")  # q = "a+b"
    assert reason_of(url.replace("a%2Bb", "a+b")) == "bad_signature"  # q = "a b"


def test_non_ascii_path_and_query() -> None:
    url = signed("https://pod/vidéo/日本?name=Zoë")
    verify_url(url, secret=SECRET, now=NOW)
    encoded = url.replace("vidéo/日本", quote("vidéo/日本")).replace("Zoë", quote("Zoë"))
    verify_url(encoded, secret=SECRET, now=NOW)


def test_verify_request_target_matches_verify_url() -> None:
    url = signed(BASE + "?user=42")
    parts = urlsplit(url)
    verify_request_target(parts.path, parts.query, secret=SECRET, now=NOW)
    verify_request_target(parts.path.encode(), parts.query.encode(), secret=SECRET, now=NOW)
    with pytest.raises(InvalidSignedUrl) as info:
        verify_request_target("/other", parts.query, secret=SECRET, now=NOW)
    assert info.value.reason == "bad_signature"
    with pytest.raises(InvalidSignedUrl) as info:
        verify_request_target(parts.path, parts.query, secret=SECRET, now=NOW + 3600)
    assert info.value.reason == "expired"


# --------------------------------------------------------------------------- the error


def test_error_is_an_unauthorized_atlas_error() -> None:
    err = InvalidSignedUrl("expired")
    assert isinstance(err, UnauthorizedError) and isinstance(err, AtlasError)
    assert err.kind == "unauthorized"
    assert err.reason == "expired"
    assert "expired" in str(err) and "expired" in repr(err)


def test_error_message_never_contains_the_url_or_sig() -> None:
    url = signed()
    with pytest.raises(InvalidSignedUrl) as info:
        verify_url(url.replace("session-42", "session-43"), secret=SECRET, now=NOW)
    sig = query_of(url)["sig"]
    assert sig not in str(info.value) and sig not in repr(info.value)
    assert "session" not in str(info.value)


def test_error_pickles_with_its_reason() -> None:
    copy = pickle.loads(pickle.dumps(InvalidSignedUrl("bad_signature")))
    assert isinstance(copy, InvalidSignedUrl)
    assert copy.reason == "bad_signature"
    assert copy.kind == "unauthorized"


# --------------------------------------------------------------------------- caller bugs


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"secret": ""}, "secret"),
        ({"secret": b""}, "secret"),
        ({"secret": None}, "secret"),
        ({"secret": 42}, "secret"),
        ({"expires_in": 0}, "expires_in"),
        ({"expires_in": -1}, "expires_in"),
        ({"expires_in": float("inf")}, "expires_in"),
        ({"expires_in": float("nan")}, "expires_in"),
        ({"expires_in": True}, "expires_in"),
        ({"expires_in": "60"}, "expires_in"),
        ({"expires_in": 10**13}, "expires_in"),
        ({"now": "yesterday"}, "now"),
        ({"now": float("nan")}, "now"),
        ({"now": -10_000}, "now"),
        ({"now": 1e308, "expires_in": 1e308}, "expires_in"),
    ],
)
def test_sign_url_rejects_bad_arguments(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        signed(**kwargs)
    assert info.value.field == field
    assert info.value.kind == "validation"


@pytest.mark.parametrize(
    "url",
    [
        "ftp://pod/x",
        "pod/x",
        "/x",
        "https://",
        "https://[::1/x",
        "https://pod/\ud800",
        42,
    ],
)
def test_sign_url_rejects_bad_urls(url: Any) -> None:
    with pytest.raises(ValidationError) as info:
        sign_url(url, secret=SECRET)
    assert info.value.field == "url"


@pytest.mark.parametrize("secret", ["", b"", None, 3.5])
def test_verify_url_rejects_an_unusable_secret(secret: Any) -> None:
    with pytest.raises(ValidationError) as info:
        verify_url(signed(), secret=secret, now=NOW)
    assert info.value.field == "secret"


# --------------------------------------------------------------------------- fuzzing

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Every code point, lone surrogates included.
any_text = st.text(alphabet=st.characters(codec=None, categories=None), max_size=200)
url_chars = st.sampled_from(list("abcxyz019-._~!$&'()*+,;=:@/?#[]% =&+\x00\n\té日\ud800"))
urlish = st.builds(
    lambda scheme, body, q: f"{scheme}{body}?{q}",
    st.sampled_from(["https://", "http://", "wss://", "HTTPS://", "ftp://", "", "//"]),
    st.text(alphabet=url_chars, max_size=60),
    st.text(alphabet=url_chars, max_size=120),
)


def _verify_raises_only_invalid(url: Any, now: float = NOW) -> None:
    try:
        verify_url(url, secret=SECRET, now=now)
    except InvalidSignedUrl as exc:
        assert exc.reason in ("expired", "bad_signature", "malformed")


@FUZZ
@given(any_text)
def test_fuzz_random_unicode_never_raises_anything_else(url: str) -> None:
    _verify_raises_only_invalid(url)


@FUZZ
@given(urlish)
def test_fuzz_url_shaped_garbage_never_raises_anything_else(url: str) -> None:
    _verify_raises_only_invalid(url)
    _verify_raises_only_invalid(url + f"&exp={NOW + 5}&sig=" + "a" * 64)


@FUZZ
@given(st.binary(max_size=120), st.binary(max_size=200))
def test_fuzz_request_target_bytes_never_raise_anything_else(path: bytes, query: bytes) -> None:
    try:
        verify_request_target(path, query, secret=SECRET, now=NOW)
    except InvalidSignedUrl:
        pass


mutations = st.lists(
    st.tuples(
        st.sampled_from(["insert", "delete", "replace", "swap"]),
        st.integers(min_value=0, max_value=10_000),
        st.sampled_from(list("0aAf/?&=#%+ .~zé\ud800\x00") + ["%2", "%41", "exp=1", "sig="]),
    ),
    min_size=1,
    max_size=4,
)


def _mutate(url: str, ops: list[tuple[str, int, str]]) -> str:
    for op, pos, text in ops:
        i = pos % (len(url) + 1)
        if op == "insert":
            url = url[:i] + text + url[i:]
        elif op == "delete":
            url = url[:i] + url[i + 1 :]
        elif op == "replace":
            url = url[:i] + text + url[i + 1 :]
        elif len(url) > 1:
            j = (i + 1) % len(url)
            chars = list(url)
            chars[i % len(url)], chars[j] = chars[j], chars[i % len(url)]
            url = "".join(chars)
    return url


@FUZZ
@given(mutations, st.sampled_from([BASE, BASE + "?user=42&lang=en", "https://p/ü?x=a%2Bb"]))
def test_fuzz_mutated_signed_url_never_raises_anything_else(
    ops: list[tuple[str, int, str]], base: str
) -> None:
    url = signed(base)
    mutated = _mutate(url, ops)
    _verify_raises_only_invalid(mutated)
    _verify_raises_only_invalid(mutated, now=NOW + 10**9)


@FUZZ
@given(st.integers(min_value=0, max_value=63), st.sampled_from("0123456789abcdef"))
def test_fuzz_any_changed_sig_digit_is_rejected(index: int, digit: str) -> None:
    url = signed()
    sig = query_of(url)["sig"]
    if sig[index] == digit:
        return
    bad = sig[:index] + digit + sig[index + 1 :]
    assert reason_of(url.replace(sig, bad)) == "bad_signature"


segment = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)


@FUZZ
@given(
    st.lists(segment, max_size=4),
    st.lists(st.tuples(segment, segment), max_size=5),
    st.randoms(use_true_random=False),
)
def test_fuzz_round_trip_any_path_and_params_in_any_order(
    path_segments: list[str], params: list[tuple[str, str]], rnd: random.Random
) -> None:
    params = [(k, v) for k, v in params if k not in ("exp", "sig")]
    path = "/" + "/".join(quote(s, safe="") for s in path_segments)
    url = signed(f"https://pod.example{path}?{urlencode(params)}")
    verify_url(url, secret=SECRET, now=NOW)
    pairs = parse_qsl(urlsplit(url).query, keep_blank_values=True)
    rnd.shuffle(pairs)
    verify_url(replace_query(url, urlencode(pairs)), secret=SECRET, now=NOW)
    assert reason_of(url, secret="another-secret") == "bad_signature"
