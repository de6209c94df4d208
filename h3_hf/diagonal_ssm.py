"""The parameters of a bank of diagonal SSMs (S4D's layer and H3's diagonal SSM), with their kernels."""

import torch
from torch import nn

from .precision import compute_dtype, no_autocast, pairs_to_complex, parameter_dtype
from .ssm_init import diagonal_init, log_dt_init
from .ssm_kernels import diagonal_kernel, discretize_diagonal


class DiagonalSSMKernel(nn.Module):
    """Parameters and kernels of H independent diagonal SSMs of real state size ``state_size``.

    Parameters (names follow the official H3/S4 checkpoints):
        log_dt (H,); inv_A_real (H, N) with Re A = -exp(inv_A_real); A_imag (H, N);
        B (H, N, 2) and C (directions, H, N, 2) complex stored as (real, imag) pairs.
    ``directions`` = 2 gives a second output matrix sharing A, B and dt (the anti-causal kernel of a
    bidirectional S4D layer).
    """

    ssm_parameter_names = ("log_dt", "inv_A_real", "A_imag", "B")

    def __init__(self, num_channels: int, state_size: int, *, init: str = "inv", discretization: str = "zoh",
                 dt_min: float = 1e-3, dt_max: float = 1e-1, directions: int = 1, kernel_chunk_size: int | None = None):
        super().__init__()
        self.num_channels = num_channels
        self.state_size = state_size
        self.init = init
        self.discretization = discretization
        self.dt_min, self.dt_max = dt_min, dt_max
        self.directions = directions
        self.kernel_chunk_size = kernel_chunk_size
        half = state_size // 2
        dtype = parameter_dtype()
        self.log_dt = nn.Parameter(torch.empty(num_channels, dtype=dtype))
        self.inv_A_real = nn.Parameter(torch.empty(num_channels, half, dtype=dtype))
        self.A_imag = nn.Parameter(torch.empty(num_channels, half, dtype=dtype))
        self.B = nn.Parameter(torch.empty(num_channels, half, 2, dtype=dtype))
        self.C = nn.Parameter(torch.empty(directions, num_channels, half, 2, dtype=dtype))
        self.reset_parameters()

    def initial_values(self) -> dict[str, torch.Tensor]:
        """Freshly drawn initial values of every parameter (uses the global torch RNG)."""
        a, b = diagonal_init(self.init, self.state_size)
        h = self.num_channels
        c = torch.randn(self.directions, h, self.state_size // 2, dtype=torch.complex64)
        return {
            "log_dt": log_dt_init(h, self.dt_min, self.dt_max),
            "inv_A_real": torch.log(-a.real).float().expand(h, -1).clone(),
            "A_imag": a.imag.float().expand(h, -1).clone(),
            "B": torch.view_as_real(b.to(torch.complex64)).expand(h, -1, -1).clone(),
            "C": torch.view_as_real(c).clone(),
        }

    @torch.no_grad()
    def reset_parameters(self):
        for name, value in self.initial_values().items():
            getattr(self, name).copy_(value)

    def continuous(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """dt (H, 1), A (H, N), B (H, N), C (directions, H, N) in float32+/complex64+."""
        dtype = compute_dtype(self.log_dt)
        dt = torch.exp(self.log_dt.to(dtype)).unsqueeze(-1)
        a = torch.complex(-torch.exp(self.inv_A_real.to(dtype)), self.A_imag.to(dtype))
        b = pairs_to_complex(self.B.to(dtype))
        c = pairs_to_complex(self.C.to(dtype))
        return dt, a, b, c

    def discrete(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """log dA (H, N), dB (H, N) and C (directions, H, N), complex."""
        with no_autocast(self.log_dt.device.type):
            dt, a, b, c = self.continuous()
            log_da, db_scale = discretize_diagonal(a, dt, self.discretization)
            return log_da, b * db_scale, c

    def forward(self, length: int) -> torch.Tensor:
        """Convolution kernel (directions, H, length), float32 (float64 for float64 parameters)."""
        with no_autocast(self.log_dt.device.type):
            log_da, db, c = self.discrete()
            return diagonal_kernel(c, db, log_da, length, chunk_size=self.kernel_chunk_size)
