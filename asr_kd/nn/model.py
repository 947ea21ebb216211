"""The hybrid acoustic model: a feed-forward DNN from a context window of fbank frames to tied HMM states.

The paper's network (Hinton, Vinyals & Dean 2015, section 4) sees 26 frames of 40 log-mel coefficients (20 left,
5 right of the frame it labels), has 8 hidden layers of 2560 ReLU units and a softmax over 14,000 context-dependent
states: 1040-8x2560-14000, 84.4M parameters. The presets scale it down for smaller corpora and for CPUs.

:class:`StackedDNN` holds M members with the same architecture as one module whose weights are stacked along a
leading member axis, so that one ``torch.baddbmm`` per layer trains all members at once (each on its own batch).
Its members can be exported to, and built from, ordinary :class:`DNN` modules, which is what keeps stacked and
sequential ensemble training interchangeable.
"""
from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

_ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}
_FUNCTIONAL = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}


@dataclass
class ModelConfig:
    """Architecture of one acoustic model; the context must match the windows the features provide."""

    hidden_layers: int = 8
    hidden_dim: int = 2560
    activation: str = "relu"
    dropout: float = 0.0
    left_context: int = 20
    right_context: int = 5
    feat_dim: int = 40

    def __post_init__(self) -> None:
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}")
        if self.hidden_layers < 1 or self.hidden_dim < 1:
            raise ValueError("hidden_layers and hidden_dim must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def input_dim(self) -> int:
        """Width of one spliced input: (left + 1 + right) frames of ``feat_dim``."""
        return (self.left_context + 1 + self.right_context) * self.feat_dim

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, ModelConfig] = {
    # The paper: 1040-8x2560-C, 84.4M parameters with C = 14,000.
    "paper": ModelConfig(hidden_layers=8, hidden_dim=2560),
    # 4x512 (1.8M parameters with 860 states): for an hour or a few of audio on a CPU.
    "small": ModelConfig(hidden_layers=4, hidden_dim=512),
    # For tests and CI: seconds on a CPU.
    "tiny": ModelConfig(hidden_layers=2, hidden_dim=64),
}


def num_parameters(cfg: ModelConfig, num_classes: int) -> int:
    """Parameter count of a :class:`DNN` without building it (weights plus biases)."""
    dims = [cfg.input_dim] + [cfg.hidden_dim] * cfg.hidden_layers + [num_classes]
    return sum(i * o + o for i, o in itertools.pairwise(dims))


class DNN(nn.Module):
    """Input window -> ``hidden_layers`` x (Linear, activation[, dropout]) -> Linear logits (softmax: in the loss)."""

    def __init__(self, cfg: ModelConfig, num_classes: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        width = cfg.input_dim
        for _ in range(cfg.hidden_layers):
            layers += [nn.Linear(width, cfg.hidden_dim), _ACTIVATIONS[cfg.activation]()]
            if cfg.dropout > 0:
                layers.append(nn.Dropout(cfg.dropout))
            width = cfg.hidden_dim
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, input_dim] -> logits [B, num_classes]."""
        return self.net(x)

    def linears(self) -> list[nn.Linear]:
        return [m for m in self.net if isinstance(m, nn.Linear)]


class StackedDNN(nn.Module):
    """M independent :class:`DNN` members as stacked weights: layer l holds W [M, in, out] and b [M, 1, out].

    ``forward`` takes [M, B, input_dim] (member m's own batch in row m) and returns logits [M, B, C]; each layer is
    one ``baddbmm``, so M small members keep a wide device busy where M separate launches would not.
    """

    def __init__(self, cfg: ModelConfig, num_classes: int, num_members: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.num_members = num_members
        dims = [cfg.input_dim] + [cfg.hidden_dim] * cfg.hidden_layers + [num_classes]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(num_members, i, o)) for i, o in itertools.pairwise(dims)
        )
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(num_members, 1, o)) for o in dims[1:])

    @classmethod
    def from_members(cls, members: Sequence[DNN]) -> StackedDNN:
        """Stack existing members (same config and classes): the way to give each member its own seeded init."""
        first = members[0]
        stacked = cls(first.cfg, first.num_classes, len(members))
        stacked.to(first.linears()[0].weight.device)
        with torch.no_grad():
            for m, member in enumerate(members):
                if member.cfg != first.cfg or member.num_classes != first.num_classes:
                    raise ValueError("all stacked members must share one architecture")
                stacked.load_member(m, member.state_dict())
        return stacked

    def load_member(self, m: int, state: dict[str, torch.Tensor]) -> None:
        """Copy a :class:`DNN` state dict into member slot ``m`` (nn.Linear stores W as [out, in])."""
        with torch.no_grad():
            for layer, (w, b) in enumerate(zip(self.weights, self.biases)):
                key = self._dnn_key(layer)
                w[m].copy_(state[f"{key}.weight"].t())
                b[m, 0].copy_(state[f"{key}.bias"])

    def member_state_dict(self, m: int) -> dict[str, torch.Tensor]:
        """Member ``m`` as a state dict that loads into ``DNN(cfg, num_classes)``."""
        state = {}
        for layer, (w, b) in enumerate(zip(self.weights, self.biases)):
            key = self._dnn_key(layer)
            state[f"{key}.weight"] = w[m].detach().t().clone()
            state[f"{key}.bias"] = b[m, 0].detach().clone()
        return state

    def _dnn_key(self, layer: int) -> str:
        # Index of the layer-th Linear inside DNN.net: each hidden block is Linear, activation[, Dropout].
        block = 3 if self.cfg.dropout > 0 else 2
        return f"net.{layer * block}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[M, B, input_dim] -> logits [M, B, C]."""
        act = _FUNCTIONAL[self.cfg.activation]
        last = len(self.weights) - 1
        for layer, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(b, x, w)
            if layer < last:
                x = act(x)
                if self.cfg.dropout > 0:
                    x = nn.functional.dropout(x, self.cfg.dropout, self.training)
        return x
