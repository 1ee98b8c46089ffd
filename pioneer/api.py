"""The Python API: a trained model from a checkpoint, ready to encode, decode and edit.

    from pioneer import Pioneer
    model = Pioneer.from_checkpoint("runs/default")       # a run dir: its latest checkpoint
    faces = model.generate(16, seed=0)                    # (16, 3, R, R) in [-1, 1]
    z = model.encode(model.load_images(["a.jpg"]))        # (1, 512), unit norm
    steps = model.interpolate(z0, z1, steps=8)            # (8, 3, R, R), spherical path

The decoder is the EMA decoder, as the paper uses after training. Forward passes run under
torch.inference_mode, channels_last, and in bf16 where the device has it natively
(`precision="auto"`; "fp32" or "bf16" to choose); outputs are fp32. The networks a Pioneer
is given are frozen for inference in place (pioneer.model.freeze_for_inference: spectral
norm folded into the weights, stored in the compute dtype): pass copies of live networks.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from pioneer import checkpoint, storage
from pioneer.config import Config
from pioneer.editing import VECTORS_FILE, AttributeVectors, edit_codes
from pioneer.images import read_images
from pioneer.model import Decoder, Encoder, freeze_for_inference
from pioneer.precision import autocast, resolve
from pioneer.sampling import interpolation_fractions, sample_latents, slerp


class Pioneer:
    def __init__(
        self,
        encoder: Encoder,
        decoder: Decoder,
        config: Config,
        phase: int,
        alpha: float,
        images_seen: int = 0,
        device: str | torch.device = "cpu",
        checkpoint_dir: str | None = None,
        precision: str = "auto",
        channels_last: bool = True,
    ):
        self.device = torch.device(device)
        self.precision = resolve(precision, self.device)  # fp32 or bf16
        self._autocast = autocast(self.precision, self.device)
        self._layout = torch.channels_last if channels_last else torch.contiguous_format
        layout = dict(memory_format=self._layout)
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        self.encoder, self.decoder = (  # taken over: frozen in place, for inference only
            freeze_for_inference(net.to(self.device, **layout).eval().requires_grad_(False), dtype)
            for net in (encoder, decoder)
        )
        self.config = config
        self.phase = phase
        self.alpha = alpha
        self.images_seen = images_seen
        self.checkpoint_dir = checkpoint_dir  # loaded from (a path or s3:// URI), if anywhere
        self.attribute_vectors: AttributeVectors | None = None  # for edit(); see load_attributes

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str | torch.device = "cpu", precision: str = "auto"
    ) -> Pioneer:
        """Load a checkpoint dir, or the latest checkpoint of a run dir (local or s3://)."""
        loaded = checkpoint.load(path, map_location=device)
        encoder, decoder = Encoder(loaded.config.model), Decoder(loaded.config.model)
        encoder.load_state_dict(loaded.state["encoder"])
        decoder.load_state_dict(loaded.state["decoder_ema"])
        progress = loaded.progress
        return cls(
            encoder,
            decoder,
            loaded.config,
            phase=int(progress["phase"]),
            alpha=float(progress["alpha"]),
            images_seen=int(progress["images_seen"]),
            device=device,
            checkpoint_dir=loaded.location,
            precision=precision,
        )

    @property
    def resolution(self) -> int:
        return 4 * 2**self.phase

    @property
    def latent_size(self) -> int:
        return self.config.model.latent_size

    def load_images(self, paths: list[str | Path]) -> torch.Tensor:
        """Image files -> (N, 3, R, R) in [-1, 1], cropped as the training data was."""
        return read_images(paths, self.config.data.crop, self.resolution)

    @torch.inference_mode()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) images in [-1, 1] -> (N, latent) unit-norm codes."""
        x = self._prepare(x)
        with self._autocast:
            return self.encoder(x, self.phase, self.alpha)  # fp32 codes

    @torch.inference_mode()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(N, latent) codes -> (N, 3, R, R) images in [-1, 1]; codes are put on the sphere."""
        if not isinstance(z, torch.Tensor) or z.ndim != 2 or z.shape[1] != self.latent_size:
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"latents must be (N, {self.latent_size}), got {shape}")
        if not torch.isfinite(z).all():
            raise ValueError("latents contain NaN or infinite values")
        z = F.normalize(z.float().to(self.device), dim=1)
        with self._autocast:
            return self.decoder(z, self.phase, self.alpha).float().clamp(-1, 1)

    def generate(self, n: int, seed: int = 0) -> torch.Tensor:
        """n random faces from latents drawn uniformly on the sphere with `seed`."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        generator = torch.Generator().manual_seed(seed)
        return self.decode(sample_latents(n, self.latent_size, generator))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """theta(phi(x)): (N, 3, H, W) in [-1, 1] -> (N, 3, R, R)."""
        return self.decode(self.encode(x))

    def interpolate(self, z0: torch.Tensor, z1: torch.Tensor, steps: int = 8) -> torch.Tensor:
        """Decoded images along the great circle from z0 to z1, endpoints included."""
        z0, z1 = z0.reshape(-1), z1.reshape(-1)
        for name, z in (("z0", z0), ("z1", z1)):
            if z.numel() != self.latent_size:
                raise ValueError(f"{name} must hold {self.latent_size} values, got {z.numel()}")
        return self.decode(slerp(z0, z1, interpolation_fractions(steps)))

    def load_attributes(self, path: str | Path | None = None) -> AttributeVectors:
        """Attribute vectors for edit(): a file from `pioneer attributes`, by default the one
        saved beside the checkpoint. Refused when made for another checkpoint."""
        if path is None:
            beside = self.checkpoint_dir and storage.join(self.checkpoint_dir, VECTORS_FILE)
            if not beside or not storage.exists(beside):
                raise ValueError(
                    "no attribute vectors beside the checkpoint: run `pioneer attributes` first"
                )
            path = beside
        expected = checkpoint.identity(self.checkpoint_dir) if self.checkpoint_dir else None
        self.attribute_vectors = AttributeVectors.load(path, expected)
        return self.attribute_vectors

    def edit(
        self,
        x: torch.Tensor,
        attribute: str | torch.Tensor | dict[str, float],
        strength: float = 1.0,
    ) -> torch.Tensor:
        """Eq. 6: decode phi(x) + strength * v for an attribute's vector v.

        attribute: a name (vectors from load_attributes, loaded on first use), a vector
        (latent_size,), or {name: strength} for several at once. Strengths lie in [-2, 2].
        """
        if isinstance(attribute, (str, dict)) and self.attribute_vectors is None:
            self.load_attributes()
        z = self.encode(x)
        return self.decode(edit_codes(z, attribute, strength, self.attribute_vectors))

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"images must be (N, 3, H, W) in [-1, 1], got {shape}")
        if x.shape[2] != x.shape[3]:
            raise ValueError(
                f"images must be square, got {x.shape[2]}x{x.shape[3]}; "
                "load files with load_images() to crop them as in training"
            )
        x = x.float()
        if not torch.isfinite(x).all():
            raise ValueError("images contain NaN or infinite values")
        if x.min() < -1.01 or x.max() > 1.01:
            raise ValueError(
                f"images must be in [-1, 1], got values in [{x.min():.2f}, {x.max():.2f}]"
            )
        if x.shape[-1] != self.resolution:
            x = F.interpolate(
                x, size=(self.resolution, self.resolution), mode="bilinear", antialias=True
            )
        return x.to(self.device).contiguous(memory_format=self._layout)
