"""``multipart/form-data`` bodies, both ways, for the MONAI Label routes (RFC 7578).

MONAI Label's Slicer plugin sends every upload and inference request as a form and reads inference
results as one: a ``params`` JSON part and one file part holding the label map. Forms are parsed here
from the whole body, already bounded by the route, with bytes searches (no per-line work on a
volume), and file contents are returned as views into that body, never copied.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

MAX_PARTS = 16
MAX_PART_HEADER_BYTES = 16 * 1024
_PARAMETER = re.compile(r';\s*([A-Za-z0-9_*-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


class MultipartError(ValueError):
    """A body that is not the form the route expects; the message says what to send instead."""


@dataclass(frozen=True)
class FormPart:
    """One part of a form: its field ``name``, the ``filename`` of a file part (else None) and its bytes."""

    name: str
    filename: str | None
    content_type: str | None
    data: memoryview

    def text(self) -> str:
        try:
            return bytes(self.data).decode("utf-8")
        except UnicodeDecodeError as error:
            raise MultipartError(f"form field {self.name!r} is not UTF-8 text") from error


def header_parameters(value: str) -> tuple[str, dict[str, str]]:
    """``(main value, {parameter: value})`` of a header such as ``form-data; name="file"; filename="a.nrrd"``
    (parameter names lower-cased, quotes and backslash escapes removed)."""
    main, _, rest = value.partition(";")
    parameters = {}
    for name, raw in _PARAMETER.findall(";" + rest):
        raw = raw.strip()
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        parameters[name.lower()] = raw
    return main.strip().lower(), parameters


def parse_form(body: bytes, content_type: str | None) -> list[FormPart]:
    """The parts of a ``multipart/form-data`` ``body`` sent with header ``content_type``, in order.

    Raises MultipartError for another content type, a missing boundary, a body that does not close
    its last part, more than ``MAX_PARTS`` parts or a part without a field name.
    """
    media_type, parameters = header_parameters(content_type or "")
    if media_type != "multipart/form-data":
        raise MultipartError(f"expected a multipart/form-data body, got {media_type or 'no Content-Type'}")
    boundary = parameters.get("boundary", "")
    if not 1 <= len(boundary) <= 200:
        raise MultipartError("the multipart Content-Type has no usable boundary parameter")
    delimiter = b"--" + boundary.encode("latin-1")
    view = memoryview(body)
    start = body.find(delimiter)
    if start < 0:
        raise MultipartError("the body holds no part of its multipart boundary")
    parts: list[FormPart] = []
    position = start + len(delimiter)
    while True:
        if body.startswith(b"--", position):
            return parts
        line_end = body.find(b"\r\n", position)
        if line_end < 0 or body[position:line_end].strip(b" \t"):
            raise MultipartError("a multipart boundary is followed by something other than a line break")
        if len(parts) == MAX_PARTS:
            raise MultipartError(f"the form has more than {MAX_PARTS} parts")
        headers_end = body.find(b"\r\n\r\n", line_end, line_end + MAX_PART_HEADER_BYTES)
        if headers_end < 0:
            raise MultipartError(f"a part's headers are longer than {MAX_PART_HEADER_BYTES} bytes or unterminated")
        content_start = headers_end + 4
        content_end = body.find(b"\r\n" + delimiter, content_start)
        if content_end < 0:
            raise MultipartError("the body ends inside a part (its closing boundary is missing)")
        parts.append(_part(bytes(view[line_end + 2:headers_end]), view[content_start:content_end]))
        position = content_end + 2 + len(delimiter)


def _part(header_block: bytes, data: memoryview) -> FormPart:
    headers: dict[str, str] = {}
    for line in header_block.decode("utf-8", errors="replace").split("\r\n"):
        name, separator, value = line.partition(":")
        if separator:
            headers[name.strip().lower()] = value.strip()
    disposition, parameters = header_parameters(headers.get("content-disposition", ""))
    name = parameters.get("name")
    if disposition != "form-data" or not name:
        raise MultipartError("a form part lacks 'Content-Disposition: form-data; name=...'")
    return FormPart(name=name, filename=parameters.get("filename"), content_type=headers.get("content-type"),
                    data=data)


def encode_form(fields: list[tuple[str, str | None, str, bytes]]) -> tuple[str, bytes]:
    """``(Content-Type header, body)`` of a form of ``(name, filename or None, content type, bytes)`` parts."""
    boundary = uuid.uuid4().hex
    chunks: list[bytes] = []
    for name, filename, content_type, data in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        chunks += [f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {content_type}\r\n\r\n"
                   .encode(), data, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", b"".join(chunks)
