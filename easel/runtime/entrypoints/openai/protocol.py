"""The bodies of OpenAI's image, video and model APIs as Easel serves them, and the error shape of every failure."""

import json
import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from easel.errors import InvalidInputError
from easel.runtime.cache.spec import parse_cache_spec

MAX_IMAGES_PER_REQUEST = 10  # OpenAI's bound on `n`
MAX_INFERENCE_STEPS = 1000  # Easel's input validation allows as many
MAX_SEED = 2**63 - 1  # torch generators take 64-bit seeds
SIZE_PATTERN = r"^(auto|[1-9][0-9]*x[1-9][0-9]*)$"

LoRAName = Annotated[str, Field(min_length=1)]
Strength = Annotated[float, Field(allow_inf_nan=False)]
# A choice among loaded adapters: a name, a list of names (each at strength 1), or {name: strength}.
LoRAChoice = LoRAName | list[LoRAName] | dict[LoRAName, Strength]


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
    lora: LoRAChoice | None = Field(None, description="loaded LoRA adapters for this request only")
    cache: str | None = Field(None, description="a step-cache spec or preset for this request; null: the server's")
    quality_check: bool = Field(False, description="also run the exact path (no cache) and compare the outputs")

    @field_validator("cache")
    @classmethod
    def _cache_spec(cls, value: str | None) -> str | None:
        """A bad spec is a 400 naming `cache`, whose message lists the grammar."""
        try:
            parse_cache_spec(value)
        except InvalidInputError as error:
            # Not a ValueError: pydantic would prefix its message with "Value error, ".
            raise PydanticCustomError("invalid_cache_spec", "{problem}", {"problem": str(error)}) from None
        return value

    @field_validator("lora", mode="before")
    @classmethod
    def _lora_from_form(cls, value: Any) -> Any:
        """A multipart form sends `lora` as text: a list or an object arrives as its JSON."""
        if isinstance(value, str) and value.startswith(("[", "{")):
            try:
                return json.loads(value)
            except json.JSONDecodeError as error:
                raise ValueError(f"lora is not valid JSON ({error})") from None
        return value

    def sampling_params(self) -> dict[str, Any]:
        """`DiffGenerator.generate` keyword arguments (with `quality_check`); None keeps the model's default (for
        `cache`, the server's)."""
        return self.model_dump(include=set(GenerationOptions.model_fields) - {"model", "lora"})

    def lora_names(self) -> list[str]:
        """The adapters `lora` names."""
        return [self.lora] if isinstance(self.lora, str) else list(self.lora or [])


class ImageRequest(GenerationOptions):
    """POST /v1/images/generations (JSON), and the text fields of /v1/images/edits (multipart)."""

    n: int = Field(1, ge=1, le=MAX_IMAGES_PER_REQUEST)
    size: str | None = Field(None, pattern=SIZE_PATTERN, description='"WxH" in pixels, or "auto"')
    response_format: Literal["b64_json", "url"] = "b64_json"
    output_format: Literal["png", "jpeg", "webp"] = "png"
    output_compression: int | None = Field(None, ge=0, le=100, description="jpeg/webp quality, 0..100")
    background: Literal["auto", "opaque", "transparent"] | None = None
    # OpenAI's fields that choose among its own models' settings and mean nothing here: accepted, and ignored, so
    # that tools written for its API work unchanged (README: Serving).
    quality: Literal["auto", "low", "medium", "high", "standard", "hd"] | None = None
    style: Literal["vivid", "natural"] | None = None
    moderation: Literal["auto", "low"] | None = None
    user: str | None = None
    # Server-sent events: `partial_images` previews of the first image while it is made, then each image.
    stream: bool = False
    partial_images: int = Field(0, ge=0, le=3)

    @field_validator("background")
    @classmethod
    def _background(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value == "transparent" and info.data.get("output_format") == "jpeg":
            raise PydanticCustomError("transparent_jpeg", "JPEG has no transparency: ask for png or webp")
        return value

    @field_validator("partial_images")
    @classmethod
    def _partial_images(cls, value: int, info: ValidationInfo) -> int:
        if value and not info.data.get("stream"):
            raise PydanticCustomError("needs_stream", "partial images come only with stream=true")
        return value


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


class SetLoRARequest(StrictModel):
    """POST /v1/set_lora, as SGLang Diffusion names its fields: the adapters to activate (loading those given a
    `lora_path`), each with a strength and (when loaded) the DiT(s) it goes into; one value is shared by all."""

    lora_nickname: LoRAName | list[LoRAName]
    lora_path: str | None | list[str | None] = None
    strength: Strength | list[Strength] = 1.0
    target: str | list[str] = "transformer"

    @model_validator(mode="after")
    def _same_lengths(self) -> "SetLoRARequest":
        names = self.names()
        if len(set(names)) != len(names):
            raise ValueError(f"lora_nickname names an adapter twice: {names}")
        for field in ("lora_path", "strength", "target"):
            value = getattr(self, field)
            if isinstance(value, list) and len(value) != len(names):
                raise ValueError(f"{field} has {len(value)} values for {len(names)} lora_nickname(s)")
        return self

    def names(self) -> list[str]:
        return [self.lora_nickname] if isinstance(self.lora_nickname, str) else self.lora_nickname

    def adapters(self) -> list[tuple[str, str | None, float, str]]:
        """(name, lora_path, strength, target) per named adapter, a shared value repeated."""
        count = len(self.names())

        def each(value: Any) -> list[Any]:
            return value if isinstance(value, list) else [value] * count

        return list(zip(self.names(), each(self.lora_path), each(self.strength), each(self.target), strict=True))


class LoRAList(BaseModel):
    """The answer of every LoRA route: each loaded adapter, the server-wide selection, and merged or not."""

    object: Literal["list"] = "list"
    data: list[dict[str, Any]]  # `DiffGenerator.list_loras` entries
    active: dict[str, float]
    merged: bool


class ImageData(BaseModel):
    """One generated image: inline, or where to fetch it."""

    b64_json: str | None = None
    url: str | None = None


class EaselReport(BaseModel):
    """Easel's extension of a generation's answer: what the step cache did (null when none ran), and with
    `quality_check` the comparison with the exact path (null without)."""

    # {"spec": "dbcache:...", "branches": {"cond": {"computed": n, "skipped": m}, ...}}
    cache: dict[str, Any] | None = None
    # `QualityReport.to_dict()`: psnr_db (null: identical), ssim, max_abs_diff, seconds, exact_seconds, speedup, ...
    quality: dict[str, Any] | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    output_format: str
    size: str
    easel: EaselReport


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
    easel: EaselReport | None = None  # once completed
    # Easel's: the frames the content route serves while a block-causal model makes the video (None for others).
    frames_ready: int | None = None


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
