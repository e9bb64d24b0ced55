"""The bodies of OpenAI's image, video and model APIs as Easel serves them, and the error shape of every failure."""

import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

MAX_IMAGES_PER_REQUEST = 10  # OpenAI's bound on `n`
MAX_INFERENCE_STEPS = 1000  # Easel's input validation allows as many
MAX_SEED = 2**63 - 1  # torch generators take 64-bit seeds
SIZE_PATTERN = r"^(auto|[1-9][0-9]*x[1-9][0-9]*)$"


class APIError(Exception):
    """A failure answered as OpenAI answers one: an HTTP status and {"error": {message, type, param, code}}."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def validation_error(errors: Sequence[dict[str, Any]]) -> APIError:
    """The 400 for a body pydantic rejected, naming the first wrong field as OpenAI does."""
    first = errors[0]
    param = ".".join(str(part) for part in first["loc"] if part != "body") or None
    if first["type"] == "extra_forbidden":
        message = f"unknown parameter {param!r}"
    elif first["type"] == "json_invalid":
        message = f"the request body is not valid JSON ({first.get('ctx', {}).get('error', first['msg'])})"
    elif param is None and first["type"] == "model_attributes_type":
        message = "the request body must be a JSON object, sent as Content-Type: application/json"
    else:
        message = f"{param}: {first['msg']}" if param else first["msg"]
    return APIError(400, message, param=param, code="invalid_value")


def parse_form(model: type["StrictModel"], fields: dict[str, str]) -> "StrictModel":
    """A multipart form's text fields validated as `model` (numbers arrive as text and are converted)."""
    try:
        return model.model_validate(fields)
    except ValidationError as error:
        raise validation_error(error.errors()) from None


def parse_size(size: str | None) -> tuple[int | None, int | None]:
    """(width, height) of a validated "WxH", or (None, None) for the model's default ("auto" or not given)."""
    if size is None or size == "auto":
        return None, None
    width, height = re.fullmatch(r"(\d+)x(\d+)", size).groups()
    return int(width), int(height)


class StrictModel(BaseModel):
    """A request body: an unknown field is an error, not something silently ignored."""

    model_config = ConfigDict(extra="forbid")


class GenerationOptions(StrictModel):
    """What every generation request takes: OpenAI's prompt and model, and Easel's sampling extensions."""

    prompt: str = Field(min_length=1)
    model: str | None = None
    negative_prompt: str | None = None
    num_inference_steps: int | None = Field(None, ge=1, le=MAX_INFERENCE_STEPS)
    guidance_scale: float | None = Field(None, ge=0, allow_inf_nan=False)
    true_cfg_scale: float | None = Field(None, ge=0, allow_inf_nan=False)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)

    def sampling_params(self) -> dict[str, Any]:
        """`DiffGenerator.generate` keyword arguments; None keeps the model's default."""
        return self.model_dump(include=set(GenerationOptions.model_fields) - {"model"})


class ImageRequest(GenerationOptions):
    """POST /v1/images/generations (JSON), and the text fields of /v1/images/edits (multipart)."""

    n: int = Field(1, ge=1, le=MAX_IMAGES_PER_REQUEST)
    size: str | None = Field(None, pattern=SIZE_PATTERN, description='"WxH" in pixels, or "auto"')
    response_format: Literal["b64_json", "url"] = "b64_json"
    output_format: Literal["png", "jpeg", "webp"] = "png"


class VideoRequest(GenerationOptions):
    """The text fields of POST /v1/videos (multipart); `num_frames` and `fps` are Easel's extensions."""

    seconds: float | None = Field(None, gt=0, le=600)
    size: str | None = Field(None, pattern=SIZE_PATTERN)
    num_frames: int | None = Field(None, ge=1, le=10_000)
    fps: int | None = Field(None, ge=1, le=240)

    @model_validator(mode="after")
    def _one_length(self) -> "VideoRequest":
        if self.seconds is not None and self.num_frames is not None:
            raise ValueError("give seconds or num_frames, not both")
        return self


class ImageData(BaseModel):
    """One generated image: inline, or where to fetch it."""

    b64_json: str | None = None
    url: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    output_format: str
    size: str


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "easel"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class VideoError(BaseModel):
    code: str
    message: str


class VideoObject(BaseModel):
    """A video job as GET /v1/videos/{id} shows it."""

    id: str
    object: Literal["video"] = "video"
    status: Literal["queued", "in_progress", "completed", "failed"]
    progress: int
    created_at: int
    completed_at: int | None = None
    model: str
    prompt: str
    seconds: str
    size: str
    error: VideoError | None = None


class VideoList(BaseModel):
    object: Literal["list"] = "list"
    data: list[VideoObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class VideoDeleted(BaseModel):
    id: str
    object: Literal["video.deleted"] = "video.deleted"
    deleted: bool = True
