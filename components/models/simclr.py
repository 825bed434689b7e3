"""SimCLR model: encoder f and projection head g; ``forward(x) -> (h, z)``."""

from __future__ import annotations

from torch import Tensor, nn

from components.config import ModelConfig
from components.models.encoder import Encoder, build_encoder
from components.models.head import ProjectionHead


class SimCLRModel(nn.Module):
    """``forward(x: (B, C, H, W)) -> (h: (B, feature_dim), z: (B, projection_dim))``.

    Downstream tasks use h (the encoder output), never z.
    """

    def __init__(self, encoder: Encoder, head: ProjectionHead) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.encoder(x)
        return h, self.head(h)


def build_simclr_model(cfg: ModelConfig, in_channels: int, image_size: int) -> SimCLRModel:
    encoder = build_encoder(cfg, in_channels, image_size)
    hidden = cfg.head_hidden_dim or encoder.feature_dim
    head = ProjectionHead(encoder.feature_dim, hidden, cfg.projection_dim, cfg.head_layers)
    return SimCLRModel(encoder, head)
