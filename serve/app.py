"""The Ray Serve application: a FastAPI ingress composed with an encoder and an EMA-decoder
deployment, each batching concurrent requests into one forward pass (`serve.batch`).

    serve run serve/config.yaml                      # the config file's checkpoint
    python -m serve --checkpoint runs/default        # or s3://bucket/runs/name

`build(args)` is the application builder both use (args: ServeOptions fields).
"""

import asyncio
import base64
import math
import os
import secrets
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Literal

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from pioneer import checkpoint, storage
from pioneer.data import to_uint8, to_unit_range
from pioneer.editing import VECTORS_FILE, AttributeVectors, edit_codes
from pioneer.sampling import interpolation_fractions, sample_latents, slerp
from pioneer.transform import IMAGE_SUFFIXES
from serve import inputs
from serve.inputs import RequestError
from serve.options import ServeOptions

PAGE = Path(__file__).with_name("page.html")
MAX_FACES = 6  # faces (or latents) one interpolation passes through
HEALTH_FRESH_S = 10.0  # a served pass with finite output this recent stands for a health probe
# Model replicas: OpenMP threads that sleep at once when idle instead of spinning (GNU
# OpenMP spins by default), read at process start, hence an actor env var. Where replicas,
# ingress and proxy share cores, spinning threads of one forward pass steal them from the
# other replica and the plumbing: measured at 32 clients on 2 cores, full width +18%
# sample / +23% reconstruct throughput, small model +35% / +96%; 1 client unchanged.
MODEL_ACTOR_OPTIONS = {"num_cpus": 1, "runtime_env": {"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}}}


class _Model(ABC):
    """One network of the checkpoint in a replica. Requests of k images are cut into
    chunks of at most max_batch_size; chunks from concurrent requests share a forward."""

    def __init__(self, args: dict[str, Any]):
        from pioneer.api import Pioneer

        options = ServeOptions.from_args(args)
        cuda = options.device == "cuda" or (options.device == "auto" and torch.cuda.is_available())
        self.device = torch.device("cuda" if cuda else "cpu")
        if options.threads:
            torch.set_num_threads(options.threads)
        self.model = Pioneer.from_checkpoint(
            options.checkpoint, device=self.device, precision=options.precision
        )
        self.chunk = options.max_batch_size
        self.forward.set_max_batch_size(options.max_batch_size)
        self.forward.set_batch_wait_timeout_s(options.batch_wait_s)
        self.batch_sizes: list[int] = []  # images per forward pass, for stats()
        self.forward_s = 0.0  # seconds spent in forward passes, for stats()
        self.healthy_at: float | None = None  # when a served pass last gave finite values
        self.ongoing = self.peak_ongoing = 0  # requests in this replica, for stats()

    @abstractmethod
    def forward_pass(self, x: torch.Tensor) -> torch.Tensor:
        """The network on a batch, float output."""

    def finish(self, out: torch.Tensor) -> torch.Tensor:
        """What a caller receives of a batch's output."""
        return out

    @serve.batch(batch_size_fn=lambda items: sum(len(x) for x in items))
    async def forward(self, items: list[torch.Tensor]) -> list[torch.Tensor]:
        sizes = [len(x) for x in items]
        self.batch_sizes.append(sum(sizes))
        # On the replica's event loop, not in a thread: requests that arrive meanwhile wait
        # in Serve's queue and all join the next batch (a thread here, contending for the
        # GIL, let them trickle in one by one: mean batch 1.3 instead of 16 at 32 clients).
        return list(self.served_pass(torch.cat(items)).split(sizes))

    def served_pass(self, x: torch.Tensor) -> torch.Tensor:
        """One batch's pass, timed, and noted as proof of health when its output is finite."""
        started = time.perf_counter()
        self.healthy_at = None  # until this pass succeeds
        out = self.forward_pass(x)
        self.forward_s += time.perf_counter() - started
        if torch.isfinite(out).all():
            self.healthy_at = time.monotonic()
        return self.finish(out)

    async def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.ongoing += 1
        self.peak_ongoing = max(self.peak_ongoing, self.ongoing)
        try:
            parts = await asyncio.gather(*(self.forward(part) for part in x.split(self.chunk)))
        finally:
            self.ongoing -= 1
        return torch.cat(parts)

    def check_health(self) -> None:
        """Serve restarts a replica whose model cannot run. Traffic is proof enough: while
        served passes succeed, no probe pass takes the model's time (on a busy CPU the
        probe cost every replica a forward pass per check, and /healthz calls it too)."""
        if self.healthy_at is not None and time.monotonic() - self.healthy_at < HEALTH_FRESH_S:
            return
        out = self.forward_pass(self.probe)
        if not torch.isfinite(out).all():
            raise RuntimeError("the model produced non-finite values on its health probe")

    def stats(self) -> dict[str, Any]:
        sizes, self.batch_sizes = self.batch_sizes, []
        peak, self.peak_ongoing = self.peak_ongoing, self.ongoing
        seconds, self.forward_s = self.forward_s, 0.0
        return {
            "batches": len(sizes),
            "forward_s": seconds,
            "threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "images": sum(sizes),
            "largest": max(sizes, default=0),
            "peak_ongoing": peak,
        }


@serve.deployment(
    max_ongoing_requests=64, max_queued_requests=256, ray_actor_options=MODEL_ACTOR_OPTIONS
)
class Encoder(_Model):
    """uint8 (k, 3, R, R) -> unit codes (k, D)."""

    def __init__(self, args: dict[str, Any]):
        super().__init__(args)
        side = self.model.resolution
        self.probe = torch.full((1, 3, side, side), 128, dtype=torch.uint8)

    def forward_pass(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode(to_unit_range(x)).cpu()


@serve.deployment(
    max_ongoing_requests=64, max_queued_requests=256, ray_actor_options=MODEL_ACTOR_OPTIONS
)
class Decoder(_Model):
    """Codes (k, D) -> uint8 (k, 3, R, R), with the EMA decoder."""

    def __init__(self, args: dict[str, Any]):
        super().__init__(args)
        self.probe = sample_latents(1, self.model.latent_size, torch.Generator().manual_seed(0))

    def forward_pass(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.decode(z).cpu()

    def finish(self, out: torch.Tensor) -> torch.Tensor:
        return to_uint8(out)  # a quarter of the bytes to send


class SampleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = Field(16, description="number of faces")
    seed: int | None = Field(None, ge=0, lt=2**63, description="default: a random one")
    format: Literal["png", "json"] = Field("png", description="one PNG grid, or base64 PNGs")


class DecodeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    latents: list[Any] = Field(description="latents, each a list of latent-size numbers")
    format: Literal["png", "json"] = "png"


class InterpolateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    latents: list[Any] = Field(description=f"2 to {MAX_FACES} latents to pass through")
    steps: int = Field(8, description="images from one latent to the next, both included")


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    headers = {"Retry-After": "1"} if status in (429, 503) else None
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def _multipart(description: str, fields: dict[str, dict]) -> dict:
    """OpenAPI for an endpoint that parses its multipart body itself."""
    schema = {"type": "object", "properties": fields}
    return {
        "requestBody": {
            "description": description,
            "content": {"multipart/form-data": {"schema": schema}},
        }
    }


FILE = {"type": "string", "format": "binary"}
FILES = {"type": "array", "items": FILE}


class BodyLimit:
    """413 (JSON) for request bodies over max_bytes: at once from Content-Length, or as soon
    as a streamed body passes the limit (raised inside the route, so handlers answer)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_bytes:
            limit = f"request body over {self.max_bytes:,} bytes (or a bad Content-Length)"
            return await _error(413, limit)(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise HTTPException(413, f"request body over {self.max_bytes:,} bytes")
            return message

        await self.app(scope, limited, send)


def _api(options: ServeOptions) -> FastAPI:
    api = FastAPI(
        title="pioneer",
        description="Balanced PIONEER autoencoder: sample, encode, decode, reconstruct, "
        'interpolate and edit faces. Errors are JSON: {"error": message}.',
    )
    api.add_middleware(BodyLimit, max_bytes=options.max_upload_bytes)

    @api.exception_handler(RequestError)
    async def request_error(_, error: RequestError):
        return _error(error.status, error.message, **error.extra)

    @api.exception_handler(RequestValidationError)
    async def invalid(_, error: RequestValidationError):
        problems = [
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in error.errors()
        ]
        return _error(422, "; ".join(problems) or "invalid request")

    @api.exception_handler(HTTPException)
    async def http_error(_, error: HTTPException):
        return _error(error.status_code, str(error.detail))

    return api


def build_service(options: ServeOptions):
    api = _api(options)

    # Parsing and PNG encoding only: no CPU reserved, so the models get the cores.
    @serve.deployment(
        max_ongoing_requests=256, max_queued_requests=512, ray_actor_options={"num_cpus": 0}
    )
    @serve.ingress(api)
    class Service:
        def __init__(self, encoder: DeploymentHandle, decoder: DeploymentHandle, args: dict):
            self.options = ServeOptions.from_args(args)
            self.encoder, self.decoder = encoder, decoder
            loaded = checkpoint.load(self.options.checkpoint, weights=False)
            location, config, progress = loaded.location, loaded.config, loaded.progress
            self.crop = config.data.crop
            self.resolution = 4 * 2 ** int(progress["phase"])
            self.latent_size = config.model.latent_size
            self.identity = checkpoint.identity(location)
            self.vectors = _vectors(self.options.vectors, location, self.identity)
            self.info_body = {
                "checkpoint": location,
                "identity": self.identity,
                "images_seen": int(progress["images_seen"]),
                "resolution": self.resolution,
                "latent_size": self.latent_size,
                "mode": config.model.mode,
                "attributes": self.vectors.names if self.vectors else [],
                "limits": {
                    "max_n": self.options.max_n,
                    "max_steps": self.options.max_steps,
                    "max_faces": MAX_FACES,
                    "max_upload_bytes": self.options.max_upload_bytes,
                    "max_pixels": self.options.max_pixels,
                    "max_strength": self.options.max_strength,
                },
            }
            self.examples = _examples(self.options.examples, self.options.example_count)

        # Model calls: overload and dead replicas answer 503, never hang.
        async def _call(self, handle: DeploymentHandle, x: torch.Tensor) -> torch.Tensor:
            try:
                return await asyncio.wait_for(
                    _await(handle.remote(x)), self.options.request_timeout_s
                )
            except BackPressureError:
                raise RequestError(503, "the service is overloaded: retry shortly") from None
            except (TimeoutError, DeploymentUnavailableError):
                raise RequestError(503, "the model did not answer in time: retry") from None

        async def encode_images(self, images: list[torch.Tensor]) -> torch.Tensor:
            return await self._call(self.encoder, torch.stack(images))

        async def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
            return await self._call(self.decoder, z)

        async def _form(self, request: Request, files: int = MAX_FACES):
            kind = request.headers.get("content-type", "")
            if not kind.startswith("multipart/form-data"):
                raise RequestError(415, f"send multipart/form-data, not {kind or 'no type'!r}")
            return await request.form(max_files=files, max_fields=8)

        async def _images(self, form, field: str, low: int, high: int) -> list[torch.Tensor]:
            uploads = form.getlist(field)
            if not low <= len(uploads) <= high:
                got = len(uploads)
                message = f"send {low} to {high} file(s) in field {field!r}, got {got}"
                raise RequestError(422, message)
            images = []
            for index, upload in enumerate(uploads):
                if not isinstance(upload, UploadFile):
                    raise RequestError(422, f"{field} must be a file upload, not a text field")
                name = f"{field}[{index}] ({upload.filename or 'unnamed'})"
                data = await upload.read()
                o = self.options
                images.append(
                    inputs.image_tensor(data, name, self.crop, self.resolution, o.max_pixels)
                )
            return images

        def _png(self, images: torch.Tensor, nrow: int) -> Response:
            return Response(inputs.png(images, nrow), media_type="image/png")

        @api.get("/", response_class=HTMLResponse, include_in_schema=False)
        async def page(self):
            return HTMLResponse(PAGE.read_text())

        @api.get("/healthz", summary="200 when both models answer, else 503")
        async def healthz(self):
            try:
                await asyncio.wait_for(
                    asyncio.gather(
                        _await(self.encoder.check_health.remote()),
                        _await(self.decoder.check_health.remote()),
                    ),
                    self.options.request_timeout_s,
                )
            except Exception as error:  # any failure of a model replica is "unhealthy"
                return _error(503, f"unhealthy: {type(error).__name__}: {error}")
            return {"status": "ok"}

        @api.get("/v1/info", summary="the model: resolution, latent size, attributes, limits")
        async def info(self):
            return self.info_body

        @api.get("/v1/examples", summary="bundled faces the page offers")
        async def examples(self):
            return {"examples": sorted(self.examples)}

        @api.get("/v1/examples/{name}", summary="one bundled face (JPEG)")
        async def example(self, name: str):
            if name not in self.examples:
                raise RequestError(404, f"no example {name!r}", known=sorted(self.examples))
            return FileResponse(self.examples[name])

        @api.post(
            "/v1/sample",
            summary="random faces: a PNG grid, or base64 PNGs with their latents",
            responses={200: {"content": {"image/png": {}}}},
        )
        async def sample(self, body: SampleRequest):
            n = inputs.integer(body.n, "n", 1, self.options.max_n)
            seed = body.seed if body.seed is not None else secrets.randbelow(2**63)
            z = sample_latents(n, self.latent_size, torch.Generator().manual_seed(seed))
            images = await self.decode_latents(z)
            if body.format == "png":
                return self._png(images, max(1, math.ceil(math.sqrt(n))))
            return {"seed": seed, "latents": z.tolist(), "images": _base64(images)}

        @api.post(
            "/v1/encode",
            summary="unit-norm latents of uploaded images (field image, or images)",
            openapi_extra=_multipart("image(s)", {"image": FILE, "images": FILES}),
        )
        async def encode(self, request: Request):
            form = await self._form(request, files=self.options.max_n)
            field = "images" if "images" in form else "image"
            images = await self._images(
                form, field, 1, self.options.max_n if field == "images" else 1
            )
            z = await self.encode_images(images)
            return {"latents": z.tolist()}

        @api.post(
            "/v1/decode",
            summary="images of latents: a PNG grid, or base64 PNGs",
            responses={200: {"content": {"image/png": {}}}},
        )
        async def decode(self, body: DecodeRequest):
            z = inputs.latents(body.latents, self.latent_size, 1, self.options.max_n)
            images = await self.decode_latents(z)
            if body.format == "png":
                return self._png(images, max(1, math.ceil(math.sqrt(len(z)))))
            return {"images": _base64(images)}

        @api.post(
            "/v1/reconstruct",
            summary="theta(phi(x)) of an uploaded image (field image): PNG",
            openapi_extra=_multipart("one image", {"image": FILE}),
            responses={200: {"content": {"image/png": {}}}},
        )
        async def reconstruct(self, request: Request):
            images = await self._images(await self._form(request), "image", 1, 1)
            z = await self.encode_images(images)
            return self._png(await self.decode_latents(z), 1)

        @api.post(
            "/v1/interpolate",
            summary="spherical interpolation through 2-6 faces: one row per pair, PNG",
            description="JSON {latents, steps}, or multipart images (2-6 files) and steps.",
            openapi_extra=_multipart(
                "or JSON {latents, steps}", {"images": FILES, "steps": {"type": "integer"}}
            ),
            responses={200: {"content": {"image/png": {}}}},
        )
        async def interpolate(self, request: Request):
            kind = request.headers.get("content-type", "")
            if kind.startswith("application/json"):
                try:
                    body = InterpolateRequest.model_validate_json(await request.body())
                except ValueError as error:  # pydantic's ValidationError
                    raise RequestError(422, f"invalid JSON body: {error}") from None
                z = inputs.latents(body.latents, self.latent_size, 2, MAX_FACES)
                steps = body.steps
            else:
                form = await self._form(request)
                z = await self.encode_images(await self._images(form, "images", 2, MAX_FACES))
                steps = form.get("steps", "8")
            steps = inputs.integer(steps, "steps", 2, self.options.max_steps)
            t = interpolation_fractions(steps)
            path = torch.cat([slerp(a, b, t) for a, b in zip(z[:-1], z[1:], strict=True)])
            return self._png(await self.decode_latents(path), steps)

        @api.post(
            "/v1/edit",
            summary="Eq. 6 edit of an uploaded face: PNG",
            description='multipart: image, and attributes (JSON such as {"Smiling": 1.5}) or '
            "vector (JSON list of latent-size numbers) with strength (default 1).",
            openapi_extra=_multipart(
                "image and attributes or vector",
                {
                    "image": FILE,
                    "attributes": {"type": "string"},
                    "vector": {"type": "string"},
                    "strength": {"type": "number"},
                },
            ),
            responses={200: {"content": {"image/png": {}}}},
        )
        async def edit(self, request: Request):
            form = await self._form(request)
            o = self.options
            attributes = inputs.json_field(_text(form, "attributes"), "attributes")
            vector = inputs.json_field(_text(form, "vector"), "vector")
            if (attributes is None) == (vector is None):
                raise RequestError(422, "send exactly one of the fields attributes or vector")
            if attributes is not None:
                if self.vectors is None:
                    raise RequestError(
                        404, "this service has no attribute vectors: send a vector", known=[]
                    )
                edits = inputs.strengths(attributes, self.vectors.names, o.max_strength)
                direction: Any = edits
                strength = 0.0
            else:
                direction = inputs.vector(vector, self.latent_size, "vector")
                raw = _text(form, "strength")
                strength = _strength(raw if raw is not None else "1", o.max_strength)
            images = await self._images(form, "image", 1, 1)
            z = await self.encode_images(images)
            edited = edit_codes(z, direction, strength, self.vectors, o.max_strength)
            return self._png(await self.decode_latents(edited), 1)

    return Service


async def _await(response):
    return await response


def _text(form, field: str) -> str | None:
    value = form.get(field)
    if value is not None and not isinstance(value, str):
        raise RequestError(422, f"{field} must be a text field, not a file")
    return value


def _strength(text: str, limit: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise RequestError(422, f"strength must be a number, got {text!r}") from None
    if not math.isfinite(value) or abs(value) > limit:
        raise RequestError(422, f"strength must be in [-{limit:g}, {limit:g}], got {text!r}")
    return value


def _base64(images: torch.Tensor) -> list[str]:
    return [base64.b64encode(data).decode() for data in inputs.png_each(images)]


def _vectors(path: str | None, location: str, identity: str) -> AttributeVectors | None:
    """The attribute vectors: `path`, else the file beside the checkpoint, if any."""
    if path is None:
        beside = storage.join(location, VECTORS_FILE)
        if not storage.exists(beside):
            return None
        path = beside
    return AttributeVectors.load(path, identity)


def _examples(folder: str, count: int) -> dict[str, Path]:
    root = Path(folder)
    if not root.is_dir():
        return {}
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return {p.name: p for p in files[-count:]}


def build(args: dict[str, Any]):
    """Application builder: `serve run serve/config.yaml` and `python -m serve` call it."""
    options = ServeOptions.from_args(dict(args))
    loaded = checkpoint.load(options.checkpoint)  # a bad checkpoint fails here, not in replicas
    _vectors(options.vectors, loaded.location, checkpoint.identity(loaded.location))
    service = build_service(options)
    plain = options.to_args()
    return service.bind(Encoder.bind(plain), Decoder.bind(plain), plain)
