"""The VQ baseline's image tokenizer network: a VQGAN-like conv autoencoder and its quantizers.

Owns the torch modules only (no training loop, no files):
- `VqModelConfig`: the typed shape of one tokenizer (saved as `model:` in `vq_config.yaml`).
- `Encoder` / `Decoder`: residual blocks, GroupNorm + SiLU, strided-conv downsampling and
  nearest+conv upsampling (VQGAN, Esser et al. 2021, without its attention blocks: they cost
  more than they give at the sizes this project trains on a CPU or one GPU).
- `LFQ`: lookup-free quantization (MAGVIT-v2, Yu et al. 2023): every latent dimension becomes its
  sign, the token is the binary number the signs spell; entropy penalty over soft assignments.
- `CosineVQ`: classic VQ with an l2-normalised codebook, commitment loss, straight-through or EMA
  updates and dead-code restarts.
- `VqAutoencoder`: encoder -> quantizer -> decoder, with `encode_indices` / `decode_indices`.
- `PatchDiscriminator` (hinge GAN) and `VggPerceptual` (LPIPS-like, weights only from a local file).
Images enter and leave as float tensors in [-1, 1], NCHW.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class VqModelConfig:
    """Shape of the tokenizer network and its quantizer (everything needed to rebuild the weights)."""

    image_size: int = field(default=256, metadata={"help": "side of the square training/eval images (pixels)"})
    channels: int = field(default=128, metadata={"help": "base channel count of encoder and decoder"})
    channel_mult: tuple[int, ...] = field(default=(1, 1, 2, 2, 4), metadata={"help": "channel multiplier per resolution level; downsampling = 2**(levels-1)"})
    num_res_blocks: int = field(default=2, metadata={"help": "residual blocks per resolution level"})
    quantizer: str = field(default="lfq", metadata={"help": "'lfq' (lookup-free, MAGVIT-v2) or 'vq' (cosine codebook)", "choices": ["lfq", "vq"]})
    codebook_bits: int = field(default=14, metadata={"help": "LFQ: latent dims = bits; codebook size 2**bits (<= 18)"})
    entropy_group_bits: int = field(default=7, metadata={"help": "LFQ: bits per sub-codebook for the entropy terms (MAGVIT-v2 factorisation); must divide codebook_bits"})
    entropy_temperature: float = field(default=0.01, metadata={"help": "LFQ: temperature of the soft code assignments used by the entropy terms"})
    codebook_size: int = field(default=16384, metadata={"help": "VQ: number of codebook entries"})
    code_dim: int = field(default=8, metadata={"help": "VQ: dimension of the (l2-normalised) codes"})
    vq_ema: bool = field(default=False, metadata={"help": "VQ: update the codebook by exponential moving averages instead of gradients"})
    ema_decay: float = field(default=0.99, metadata={"help": "VQ: EMA decay of the codebook statistics"})

    def __post_init__(self):
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        if self.quantizer not in ("lfq", "vq"):
            raise ValueError(f"quantizer must be 'lfq' or 'vq', got {self.quantizer!r}")
        if len(self.channel_mult) < 2:
            raise ValueError("channel_mult needs at least two levels (one downsampling)")
        if self.image_size % self.downsample:
            raise ValueError(f"image_size {self.image_size} is not a multiple of the downsampling {self.downsample}")
        if not 1 <= self.codebook_bits <= 18:
            raise ValueError(f"codebook_bits must be in 1..18 (MAGVIT-v2 goes to 2**18), got {self.codebook_bits}")
        if self.codebook_bits % self.entropy_group_bits:
            raise ValueError(f"entropy_group_bits {self.entropy_group_bits} must divide codebook_bits {self.codebook_bits}")
        if self.entropy_group_bits > 12:
            raise ValueError("entropy_group_bits > 12 makes the soft assignments too large; factorise further")
        if self.codebook_size < 2 or self.code_dim < 1:
            raise ValueError("codebook_size must be >= 2 and code_dim >= 1")
        if self.channels < 1 or self.num_res_blocks < 0:
            raise ValueError("channels must be >= 1 and num_res_blocks >= 0")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def grid(self) -> int:
        """Codes per side of the code grid."""
        return self.image_size // self.downsample

    @property
    def num_codes(self) -> int:
        return 2**self.codebook_bits if self.quantizer == "lfq" else self.codebook_size

    @property
    def latent_dim(self) -> int:
        return self.codebook_bits if self.quantizer == "lfq" else self.code_dim


def _norm(ch: int) -> nn.GroupNorm:
    # 32 groups as in VQGAN, fewer when tiny configs have fewer channels.
    return nn.GroupNorm(math.gcd(32, ch), ch, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.block = nn.Sequential(
            _norm(cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1), _norm(cout), nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1)
        )
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        return self.skip(x) + self.block(x)


class Encoder(nn.Module):
    def __init__(self, cfg: VqModelConfig):
        super().__init__()
        chs = [cfg.channels * m for m in cfg.channel_mult]
        layers: list[nn.Module] = [nn.Conv2d(3, chs[0], 3, padding=1)]
        cin = chs[0]
        for i, ch in enumerate(chs):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock(cin, ch))
                cin = ch
            if i < len(chs) - 1:
                layers.append(nn.Conv2d(cin, cin, 3, stride=2, padding=1))  # strided-conv downsampling
        layers += [ResBlock(cin, cin), ResBlock(cin, cin), _norm(cin), nn.SiLU(), nn.Conv2d(cin, cfg.latent_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class Decoder(nn.Module):
    def __init__(self, cfg: VqModelConfig):
        super().__init__()
        chs = [cfg.channels * m for m in cfg.channel_mult][::-1]
        cin = chs[0]
        layers: list[nn.Module] = [nn.Conv2d(cfg.latent_dim, cin, 3, padding=1), ResBlock(cin, cin), ResBlock(cin, cin)]
        for i, ch in enumerate(chs):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock(cin, ch))
                cin = ch
            if i < len(chs) - 1:
                # nearest + conv instead of transposed convs: no checkerboard artefacts
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cin, 3, padding=1)]
        layers += [_norm(cin), nn.SiLU(), nn.Conv2d(cin, 3, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(z)


def entropy(p: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Shannon entropy in nats of probability vectors along `dim`."""
    return -(p * torch.log(p.clamp_min(1e-12))).sum(dim)


def lfq_bits_to_indices(bits: torch.Tensor) -> torch.Tensor:
    """(..., k) booleans -> (...,) int64: bit i of the index is dimension i (little-endian)."""
    weights = 2 ** torch.arange(bits.shape[-1], device=bits.device, dtype=torch.int64)
    return (bits.to(torch.int64) * weights).sum(-1)


def lfq_indices_to_bits(indices: torch.Tensor, k: int) -> torch.Tensor:
    """(...,) int64 -> (..., k) booleans; inverse of `lfq_bits_to_indices` for indices < 2**k."""
    shifts = torch.arange(k, device=indices.device, dtype=torch.int64)
    return ((indices.unsqueeze(-1) >> shifts) & 1).bool()


class LFQ(nn.Module):
    """Lookup-free quantization: q = sign(z) in {-1, +1}^k, index = the bits (z > 0).

    Entropy penalty (MAGVIT-v2 eq. 5): E[H(q(z))] - gamma * H(E[q(z)]), where q(z) are soft
    assignments softmax(-||z - c||^2 / T) over the codes c. For 2**14 codes and more this table is
    too large, so the k dims are split into groups of `group_bits` and the codes factorise into
    independent sub-codebooks (MAGVIT-v2 sec. 3.1): both entropies are sums over the groups.
    The per-sample entropy lies in [0, log K]; the codebook entropy is at most log K.
    """

    def __init__(self, bits: int, group_bits: int, temperature: float):
        super().__init__()
        self.bits, self.group_bits, self.temperature = bits, group_bits, temperature
        self.groups = bits // group_bits
        sub = lfq_indices_to_bits(torch.arange(2**group_bits), group_bits).float() * 2 - 1
        self.register_buffer("sub_codebook", sub, persistent=False)  # (2**g, g) of +-1

    @property
    def num_codes(self) -> int:
        return 2**self.bits

    def entropy_terms(self, z_flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, k) latents -> (mean per-sample entropy, codebook entropy), both in nats."""
        zg = z_flat.float().view(-1, self.groups, self.group_bits)
        # -||z - c||^2 = 2 z.c - const for +-1 codes, so the softmax only needs the dot products.
        logits = 2 * torch.einsum("ngd,cd->ngc", zg, self.sub_codebook) / self.temperature
        prob = logits.softmax(-1)
        per_sample = entropy(prob).sum(-1).mean()
        codebook = entropy(prob.mean(0)).sum()
        return per_sample, codebook

    def forward(self, z: torch.Tensor):
        """z (B, k, H, W) -> (straight-through q, indices (B, H, W), aux losses)."""
        zp = z.permute(0, 2, 3, 1)
        q = torch.where(zp > 0, 1.0, -1.0).to(z.dtype)
        indices = lfq_bits_to_indices(zp > 0)
        commitment = F.mse_loss(zp, q.detach())
        per_sample, codebook = self.entropy_terms(zp.reshape(-1, self.bits))
        q_st = zp + (q - zp).detach()  # straight-through: forward q, backward identity
        aux = {"commitment": commitment, "per_sample_entropy": per_sample, "codebook_entropy": codebook}
        return q_st.permute(0, 3, 1, 2), indices, aux

    def indices_to_latent(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, H, W) indices -> (B, k, H, W) latents of +-1."""
        return (lfq_indices_to_bits(indices, self.bits).float() * 2 - 1).permute(0, 3, 1, 2)


class CosineVQ(nn.Module):
    """Classic VQ with an l2-normalised codebook (cosine similarity, as in ViT-VQGAN / LlamaGen).

    Gradient mode: codebook loss ||sg(z) - e||^2 + the caller's weighted commitment ||z - sg(e)||^2.
    EMA mode: the codebook follows running means of the encoder outputs assigned to each code.
    `usage` counts assignments during training; `restart_dead_codes()` re-initialises codes used
    fewer than `threshold` times since the last restart from recent encoder outputs.
    """

    def __init__(self, num_codes: int, dim: int, ema: bool = False, decay: float = 0.99):
        super().__init__()
        self.ema, self.decay = ema, decay
        self.embed = nn.Parameter(F.normalize(torch.randn(num_codes, dim), dim=1), requires_grad=not ema)
        self.register_buffer("ema_count", torch.ones(num_codes))
        self.register_buffer("ema_sum", self.embed.detach().clone())
        self.register_buffer("usage", torch.zeros(num_codes), persistent=False)
        self._recent: torch.Tensor | None = None

    @property
    def num_codes(self) -> int:
        return self.embed.shape[0]

    def codebook(self) -> torch.Tensor:
        return F.normalize(self.embed, dim=1)

    def forward(self, z: torch.Tensor):
        zp = F.normalize(z.permute(0, 2, 3, 1), dim=-1)
        flat = zp.reshape(-1, zp.shape[-1])
        cb = self.codebook()
        idx = (flat.detach() @ cb.detach().T).argmax(1)  # max cosine = min l2 on the unit sphere
        q = cb[idx]
        aux = {"commitment": F.mse_loss(flat, q.detach())}
        if not self.ema:
            aux["codebook"] = F.mse_loss(q, flat.detach())
        if self.training:
            with torch.no_grad():
                counts = torch.bincount(idx, minlength=self.num_codes).float()
                self.usage += counts
                self._recent = flat.detach()[torch.randperm(flat.shape[0], device=flat.device)[:4096]]
                if self.ema:
                    sums = torch.zeros_like(self.ema_sum).index_add_(0, idx, flat.detach().float())
                    self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
                    self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
                    self.embed.data.copy_(F.normalize(self.ema_sum / self.ema_count.clamp_min(1e-5).unsqueeze(1), dim=1))
        q_st = flat + (q - flat).detach()
        indices = idx.view(zp.shape[:-1])
        return q_st.view(zp.shape).permute(0, 3, 1, 2), indices, aux

    @torch.no_grad()
    def restart_dead_codes(self, threshold: float = 1.0, generator: torch.Generator | None = None) -> int:
        """Replace codes used < `threshold` times since the last call with recent encoder outputs
        (plus a little noise, so two revived codes never coincide). Returns how many were revived."""
        dead = self.usage < threshold
        n = int(dead.sum())
        if n and self._recent is not None and len(self._recent):
            pick = torch.randint(len(self._recent), (n,), generator=generator).to(self._recent.device)
            noise = torch.randn(n, self._recent.shape[1], generator=generator).to(self._recent.device)
            new = F.normalize(self._recent[pick] + 0.01 * noise, dim=1)
            self.embed.data[dead] = new.to(self.embed.dtype)
            self.ema_sum[dead] = new.float()
            self.ema_count[dead] = 1.0
        else:
            n = 0
        self.usage.zero_()
        return n

    def indices_to_latent(self, indices: torch.Tensor) -> torch.Tensor:
        return self.codebook()[indices].permute(0, 3, 1, 2)


class VqAutoencoder(nn.Module):
    """Encoder -> LFQ or cosine VQ -> decoder. forward(x) -> (reconstruction, indices, aux losses)."""

    def __init__(self, cfg: VqModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        if cfg.quantizer == "lfq":
            self.quantizer: nn.Module = LFQ(cfg.codebook_bits, cfg.entropy_group_bits, cfg.entropy_temperature)
        else:
            self.quantizer = CosineVQ(cfg.codebook_size, cfg.code_dim, ema=cfg.vq_ema, decay=cfg.ema_decay)

    def forward(self, x):
        z = self.encoder(x)
        # quantize in fp32 even under bf16 autocast: signs near 0, argmax over cosines and the
        # entropy softmax at temperature 0.01 are all precision-sensitive
        with torch.autocast(z.device.type, enabled=False):
            q, indices, aux = self.quantizer(z.float())
        return self.decoder(q), indices, aux

    @torch.no_grad()
    def encode_indices(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [-1, 1] -> (B, grid, grid) int64 codes."""
        return self.quantizer(self.encoder(x))[1]

    @torch.no_grad()
    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, grid, grid) int64 codes -> (B, 3, S, S) in about [-1, 1]."""
        return self.decoder(self.quantizer.indices_to_latent(indices))


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix / VQGAN) with GroupNorm instead of BatchNorm (small batches on CPU)."""

    def __init__(self, channels: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = channels
        for i in range(1, n_layers + 1):
            nxt = channels * min(2**i, 8)
            layers += [nn.Conv2d(ch, nxt, 4, 2 if i < n_layers else 1, 1), _norm(nxt), nn.LeakyReLU(0.2)]
            ch = nxt
        layers.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


# torchvision's vgg16().features layout; the LPIPS taps are relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_LPIPS_TAPS = (3, 8, 15, 22, 29)


class VggPerceptual(nn.Module):
    """LPIPS-like distance on VGG16 features, with weights read from local files only.

    `vgg_weights`: a torchvision vgg16 state dict (`features.N.weight` keys; .pth or .safetensors).
    `lin_weights` (optional): the LPIPS package's vgg.pth (`linN.model.1.weight`); without it every
    channel counts equally. A file that does not fit raises ValueError naming the bad keys.
    """

    def __init__(self, vgg_weights: str, lin_weights: str | None = None):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=False)]
                cin = v
        self.features = nn.Sequential(*layers)
        sd = {k.removeprefix("features."): v for k, v in _load_state(vgg_weights).items() if k.startswith("features.") or k[0].isdigit()}
        missing, unexpected = self.features.load_state_dict(sd, strict=False)
        if missing:
            raise ValueError(f"{vgg_weights}: not a torchvision vgg16 state dict (missing {missing[:4]}...)")
        chans = [64, 128, 256, 512, 512]
        self.lins = nn.ParameterList([nn.Parameter(torch.ones(1, c, 1, 1) / c, requires_grad=False) for c in chans])
        if lin_weights:
            lsd = _load_state(lin_weights)
            for i, c in enumerate(chans):
                w = lsd.get(f"lin{i}.model.1.weight")
                if w is None or tuple(w.shape) != (1, c, 1, 1):
                    raise ValueError(f"{lin_weights}: not LPIPS vgg linear weights (lin{i}.model.1.weight)")
                self.lins[i].data.copy_(w)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Mean LPIPS-like distance between two batches in [-1, 1]."""
        x = torch.cat([a, b]).sub(self.shift).div(self.scale)
        total = 0.0
        tap = 0
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i == _LPIPS_TAPS[tap]:
                fa, fb = F.normalize(x, dim=1).chunk(2)
                total = total + ((fa - fb) ** 2 * self.lins[tap]).sum(1).mean()
                tap += 1
                if tap == len(_LPIPS_TAPS):
                    break
        return total


def _load_state(path: str) -> dict:
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    sd = torch.load(path, map_location="cpu", weights_only=True)
    return sd.get("state_dict", sd) if isinstance(sd, dict) else sd
