"""The cache spec: `METHOD[:key=value,...]` or a preset name, parsed once per request into a `CacheSpec`."""

import dataclasses

from easel.errors import InvalidInputError

METHODS = ("none", "teacache", "dbcache", "steps")

# The keys each method takes.
KEYS = {
    "none": (),
    "teacache": ("threshold", "warmup", "max_cached", "max_continuous"),
    "dbcache": ("fn", "bn", "threshold", "warmup", "max_cached", "max_continuous", "taylorseer", "order"),
    "steps": ("compute", "every", "warmup", "taylorseer", "order"),
}
_THRESHOLD_RANGE = {"teacache": (0.0, 2.0), "dbcache": (0.0, 1.0)}

GRAMMAR = """\
cache spec: METHOD[:key=value,...] or a preset (fast, balanced, quality); methods and their keys:
  none
  teacache:threshold=T (0..2),warmup=W,max_cached=M,max_continuous=C
  dbcache:fn=F,bn=B,threshold=T (0..1),warmup=W,max_cached=M,max_continuous=C,taylorseer=0|1,order=1|2
  steps:compute=I/J/K... (step indices) or steps:every=K,warmup=W; both take taylorseer=0|1,order=1|2"""


@dataclasses.dataclass(frozen=True)
class CacheSpec:
    """What to cache: the method and its settings (the keys of `GRAMMAR`)."""

    method: str = "none"
    threshold: float = 0.0
    fn: int = 0  # first blocks always computed (dbcache)
    bn: int = 0  # last blocks always computed (dbcache)
    warmup: int = 1  # the first steps, always computed
    max_cached: int | None = None  # skipped steps per branch at most
    max_continuous: int | None = None  # skipped steps in a row at most
    taylorseer: bool = False  # predict a skipped span's residual by a Taylor expansion rather than reuse it
    order: int = 1  # of that expansion
    compute: tuple[int, ...] | None = None  # steps: the computed step indices
    every: int | None = None  # steps: compute every k-th step after the warm-up

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    def __str__(self) -> str:
        if not self.enabled:
            return "none"
        default = CacheSpec(self.method, **_METHOD_DEFAULTS.get(self.method, {}))
        keys = [k for k in KEYS[self.method] if getattr(self, k) != getattr(default, k)]
        return f"{self.method}:" + ",".join(f"{k}={_format(getattr(self, k))}" for k in keys) if keys else self.method


_METHOD_DEFAULTS = {"dbcache": {"fn": 1, "threshold": 0.12, "warmup": 4}, "teacache": {"threshold": 0.3}}

PRESETS = {"fast": "teacache:threshold=0.8", "balanced": "teacache:threshold=0.5", "quality": "teacache:threshold=0.3"}


def parse_cache_spec(text: "str | CacheSpec | None") -> CacheSpec:
    """The `CacheSpec` of a spec string (None and "" mean none); an `InvalidInputError` listing the grammar else."""
    if isinstance(text, CacheSpec):
        return text
    text = (text or "none").strip()
    text = PRESETS.get(text, text)
    method, _, settings = text.partition(":")
    if method not in METHODS:
        _fail(f"unknown cache method {method!r}")
    values: dict = dict(_METHOD_DEFAULTS.get(method, {}))
    for item in filter(None, settings.split(",")):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not value.strip():
            _fail(f"{item!r} is not key=value")
        if key not in KEYS[method]:
            _fail(f"{method} takes no key {key!r} (its keys: {', '.join(KEYS[method]) or 'none'})")
        values[key] = _convert(key, value.strip())
    spec = CacheSpec(method, **values)
    _check(spec)
    return spec


def _convert(key: str, value: str):
    try:
        if key == "threshold":
            return float(value)
        if key == "taylorseer":
            if value not in ("0", "1"):
                raise ValueError
            return value == "1"
        if key == "compute":
            return tuple(sorted({int(step) for step in value.split("/")}))
        return int(value)
    except ValueError:
        _fail(f"{key}={value!r} is not a valid value")


def _check(spec: CacheSpec) -> None:
    low, high = _THRESHOLD_RANGE.get(spec.method, (0.0, 0.0))
    if spec.method in _THRESHOLD_RANGE and not low <= spec.threshold <= high:
        _fail(f"{spec.method} threshold must lie in {low}..{high}, got {spec.threshold}")
    counts = {"fn": spec.fn, "bn": spec.bn, "warmup": spec.warmup}
    counts |= {"max_cached": spec.max_cached, "max_continuous": spec.max_continuous, "every": spec.every}
    for key, value in counts.items():
        if value is not None and value < 0:
            _fail(f"{key} must be 0 or more, got {value}")
    if spec.method == "dbcache" and spec.fn < 1:
        _fail("dbcache needs fn >= 1: its signal is the residual of the first fn blocks")
    if spec.order not in (1, 2):
        _fail(f"order must be 1 or 2, got {spec.order}")
    if spec.method == "steps":
        if (spec.compute is None) == (spec.every is None):
            _fail("steps takes either compute=I/J/... or every=K")
        if spec.every == 0:
            _fail("every must be 1 or more")
        if spec.compute is not None and min(spec.compute) < 0:
            _fail("compute lists step indices, 0 or more")


def _format(value) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, tuple):
        return "/".join(map(str, value))
    return str(value)


def _fail(problem: str):
    raise InvalidInputError(f"{problem}\n{GRAMMAR}")
