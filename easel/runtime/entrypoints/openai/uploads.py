"""Multipart bodies (/v1/images/edits, /v1/videos): their text fields, and their files checked to be images."""

import io

from fastapi import Request
from PIL import Image
from starlette.datastructures import UploadFile

from easel.runtime.entrypoints.openai.protocol import APIError


async def read_form(request: Request, max_upload_bytes: int) -> tuple[dict[str, str], dict[str, list[bytes]]]:
    """The text fields and the files by field name (OpenAI's client sends several files of one field as `name[]`).
    A body over `max_upload_bytes` gets 413 before it is read, where it says its length."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise APIError(400, "send this route's fields and files as multipart/form-data")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_upload_bytes:
        raise _too_large(max_upload_bytes)
    fields: dict[str, str] = {}
    files: dict[str, list[bytes]] = {}
    async with request.form() as form:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                data = await value.read()
                if len(data) > max_upload_bytes:
                    raise _too_large(max_upload_bytes)
                files.setdefault(name.removesuffix("[]"), []).append(data)
            else:
                fields[name] = value
    return fields, files


def check_images(parts: list[bytes], field: str) -> list[bytes]:
    """The uploaded files of `field`, each checked to be an image Pillow reads."""
    for number, data in enumerate(parts, start=1):
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.verify()
        except Exception as error:  # Pillow raises many kinds for a file that is not an image, or a broken one
            raise APIError(
                400,
                f"{field} file {number} is not an image Easel can read ({error})",
                param=field,
                code="invalid_image",
            ) from None
    return parts


def _too_large(max_upload_bytes: int) -> APIError:
    return APIError(
        413,
        f"the upload is larger than this server takes ({max_upload_bytes / 2**20:g} MB; see --max-upload-mb)",
        code="file_too_large",
    )
