"""Pure blobstore pieces: hashing, sharding, and output manifests (no I/O)."""

from __future__ import annotations

import base64
import binascii
import copy
import json
import struct
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blobstore import (
    BlobCorrupt,
    BlobError,
    BlobNotFound,
    InvalidBlobHash,
    InvalidManifest,
    PendingBlob,
    build_manifest,
    is_binary_mime,
    is_json_mime,
    is_manifest,
    manifest_blob_hashes,
    resolve_manifest,
    sha256_hex,
    shard_path,
    validate_hash,
)
from blobstore.manifest import PREVIEW_CHARS

GOOD = "ab" + "cd" + "0" * 60


def make_png(width: int = 3, height: int = 2) -> bytes:
    """A real (tiny, red) PNG built by hand."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


class Blobs(dict[str, bytes]):
    """An in-memory stand-in for the store."""

    def add(self, pending: list[PendingBlob]) -> None:
        for p in pending:
            assert sha256_hex(p.data) == p.hash
            self[p.hash] = p.data

    def read(self, h: str) -> bytes:
        if h not in self:
            raise BlobNotFound(h)
        return self[h]


def normalized(output: dict[str, Any]) -> dict[str, Any]:
    """The documented normalization: lists of str outside JSON mime types are joined."""

    def join(v: Any) -> Any:
        return "".join(v) if isinstance(v, list) and all(isinstance(x, str) for x in v) else v

    out = copy.deepcopy(output)
    if out["output_type"] == "stream" and "text" in out:
        out["text"] = join(out["text"])
    if out["output_type"] != "error" and isinstance(out.get("data"), dict):
        out["data"] = {m: v if is_json_mime(m) else join(v) for m, v in out["data"].items()}
    return out


def roundtrip(output: dict[str, Any], **kw: Any) -> tuple[dict[str, Any], list[PendingBlob]]:
    before = copy.deepcopy(output)
    manifest, pending = build_manifest(output, **kw)
    assert output == before, "build_manifest must not mutate its input"
    assert is_manifest(manifest)
    # The manifest is what the document stores: it must be plain JSON.
    assert json.loads(json.dumps(manifest)) == manifest
    blobs = Blobs()
    blobs.add(pending)
    assert manifest_blob_hashes(manifest) == {p.hash for p in pending}
    assert resolve_manifest(manifest, blobs.read) == normalized(output)
    return manifest, pending


# --- hashing -----------------------------------------------------------------------------


def test_sha256_hex_known_vector() -> None:
    assert sha256_hex(b"abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_validate_hash_accepts_digest() -> None:
    h = sha256_hex(b"x")
    assert validate_hash(h) == h


@pytest.mark.parametrize(
    "bad",
    [
        "../../etc/passwd",
        "../" + "a" * 61,
        "A" * 64,
        sha256_hex(b"x").upper(),
        "a" * 63,
        "a" * 65,
        "",
        "a" * 63 + "\n",
        "a" * 64 + "\n",
        " " + "a" * 63,
        "g" * 64,
        "\u0661" * 64,  # Arabic-Indic digit one: a "digit", not hex
        "ab/cd" + "0" * 59,
    ],
)
def test_validate_hash_rejects(bad: str) -> None:
    with pytest.raises(InvalidBlobHash) as exc_info:
        validate_hash(bad)
    assert exc_info.value.code == "invalid_blob_hash"
    assert isinstance(exc_info.value, BlobError)
    assert "64 lowercase hex" in str(exc_info.value)


def test_validate_hash_rejects_non_str() -> None:
    with pytest.raises(InvalidBlobHash):
        validate_hash(None)  # type: ignore[arg-type]


def test_shard_path() -> None:
    assert shard_path(GOOD) == ("ab", "cd", GOOD)
    with pytest.raises(InvalidBlobHash):
        shard_path("../../etc/passwd")


@pytest.mark.parametrize(
    ("cls", "code"),
    [
        ("InvalidBlobHash", "invalid_blob_hash"),
        ("BlobNotFound", "blob_not_found"),
        ("BlobTooLarge", "blob_too_large"),
        ("BlobCorrupt", "blob_corrupt"),
        ("BlobWriteFailed", "blob_write_failed"),
        ("BlobReadFailed", "blob_read_failed"),
        ("InvalidManifest", "invalid_manifest"),
    ],
)
def test_error_codes(cls: str, code: str) -> None:
    import blobstore

    err = getattr(blobstore, cls)
    assert issubclass(err, BlobError)
    assert err.code == code


# --- mime classification -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("mime", "binary", "is_json"),
    [
        ("image/png", True, False),
        ("image/jpeg", True, False),
        ("image/gif", True, False),
        ("image/webp", True, False),
        ("application/pdf", True, False),
        ("image/svg+xml", False, False),
        ("text/plain", False, False),
        ("text/html", False, False),
        ("text/latex", False, False),
        ("application/json", False, True),
        ("application/vnd.plotly.v1+json", False, True),
        ("application/vnd.jupyter.widget-view+json", False, True),
        ("application/javascript", False, False),
        ("Image/PNG; foo=bar", True, False),
    ],
)
def test_mime_classification(mime: str, binary: bool, is_json: bool) -> None:
    assert is_binary_mime(mime) is binary
    assert is_json_mime(mime) is is_json


# --- manifests: per output type --------------------------------------------------------------


def test_small_stream_stays_inline() -> None:
    out = {"output_type": "stream", "name": "stdout", "text": "hello\n"}
    manifest, pending = roundtrip(out)
    assert pending == []
    assert manifest == {
        "manifest_version": 1,
        "output_type": "stream",
        "name": "stdout",
        "text": {"inline": "hello\n", "encoding": "text"},
    }


def test_large_stream_spills_with_preview() -> None:
    text = "".join(f"line {i}\n" for i in range(2000))
    out = {"output_type": "stream", "name": "stderr", "text": text}
    manifest, pending = roundtrip(out)
    ref = manifest["text"]
    assert len(pending) == 1
    assert pending[0].data == text.encode()
    assert pending[0].media_type == "text/plain"
    assert ref["blob"] == pending[0].hash == sha256_hex(text.encode())
    assert ref["size"] == len(text.encode())
    assert ref["media_type"] == "text/plain"
    assert ref["encoding"] == "text"
    assert ref["preview"] == {"head": text[:PREVIEW_CHARS], "tail": text[-PREVIEW_CHARS:]}
    assert len(json.dumps(manifest)) < 1500


def test_stream_preview_never_overlaps() -> None:
    text = "é" * 600  # 1200 bytes: spills, but only 600 chars
    manifest, _ = roundtrip({"output_type": "stream", "name": "stdout", "text": text})
    preview = manifest["text"]["preview"]
    assert preview["head"] + preview["tail"] == text


@pytest.mark.parametrize(
    ("text", "inline"),
    [
        ("a" * 1024, True),
        ("a" * 1025, False),
        ("é" * 512, True),  # 512 chars, 1024 UTF-8 bytes
        ("é" * 512 + "a", False),  # 513 chars, 1025 bytes: threshold counts bytes
        ("€" * 341 + "a", True),  # 3 * 341 + 1 = 1024 bytes
        ("😀" * 256 + "a", False),  # 4 * 256 + 1 = 1025 bytes
        ("", True),
    ],
)
def test_threshold_edges_in_utf8_bytes(text: str, inline: bool) -> None:
    for out in (
        {"output_type": "stream", "name": "stdout", "text": text},
        {"output_type": "display_data", "data": {"text/html": text}, "metadata": {}},
    ):
        manifest, pending = roundtrip(out)
        content = manifest["text"] if "text" in manifest else manifest["data"]["text/html"]
        assert ("inline" in content) is inline
        assert len(pending) == (0 if inline else 1)


def test_threshold_is_configurable() -> None:
    out = {"output_type": "stream", "name": "stdout", "text": "abcd"}
    assert "inline" in build_manifest(out, inline_threshold=4)[0]["text"]
    assert "blob" in build_manifest(out, inline_threshold=3)[0]["text"]
    assert "blob" in build_manifest({**out, "text": "a"}, inline_threshold=0)[0]["text"]
    with pytest.raises(ValueError, match="inline_threshold"):
        build_manifest(out, inline_threshold=-1)


def test_png_is_decoded_to_real_bytes() -> None:
    png = make_png()
    b64 = base64.b64encode(png).decode()
    out = {
        "output_type": "display_data",
        "data": {"image/png": b64, "text/plain": "<IPython.core.display.Image object>"},
        "metadata": {"image/png": {"width": 3, "height": 2}},
        "transient": {"display_id": "fig-1"},
    }
    manifest, pending = roundtrip(out)
    (blob,) = pending
    assert blob.data == png
    assert blob.data.startswith(b"\x89PNG")
    assert blob.media_type == "image/png"
    assert manifest["data"]["image/png"] == {
        "blob": sha256_hex(png),
        "size": len(png),
        "media_type": "image/png",
        "encoding": "base64",
    }
    assert manifest["data"]["text/plain"] == {
        "inline": "<IPython.core.display.Image object>",
        "encoding": "text",
    }
    assert manifest["metadata"] == out["metadata"]
    assert manifest["transient"] == {"display_id": "fig-1"}


@pytest.mark.parametrize(
    "encode",
    [
        lambda b: base64.b64encode(b).decode(),  # ipykernel / IPython today
        lambda b: binascii.b2a_base64(b).decode(),  # older json_clean: trailing newline
        lambda b: base64.encodebytes(b).decode(),  # 76-column MIME lines
        lambda b: "\n".join(base64.b64encode(b).decode()[i : i + 64] for i in range(0, 400, 64)),
    ],
)
def test_base64_layouts_round_trip_exactly(encode: Any) -> None:
    data = make_png(20, 10) + bytes(range(256))
    out = {"output_type": "display_data", "data": {"image/png": encode(data)}, "metadata": {}}
    _, pending = roundtrip(out)
    assert pending[0].data == data


@pytest.mark.parametrize(
    "value",
    ["not base64!", "abc", "YQ", "YWJj\r\n", "\u00e9\u00e9\u00e9\u00e9", "YW Jj"],
)
def test_non_reproducible_base64_kept_as_text(value: str) -> None:
    out = {"output_type": "display_data", "data": {"image/png": value}, "metadata": {}}
    manifest, _ = roundtrip(out)
    assert manifest["data"]["image/png"]["encoding"] == "text"


def test_small_binary_still_goes_to_a_blob() -> None:
    out = {"output_type": "display_data", "data": {"image/gif": "R0lGODlh"}, "metadata": {}}
    manifest, pending = roundtrip(out)
    assert manifest["data"]["image/gif"]["encoding"] == "base64"
    assert pending[0].data == base64.b64decode("R0lGODlh")


def test_javascript_is_text_not_base64() -> None:
    out = {"output_type": "display_data", "data": {"application/javascript": "abcd"}}
    manifest, pending = roundtrip(out)
    assert manifest["data"]["application/javascript"] == {"inline": "abcd", "encoding": "text"}
    assert pending == []


def test_small_execute_result() -> None:
    out = {
        "output_type": "execute_result",
        "execution_count": 7,
        "data": {"text/plain": "42"},
        "metadata": {},
    }
    manifest, pending = roundtrip(out)
    assert pending == []
    assert manifest == {
        "manifest_version": 1,
        "output_type": "execute_result",
        "execution_count": 7,
        "data": {"text/plain": {"inline": "42", "encoding": "text"}},
        "metadata": {},
    }


def test_json_is_deterministic_and_inline_when_small() -> None:
    a = {"b": [1, 2.5, None], "a": {"y": "é", "x": True}}
    b = {"a": {"x": True, "y": "é"}, "b": [1, 2.5, None]}
    out_a = {"output_type": "display_data", "data": {"application/json": a}, "metadata": {}}
    manifest, pending = roundtrip(out_a)
    assert pending == []
    assert manifest["data"]["application/json"] == {
        "inline": '{"a":{"x":true,"y":"é"},"b":[1,2.5,null]}',
        "encoding": "json",
    }
    big_a = {"output_type": "display_data", "data": {"application/vnd.x+json": [a] * 100}}
    big_b = {"output_type": "display_data", "data": {"application/vnd.x+json": [b] * 100}}
    _, pa = roundtrip(big_a)
    _, pb = roundtrip(big_b)
    assert pa[0].hash == pb[0].hash  # same value, any key order -> same blob
    assert pa[0].media_type == "application/vnd.x+json"


def test_non_json_values_are_rejected() -> None:
    out = {"output_type": "display_data", "data": {"application/json": {"x": {1, 2}}}}
    with pytest.raises(InvalidManifest, match="not JSON data"):
        build_manifest(out)


def test_error_output_is_untouched() -> None:
    out = {
        "output_type": "error",
        "ename": "ZeroDivisionError",
        "evalue": "division by zero",
        "traceback": ["\x1b[0;31m---\x1b[0m", "x" * 5000],
    }
    manifest, pending = roundtrip(out)
    assert pending == []
    assert manifest == {"manifest_version": 1, **out}


def test_duplicate_payloads_share_one_pending_blob() -> None:
    text = "z" * 4000
    out = {"output_type": "display_data", "data": {"text/plain": text, "text/markdown": text}}
    manifest, pending = roundtrip(out)
    assert len(pending) == 1
    assert manifest["data"]["text/plain"]["blob"] == manifest["data"]["text/markdown"]["blob"]


def test_multiline_lists_are_joined() -> None:
    out = {
        "output_type": "display_data",
        "data": {
            "text/plain": ["a\n", "b\n", "c"],
            "image/png": [base64.b64encode(make_png()).decode()],
            "application/json": ["kept", "as", "a", "list"],
        },
        "metadata": {},
    }
    manifest, pending = build_manifest(out)
    blobs = Blobs()
    blobs.add(pending)
    resolved = resolve_manifest(manifest, blobs.read)
    assert resolved["data"]["text/plain"] == "a\nb\nc"
    assert resolved["data"]["image/png"] == base64.b64encode(make_png()).decode()
    assert resolved["data"]["application/json"] == ["kept", "as", "a", "list"]
    stream = {"output_type": "stream", "name": "stdout", "text": ["x\n", "y"]}
    m, _ = build_manifest(stream)
    assert resolve_manifest(m, Blobs().read)["text"] == "x\ny"


def test_lone_surrogates_survive() -> None:
    text = "bad \ud800 surrogate " * 100
    roundtrip({"output_type": "stream", "name": "stdout", "text": text})
    roundtrip({"output_type": "stream", "name": "stdout", "text": "\udfff"})


def test_unknown_output_type_and_extra_keys_pass_through() -> None:
    out = {"output_type": "future_kind", "text": "x" * 5000, "data": {"text/plain": "y" * 9}}
    manifest, _ = roundtrip(out)
    assert manifest["text"] == "x" * 5000  # only streams carry a text payload


def test_build_rejects_bad_input() -> None:
    with pytest.raises(InvalidManifest):
        build_manifest({"name": "stdout"})
    with pytest.raises(InvalidManifest):
        build_manifest({"output_type": "display_data", "data": "nope"})
    manifest, _ = build_manifest({"output_type": "stream", "name": "stdout", "text": "x"})
    with pytest.raises(InvalidManifest, match="already"):
        build_manifest(manifest)


def test_is_manifest() -> None:
    manifest, _ = build_manifest({"output_type": "stream", "name": "stdout", "text": "x"})
    assert is_manifest(manifest)
    assert not is_manifest({"output_type": "stream", "name": "stdout", "text": "x"})
    assert not is_manifest({"manifest_version": 2, "output_type": "stream"})
    assert not is_manifest(None)
    assert not is_manifest([manifest])


def test_manifest_blob_hashes() -> None:
    png = make_png()
    out = {
        "output_type": "display_data",
        "data": {"image/png": base64.b64encode(png).decode(), "text/plain": "x" * 2000},
    }
    manifest, _ = build_manifest(out)
    assert manifest_blob_hashes(manifest) == {sha256_hex(png), sha256_hex(b"x" * 2000)}
    assert manifest_blob_hashes(out) == set()  # a raw output references nothing
    bad = copy.deepcopy(manifest)
    bad["data"]["image/png"]["blob"] = "../../etc/passwd"
    with pytest.raises(InvalidManifest, match="bad blob hash"):
        manifest_blob_hashes(bad)


def test_resolve_errors() -> None:
    text = "q" * 3000
    manifest, pending = build_manifest({"output_type": "stream", "name": "o", "text": text})
    with pytest.raises(InvalidManifest):
        resolve_manifest({"output_type": "stream", "text": text}, Blobs().read)
    with pytest.raises(BlobNotFound):
        resolve_manifest(manifest, Blobs().read)
    with pytest.raises(BlobCorrupt, match="3000"):
        resolve_manifest(manifest, lambda h: b"short")
    with pytest.raises(BlobCorrupt, match="UTF-8"):
        resolve_manifest(manifest, lambda h: b"\xff" * 3000)
    broken = copy.deepcopy(manifest)
    broken["text"] = {"blob": pending[0].hash, "size": "big"}
    with pytest.raises(InvalidManifest, match="malformed"):
        resolve_manifest(broken, Blobs().read)
    broken["text"] = "raw"
    with pytest.raises(InvalidManifest, match="not a content object"):
        resolve_manifest(broken, Blobs().read)
    no_data = {"manifest_version": 1, "output_type": "display_data", "data": None}
    with pytest.raises(InvalidManifest, match="'data'"):
        resolve_manifest(no_data, Blobs().read)
    with pytest.raises(InvalidManifest, match="'data'"):
        manifest_blob_hashes(no_data)


# --- property: resolve(build(o)) == o ----------------------------------------------------

_chars = st.characters(exclude_categories=())  # includes lone surrogates
_text = st.one_of(
    st.text(_chars, max_size=80),
    st.text(st.sampled_from(["a", "\n", "é", "€", "😀", "\r", "\t"]), max_size=300),
)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4)
    ),
    max_leaves=12,
)
_b64 = st.sampled_from(
    [
        lambda b: base64.b64encode(b).decode(),
        lambda b: binascii.b2a_base64(b).decode(),
        lambda b: base64.encodebytes(b).decode(),
    ]
)


@st.composite
def _mime_value(draw: st.DrawFn) -> tuple[str, Any]:
    kind = draw(st.sampled_from(["text", "binary", "json", "oddball"]))
    if kind == "text":
        mime = draw(st.sampled_from(["text/plain", "text/html", "text/markdown", "image/svg+xml"]))
        return mime, draw(_text)
    if kind == "binary":
        mime = draw(st.sampled_from(["image/png", "image/jpeg", "application/pdf", "image/webp"]))
        raw = draw(st.binary(max_size=40) | st.binary(min_size=58, max_size=200))
        return mime, draw(_b64)(raw)
    if kind == "json":
        mime = draw(st.sampled_from(["application/json", "application/vnd.vegalite.v5+json"]))
        return mime, draw(_json)
    # A binary mime holding something that is not reproducible base64, or non-str data.
    return draw(st.sampled_from(["image/png", "application/x-foo"])), draw(_text | _json)


_bundle = st.lists(_mime_value(), max_size=4).map(dict)
_metadata = st.dictionaries(st.text(max_size=8), _json, max_size=3)

_outputs = st.one_of(
    st.fixed_dictionaries(
        {
            "output_type": st.just("stream"),
            "name": st.sampled_from(["stdout", "stderr"]),
            "text": _text,
        }
    ),
    st.fixed_dictionaries(
        {"output_type": st.just("display_data"), "data": _bundle, "metadata": _metadata},
        optional={"transient": st.fixed_dictionaries({"display_id": st.text(max_size=8)})},
    ),
    st.fixed_dictionaries(
        {
            "output_type": st.just("execute_result"),
            "execution_count": st.none() | st.integers(min_value=1),
            "data": _bundle,
            "metadata": _metadata,
        }
    ),
    st.fixed_dictionaries(
        {
            "output_type": st.just("error"),
            "ename": st.text(max_size=20),
            "evalue": _text,
            "traceback": st.lists(_text, max_size=3),
        }
    ),
)


@settings(max_examples=300, deadline=None)
@given(output=_outputs, threshold=st.sampled_from([0, 1, 16, 64, 1024]))
def test_roundtrip_property(output: dict[str, Any], threshold: int) -> None:
    _, pending = roundtrip(output, inline_threshold=threshold)
    for p in pending:
        assert p.hash == sha256_hex(p.data)


@settings(max_examples=100, deadline=None)
@given(n=st.integers(min_value=1015, max_value=1035), ch=st.sampled_from(["a", "é", "€", "😀"]))
def test_threshold_property_default(n: int, ch: str) -> None:
    size = len(ch.encode())
    text = ch * (n // size) + "a" * (n % size)  # exactly n UTF-8 bytes
    assert len(text.encode()) == n
    manifest, _ = roundtrip({"output_type": "stream", "name": "stdout", "text": text})
    assert ("inline" in manifest["text"]) is (n <= 1024)


@settings(max_examples=100, deadline=None)
@given(parts=st.lists(_text, max_size=5), threshold=st.sampled_from([0, 16, 1024]))
def test_multiline_normalization_property(parts: list[str], threshold: int) -> None:
    joined = "".join(parts)
    for out, expect in (
        (
            {"output_type": "stream", "name": "stdout", "text": parts},
            {"output_type": "stream", "name": "stdout", "text": joined},
        ),
        (
            {"output_type": "display_data", "data": {"text/plain": parts}, "metadata": {}},
            {"output_type": "display_data", "data": {"text/plain": joined}, "metadata": {}},
        ),
    ):
        manifest, pending = build_manifest(out, inline_threshold=threshold)
        blobs = Blobs()
        blobs.add(pending)
        assert resolve_manifest(manifest, blobs.read) == expect
