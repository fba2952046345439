"""A small ``multipart/form-data`` reader for the OpenAI edits endpoint.

The stdlib's ``cgi`` module is deprecated (gone in 3.13) and ``email`` can mangle binary parts, so
this splits on the boundary by hand: image uploads must arrive byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import Message


@dataclass(frozen=True)
class FormPart:
    name: str
    data: bytes
    filename: str | None = None
    content_type: str | None = None

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


def _header_params(name: str, value: str) -> Message:
    message = Message()
    message[name] = value
    return message


def boundary_of(content_type: str) -> str | None:
    """The boundary of a ``multipart/form-data`` Content-Type, or ``None`` for anything else."""
    header = _header_params("content-type", content_type)
    if header.get_content_type() != "multipart/form-data":
        return None
    boundary = header.get_param("boundary")
    return boundary if isinstance(boundary, str) and boundary else None


def parse_multipart(content_type: str, body: bytes) -> list[FormPart]:
    """Every part of a form body; raises ``ValueError`` when the body is not one."""
    boundary = boundary_of(content_type)
    if boundary is None:
        raise ValueError(f"Content-Type {content_type!r} is not multipart/form-data with a boundary")
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    chunks = (b"\r\n" + body).split(delimiter)
    if len(chunks) < 2:
        raise ValueError("multipart body has no parts")
    parts = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break
        parts.append(_parse_part(chunk.removeprefix(b"\r\n")))
    return parts


def _parse_part(chunk: bytes) -> FormPart:
    head, sep, data = chunk.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError("multipart part without a header block")
    headers: dict[str, str] = {}
    for line in head.decode("utf-8", "replace").split("\r\n"):
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    disposition = _header_params("content-disposition", headers.get("content-disposition", ""))
    name = disposition.get_param("name", header="content-disposition")
    if not isinstance(name, str):
        raise ValueError("multipart part without a name")
    filename = disposition.get_filename()
    return FormPart(name=name, data=data, filename=filename, content_type=headers.get("content-type"))
