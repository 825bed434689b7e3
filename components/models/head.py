"""The projection head g: an MLP from the representation h to the contrastive space z."""

from __future__ import annotations

from torch import Tensor, nn


class ProjectionHead(nn.Module):
    """``layers`` - 1 blocks of Linear-BN-ReLU, then a Linear to ``out_dim``.

    ``layers=2`` is SimCLR v1 (Linear-BN-ReLU-Linear), ``layers=3`` SimCLR v2. ``blocks[:k]``
    gives the head's k-th hidden layer (v2 fine-tunes from the first one). The projection head
    study (paper, Figure 8) also uses ``layers=1`` (the linear head: one Linear) and
    ``layers=0`` (no head: z = h, ``out_dim`` is ``in_dim`` whatever is passed).
    ``forward(h: (B, in_dim)) -> z: (B, out_dim)``.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int = 128, layers: int = 2) -> None:
        super().__init__()
        if layers < 0:
            raise ValueError(f"layers must be >= 0, got {layers}")
        if layers == 0:
            out_dim = in_dim
        self.in_dim, self.hidden_dim, self.out_dim, self.layers = in_dim, hidden_dim, out_dim, layers
        blocks: list[nn.Module] = []
        dim = in_dim
        for _ in range(layers - 1):
            # no bias: the BN that follows has its own shift
            blocks.append(
                nn.Sequential(
                    nn.Linear(dim, hidden_dim, bias=False),
                    nn.BatchNorm1d(hidden_dim),
                    nn.ReLU(inplace=True),
                )
            )
            dim = hidden_dim
        self.blocks = nn.Sequential(*blocks)
        self.out: nn.Module = nn.Linear(dim, out_dim) if layers else nn.Identity()

    def forward(self, h: Tensor) -> Tensor:
        return self.out(self.blocks(h))
