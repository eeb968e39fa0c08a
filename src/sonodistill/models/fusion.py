"""DILBERT's multimodal fusion encoder: region tokens, a clip ("image description") token and text tokens.

Streams (all `B x N_s x D`):
- regions: a frame encoder runs on every frame; its feature map (stage `region_stage`) is average-pooled to a
  `g x g` grid, so `N_r = T * g * g` tokens, plus temporal and spatial position embeddings. Masked regions
  (MOC) have their pixels zeroed before both visual encoders and their token replaced by a learned embedding.
- clip: one token from a 3D CNN on the whole clip (pooled, projected).
- text: WordPiece token embeddings + positions.
Each fusion layer (eq. 1-2 of the paper, in pre-norm form) updates every stream s in parallel from the previous
layer's states: `h_s += SelfAttn(h_s)`, `h_s += CrossAttn(q=h_s, kv=concat(h_other streams))`, `h_s += MLP(h_s)`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from sonodistill.errors import ConfigError

if TYPE_CHECKING:
    from sonodistill.data.text import TextTokenizer
    from sonodistill.knowledge import KnowledgeGraph

STREAMS = ("region", "clip", "text")
ANNOTATOR_FORMAT = "sonodistill-dilbert-annotator/1"  # dilbert.json "format" of an exported annotator folder
REPORT_BANK_FILE = "report_bank.json"  # an annotator folder's per-report bank statistics (optional file)
REPORT_RANKINGS = ("raw", "bank")  # annotate: training reports by CMM probability, or by bank-normalised score


@dataclass
class FusionConfig:
    """Sizes of one DILBERT model (teacher or student); `categorical` holds the class count of each target."""

    vocab_size: int
    dim: int = 64
    layers: int = 2
    heads: int = 2
    mlp_ratio: float = 2.0
    dropout: float = 0.1
    max_text_len: int = 48
    num_frames: int = 8
    region_grid: int = 2
    region_stage: int = -1
    frame_backbone: str = "resnet18_2d"
    frame_width: float = 0.125
    clip_backbone: str = "resnet10_3d"
    clip_width: float = 0.125
    frame_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. ViT {depth, dim, heads, img_size}
    clip_kwargs: dict[str, Any] = field(default_factory=dict)
    frame_pretrained: str = "none"      # start of the frame (region) encoder: none | imagenet | PATH (training only)
    clip_pretrained: str = "none"       # start of the clip encoder, likewise
    frame_freeze_stages: int = 0        # first stages of each encoder kept frozen (BatchNorm statistics too)
    clip_freeze_stages: int = 0
    norm: str = "group"
    n_entity_categories: int = 4
    n_region_classes: int = 16
    n_binary: int = 0
    categorical: list[int] = field(default_factory=list)
    pad_id: int = 0
    cls_id: int = 2
    sep_id: int = 3

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ConfigError(f"FusionConfig: dim {self.dim} is not divisible by heads {self.heads}")
        if self.layers < 1 or self.region_grid < 1 or self.num_frames < 1:
            raise ConfigError("FusionConfig: layers, region_grid and num_frames must be >= 1")
        if self.n_binary == 0 and not self.categorical:
            raise ConfigError("FusionConfig: no annotation target (n_binary = 0 and no categorical target)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FusionConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"FusionConfig: unknown field(s) {sorted(unknown)}")
        return cls(**d)


# ---------------------------------------------------------------------------------------------- blocks
class StreamBlock(nn.Module):
    """One stream's part of a fusion layer: self-attention, cross-attention to the other streams, MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0, dropout: float = 0.1) -> None:
        super().__init__()
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None, ctx: torch.Tensor,
                ctx_pad: torch.Tensor | None) -> torch.Tensor:
        """x `B x N x D` (pad `B x N`, True = padding), context `B x M x D` (ctx_pad `B x M`) -> `B x N x D`."""
        h = self.norm_self(x)
        x = x + self.drop(self.self_attn(h, h, h, key_padding_mask=pad, need_weights=False)[0])
        kv = self.norm_kv(ctx)
        x = x + self.drop(self.cross_attn(self.norm_q(x), kv, kv, key_padding_mask=ctx_pad, need_weights=False)[0])
        return x + self.drop(self.mlp(self.norm_mlp(x)))


class FusionLayer(nn.Module):
    """Updates the three streams in parallel; each attends to itself and to the other two (previous states)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0, dropout: float = 0.1) -> None:
        super().__init__()
        self.blocks = nn.ModuleDict({s: StreamBlock(dim, heads, mlp_ratio, dropout) for s in STREAMS})

    def forward(self, h: dict[str, torch.Tensor], pads: dict[str, torch.Tensor | None]) -> dict[str, torch.Tensor]:
        out = {}
        for s in STREAMS:
            others = [o for o in STREAMS if o != s]
            ctx = torch.cat([h[o] for o in others], dim=1)
            ctx_pad = _cat_pads([(pads[o], h[o]) for o in others])
            out[s] = self.blocks[s](h[s], pads[s], ctx, ctx_pad)
        return out


def _cat_pads(items: list[tuple[torch.Tensor | None, torch.Tensor]]) -> torch.Tensor | None:
    if all(p is None for p, _ in items):
        return None
    return torch.cat([p if p is not None else torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
                      for p, x in items], dim=1)


class FusionEncoder(nn.Module):
    """`layers` FusionLayers; returns the states after every layer (last = output)."""

    def __init__(self, dim: int, layers: int, heads: int, mlp_ratio: float = 2.0, dropout: float = 0.1) -> None:
        super().__init__()
        self.layers = nn.ModuleList([FusionLayer(dim, heads, mlp_ratio, dropout) for _ in range(layers)])

    def forward(self, h: dict[str, torch.Tensor], pads: dict[str, torch.Tensor | None]) -> list[dict[str, torch.Tensor]]:
        states = []
        for layer in self.layers:
            h = layer(h, pads)
            states.append(h)
        return states


# ---------------------------------------------------------------------------------------------- inputs
class VisualEncoder(nn.Module):
    """Clip `B x 1 x T x H x W` -> region tokens `B x (T*g*g) x D` and the clip token `B x 1 x D`."""

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        from sonodistill.models.backbones import build_backbone

        self.grid = int(cfg.region_grid)
        self.stage = int(cfg.region_stage)
        self.frames = build_backbone(cfg.frame_backbone, in_channels=1, width=cfg.frame_width,
                                     norm=_norm_for(cfg.frame_backbone, cfg.norm),
                                     freeze_stages=cfg.frame_freeze_stages, **dict(cfg.frame_kwargs))
        if getattr(self.frames, "kind", None) != "frame":
            raise ConfigError(f"frame_backbone {cfg.frame_backbone!r} is not a frame backbone")
        self.clip = build_backbone(cfg.clip_backbone, in_channels=1, width=cfg.clip_width,
                                   norm=_norm_for(cfg.clip_backbone, cfg.norm),
                                   freeze_stages=cfg.clip_freeze_stages, **dict(cfg.clip_kwargs))
        if getattr(self.clip, "kind", None) != "video":
            raise ConfigError(f"clip_backbone {cfg.clip_backbone!r} is not a video backbone")
        c_reg = self.frames.stage_channels[self.stage]
        self.region_proj = nn.Sequential(nn.Linear(c_reg, cfg.dim), nn.LayerNorm(cfg.dim))
        self.clip_proj = nn.Sequential(nn.Linear(self.clip.embed_dim, cfg.dim), nn.LayerNorm(cfg.dim))
        self.time_pos = nn.Parameter(torch.zeros(cfg.num_frames, cfg.dim))
        self.space_pos = nn.Parameter(torch.zeros(self.grid * self.grid, cfg.dim))
        self.mask_token = nn.Parameter(torch.zeros(cfg.dim))
        self.region_type = nn.Parameter(torch.zeros(cfg.dim))
        self.clip_type = nn.Parameter(torch.zeros(cfg.dim))
        for p in (self.time_pos, self.space_pos, self.mask_token, self.region_type, self.clip_type):
            nn.init.trunc_normal_(p, std=0.02)

    def load_starts(self, cfg: FusionConfig) -> dict[str, str]:
        """Initialise the frame and clip encoders from `cfg.frame_pretrained` / `cfg.clip_pretrained` (training
        only: inference loads the trained weights); returns what each started from."""
        from sonodistill.models.backbones import backbone_family
        from sonodistill.models.pretrained import apply_pretrained

        return {"frame": apply_pretrained(self.frames, backbone_family(cfg.frame_backbone), cfg.frame_pretrained),
                "clip": apply_pretrained(self.clip, backbone_family(cfg.clip_backbone), cfg.clip_pretrained)}

    def num_regions(self, t: int) -> int:
        return t * self.grid * self.grid

    def pixel_mask(self, region_mask: torch.Tensor, t: int, h: int, w: int) -> torch.Tensor:
        """Region mask `B x (T*g*g)` -> pixel mask `B x 1 x T x H x W` (H, W divisible by g)."""
        g = self.grid
        if h % g or w % g:
            raise ConfigError(f"frame size {h}x{w} is not divisible by the region grid {g}")
        m = region_mask.reshape(-1, t, g, g).float()
        m = m.repeat_interleave(h // g, dim=2).repeat_interleave(w // g, dim=3)
        return m[:, None].bool()

    def forward(self, x: torch.Tensor, region_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if x.ndim != 5:
            raise ValueError(f"VisualEncoder expects B x 1 x T x H x W, got {tuple(x.shape)}")
        b, c, t, h, w = x.shape
        if t > self.time_pos.shape[0]:
            raise ValueError(f"clip has {t} frames, the model was built for at most {self.time_pos.shape[0]}")
        if region_mask is not None:
            x = x.masked_fill(self.pixel_mask(region_mask, t, h, w), 0.0)
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        fmap = self.frames(frames).stages[self.stage]
        fmap = region_pool(fmap, self.grid)  # (B*T) x C x g x g
        reg = fmap.flatten(2).transpose(1, 2).reshape(b, t * self.grid * self.grid, -1)
        reg = self.region_proj(reg)
        if region_mask is not None:
            reg = torch.where(region_mask[..., None], self.mask_token.to(reg.dtype).expand_as(reg), reg)
        pos = (self.time_pos[:t, None, :] + self.space_pos[None]).reshape(t * self.grid * self.grid, -1)
        reg = reg + pos + self.region_type
        clip = self.clip_proj(self.clip(x).pooled)[:, None] + self.clip_type
        return reg, clip


def _pool_matrix(n: int, g: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`g x n` averaging weights of adaptive average pooling from n to g cells (PyTorch's bins: rows
    floor(i n / g) to ceil((i + 1) n / g), each averaged)."""
    w = torch.zeros(g, n, dtype=dtype, device=device)
    for i in range(g):
        lo, hi = (i * n) // g, -(-((i + 1) * n) // g)
        w[i, lo:hi] = 1.0 / (hi - lo)
    return w


def region_pool(fmap: torch.Tensor, g: int) -> torch.Tensor:
    """`N x C x H x W` -> `N x C x g x g`: `F.adaptive_avg_pool2d(fmap, g)`.

    While traced (ONNX / TorchScript export) the same pooling is two products with constant averaging matrices:
    the exporter cannot convert adaptive pooling once the frames' reshape has made H and W symbolic. Same numbers
    up to float rounding (tests/serve/test_annotation_kind.py)."""
    if not torch.jit.is_tracing():
        return F.adaptive_avg_pool2d(fmap, g)
    h, w = int(fmap.shape[-2]), int(fmap.shape[-1])  # constants of the traced graph (fixed input size)
    ph, pw = _pool_matrix(h, g, fmap.dtype, fmap.device), _pool_matrix(w, g, fmap.dtype, fmap.device)
    return torch.matmul(torch.matmul(ph, fmap), pw.transpose(0, 1))


def _norm_for(backbone: str, norm: str) -> str:
    """ViTs only take the default norm argument (they use LayerNorm) and the EfficientNets keep their ImageNet
    BatchNorm; ResNets take the configured one."""
    return "batch" if backbone.startswith(("vit", "video_vit")) or "efficientnet" in backbone else norm


class TextEmbedding(nn.Module):
    """Token ids `B x L` -> `B x L x D` (token + position + type embedding, LayerNorm, dropout)."""

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        self.tokens = nn.Embedding(cfg.vocab_size, cfg.dim, padding_idx=cfg.pad_id)
        self.pos = nn.Parameter(torch.zeros(cfg.max_text_len, cfg.dim))
        self.text_type = nn.Parameter(torch.zeros(cfg.dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        nn.init.trunc_normal_(self.text_type, std=0.02)
        self.norm = nn.LayerNorm(cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.shape[1] > self.pos.shape[0]:
            raise ValueError(f"text of {ids.shape[1]} tokens exceeds max_text_len {self.pos.shape[0]}")
        return self.drop(self.norm(self.tokens(ids) + self.pos[: ids.shape[1]] + self.text_type))


# ---------------------------------------------------------------------------------------------- model
@dataclass
class FusionOutput:
    """Final (normed) streams, per-layer raw states, and pooled embeddings `visual`, `text_cls` (`B x D`)."""

    region: torch.Tensor
    clip: torch.Tensor
    text: torch.Tensor
    layers: list[dict[str, torch.Tensor]]
    visual: torch.Tensor
    text_cls: torch.Tensor


@dataclass
class AnnotationLogits:
    """Annotation outputs: `binary` `B x F`, one `B x K_c` per categorical target, the visual embedding `B x D`,
    and the same logits from every earlier fusion layer (`exits`, for self-distillation; empty when not built)."""

    binary: torch.Tensor
    categorical: list[torch.Tensor]
    embedding: torch.Tensor
    exits: list[tuple[torch.Tensor, list[torch.Tensor]]] = field(default_factory=list)


class AnnotationHead(nn.Module):
    """Visual embedding `B x D` -> binary finding logits `B x F` and categorical logits `[B x K_c]`."""

    def __init__(self, dim: int, n_binary: int, categorical: list[int], dropout: float = 0.1) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.binary = nn.Linear(dim, n_binary)
        self.categorical = nn.ModuleList([nn.Linear(dim, k) for k in categorical])

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        z = self.drop(z)
        return self.binary(z), [h(z) for h in self.categorical]


class MatchingHead(nn.Module):
    """CMM: `[t, v, t*v]` of text [CLS] and visual embedding -> 2 logits (mismatched, matched)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3 * dim, dim), nn.GELU(), nn.Linear(dim, 2))

    def forward(self, text_cls: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([text_cls, visual, text_cls * visual], dim=-1))


class DILBERTCore(nn.Module):
    """Encoders + fusion; the part shared by pretraining, annotation and retrieval."""

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.visual = VisualEncoder(cfg)
        self.text = TextEmbedding(cfg)
        self.fusion = FusionEncoder(cfg.dim, cfg.layers, cfg.heads, cfg.mlp_ratio, cfg.dropout)
        self.norms = nn.ModuleDict({s: nn.LayerNorm(cfg.dim) for s in STREAMS})
        self.visual_norm = nn.LayerNorm(cfg.dim)

    def pool_visual(self, region: torch.Tensor, clip: torch.Tensor) -> torch.Tensor:
        """`B x N x D`, `B x 1 x D` -> `B x D`: LayerNorm(mean of regions + clip token)."""
        return self.visual_norm(region.mean(dim=1) + clip[:, 0])

    def fuse(self, region: torch.Tensor, clip: torch.Tensor, ids: torch.Tensor,
             text_pad: torch.Tensor | None = None) -> FusionOutput:
        """Visual tokens (from `self.visual`) and text ids `B x L` (pad `B x L`, True = padding) -> FusionOutput."""
        if text_pad is None:
            text_pad = ids.eq(self.cfg.pad_id)
        h = {"region": region, "clip": clip, "text": self.text(ids)}
        pads = {"region": None, "clip": None, "text": text_pad}
        states = self.fusion(h, pads)
        last = {s: self.norms[s](states[-1][s]) for s in STREAMS}
        return FusionOutput(last["region"], last["clip"], last["text"], states,
                            self.pool_visual(last["region"], last["clip"]), last["text"][:, 0])

    def empty_text(self, batch: int, device: torch.device) -> torch.Tensor:
        """`[CLS] [SEP]` for every item: the text input of image-only annotation, `B x 2`."""
        return torch.tensor([self.cfg.cls_id, self.cfg.sep_id], device=device).expand(batch, 2)

    def forward(self, x: torch.Tensor, ids: torch.Tensor, text_pad: torch.Tensor | None = None,
                region_mask: torch.Tensor | None = None) -> FusionOutput:
        region, clip = self.visual(x, region_mask)
        return self.fuse(region, clip, ids, text_pad)


def report_token_ids(tokenizer: "TextTokenizer", graph: "KnowledgeGraph", reports: list[str],
                     max_len: int) -> torch.Tensor:
    """Reports as the retriever reads them: the graph's words of each, tokenised and padded, `R x max_len` int64."""
    return torch.from_numpy(tokenizer.padded_ids([graph.words(r) for r in reports], max_len))


class DILBERTInference(nn.Module):
    """What is exported: core + annotation head + matching head (no pretext heads, no exit heads).

    `forward(x)` -> annotation logits `B x (F + sum K_c)` (binary logits, then each categorical target's).
    """

    def __init__(self, core: DILBERTCore, annotation: AnnotationHead, matching: MatchingHead) -> None:
        super().__init__()
        self.core = core
        self.annotation = annotation
        self.matching = matching

    @classmethod
    def build(cls, cfg: FusionConfig) -> "DILBERTInference":
        return cls(DILBERTCore(cfg), AnnotationHead(cfg.dim, cfg.n_binary, cfg.categorical, cfg.dropout),
                   MatchingHead(cfg.dim))

    def annotate(self, x: torch.Tensor) -> AnnotationLogits:
        """Image-only annotation: the clip with an empty text (`[CLS] [SEP]`)."""
        out = self.core(x, self.core.empty_text(x.shape[0], x.device))
        binary, cat = self.annotation(out.visual)
        return AnnotationLogits(binary, cat, out.visual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.annotate(x)
        return torch.cat([a.binary] + a.categorical, dim=1)

    @torch.no_grad()
    def match_scores(self, x: torch.Tensor, ids: torch.Tensor, batch_pairs: int = 256) -> torch.Tensor:
        """CMM probability of 'matched' for every (clip, text) pair: clips `N x 1 x T x H x W`, texts `M x L`
        -> `N x M`. Visual encoders run once per clip; the fusion runs once per pair."""
        region, clip = self.core.visual(x)
        n, m = region.shape[0], ids.shape[0]
        pairs = torch.cartesian_prod(torch.arange(n), torch.arange(m))
        scores = torch.empty(n * m)
        for start in range(0, len(pairs), batch_pairs):
            i, j = pairs[start:start + batch_pairs].T
            out = self.core.fuse(region[i], clip[i], ids[j])
            scores[start:start + batch_pairs] = torch.softmax(self.matching(out.text_cls, out.visual).float(), -1)[:, 1].cpu()
        return scores.reshape(n, m)


class DILBERTModel(nn.Module):
    """Core, annotation and matching heads, pretext heads (MLM, MDC, MOC) and per-layer exit heads (L_SD)."""

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.core = DILBERTCore(cfg)
        self.annotation = AnnotationHead(cfg.dim, cfg.n_binary, cfg.categorical, cfg.dropout)
        self.matching = MatchingHead(cfg.dim)
        d = cfg.dim
        self.mlm = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d), nn.Linear(d, cfg.vocab_size))
        self.mdc = nn.Linear(d, cfg.n_entity_categories)
        self.moc = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d), nn.Linear(d, cfg.n_region_classes))
        self.exit_norm = nn.LayerNorm(d)
        self.exits = nn.ModuleList([AnnotationHead(d, cfg.n_binary, cfg.categorical, cfg.dropout)
                                    for _ in range(cfg.layers - 1)])

    def inference_model(self) -> DILBERTInference:
        """The exported part, sharing this model's modules."""
        return DILBERTInference(self.core, self.annotation, self.matching)

    def forward(self, x: torch.Tensor, ids: torch.Tensor, text_pad: torch.Tensor | None = None,
                region_mask: torch.Tensor | None = None) -> FusionOutput:
        return self.core(x, ids, text_pad, region_mask)

    def pretext_logits(self, out: FusionOutput, with_cmm: bool = True) -> dict[str, torch.Tensor]:
        """MLM `B x L x V`, MDC `B x L x C`, MOC `B x N_r x K` and (with_cmm) CMM `B x 2` from one fused output."""
        lg = {"mlm": self.mlm(out.text), "mdc": self.mdc(out.text), "moc": self.moc(out.region)}
        if with_cmm:
            lg["cmm"] = self.matching(out.text_cls, out.visual)
        return lg

    def annotate(self, x: torch.Tensor, with_exits: bool = False) -> AnnotationLogits:
        """Image-only annotation logits; with_exits adds the logits of every earlier fusion layer."""
        out = self.core(x, self.core.empty_text(x.shape[0], x.device))
        binary, cat = self.annotation(out.visual)
        exits = []
        if with_exits:
            for state, head in zip(out.layers[:-1], self.exits):
                z = self.exit_norm(state["region"].mean(dim=1) + state["clip"][:, 0])
                exits.append(head(z))
        return AnnotationLogits(binary, cat, out.visual, exits)
