"""Forms both ways: what the plugin and ``requests`` send parses, what we answer parses back, bad bodies say why."""

from __future__ import annotations

import pytest
import requests
from tsfm_backend.server.monailabel.multipart import MAX_PARTS, MultipartError, encode_form, parse_form


def test_a_requests_form_parses_with_fields_files_and_binary_content() -> None:
    payload = bytes(range(256)) * 40 + b"\r\n--not-the-boundary\r\n"
    prepared = requests.Request("PUT", "http://x/session/", data={"client_id": "user-xyz"},
                                files=[("files", ("ct scan.nii.gz", payload))]).prepare()
    parts = parse_form(prepared.body, prepared.headers["Content-Type"])
    assert [(p.name, p.filename) for p in parts] == [("client_id", None), ("files", "ct scan.nii.gz")]
    assert parts[0].text() == "user-xyz" and bytes(parts[1].data) == payload


def test_the_plugins_boundary_with_a_dollar_sign_and_full_paths_parse() -> None:
    boundary = "----------lImIt_of_THE_fIle_eW_$"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n\r\n{{"a": 1}}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="/tmp/Slicer/tmpab.nii.gz"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + b"\x00\x01\r\n" + f"--{boundary}--\r\n".encode()
    params, upload = parse_form(body, f"multipart/form-data; boundary={boundary}")
    assert params.text() == '{"a": 1}' and upload.filename == "/tmp/Slicer/tmpab.nii.gz"
    assert upload.content_type == "application/octet-stream" and bytes(upload.data) == b"\x00\x01"


def test_our_answer_parses_back() -> None:
    content_type, body = encode_form([("params", None, "application/json", b'{"label_names": {"x": 1}}'),
                                      ("image", "tsfm-1.nrrd", "application/octet-stream", b"NRRD\x00\xff")])
    params, image = parse_form(body, content_type)
    assert (params.name, params.filename, params.text()) == ("params", None, '{"label_names": {"x": 1}}')
    assert (image.name, image.filename, bytes(image.data)) == ("image", "tsfm-1.nrrd", b"NRRD\x00\xff")


@pytest.mark.parametrize(("body", "content_type", "problem"), [
    (b"--b\r\n\r\nx\r\n--b--", "application/json", "multipart/form-data"),
    (b"--b\r\n\r\nx\r\n--b--", "multipart/form-data", "boundary"),
    (b"no boundary here", "multipart/form-data; boundary=b", "no part"),
    (b'--b\r\nContent-Disposition: form-data; name="a"\r\n\r\nunterminated', "multipart/form-data; boundary=b",
     "closing boundary"),
    (b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b--\r\n", "multipart/form-data; boundary=b", "name="),
    (b"--bjunk\r\n", "multipart/form-data; boundary=b", "line break"),
    (b'--b\r\nContent-Disposition: form-data; name="a"\r\n' + b"X: y\r\n" * 5000, "multipart/form-data; boundary=b",
     "headers"),
])
def test_malformed_forms_say_what_is_wrong(body: bytes, content_type: str, problem: str) -> None:
    with pytest.raises(MultipartError, match=problem):
        parse_form(body, content_type)


def test_a_form_holds_a_bounded_number_of_parts() -> None:
    content_type, body = encode_form([(f"f{n}", None, "text/plain", b"x") for n in range(MAX_PARTS)])
    assert len(parse_form(body, content_type)) == MAX_PARTS
    content_type, body = encode_form([(f"f{n}", None, "text/plain", b"x") for n in range(MAX_PARTS + 1)])
    with pytest.raises(MultipartError, match="more than"):
        parse_form(body, content_type)
