"""The S5 SSM: one MIMO diagonal SSM of P states over H features (block HiPPO-N initialisation), discretised per
state and optionally per position, run in the time domain with a parallel associative scan."""

import torch
from torch import nn

from .precision import complex_dtype, compute_dtype, no_autocast, pairs_to_complex, parameter_dtype
from .ssm_init import hippo_n_blocks, lecun_normal, log_dt_init
from .ssm_kernels import discretize_diagonal
from .ssm_scan import associative_scan


def _as_scan_transition(da: torch.Tensor) -> torch.Tensor:
    """(P_h,) fixed-step or (batch, L, P_h) per-position Lambda_bar -> the (batch|1, L|1, P_h) scan layout."""
    return da.view(1, 1, -1) if da.dim() == 1 else da


class S5SSM(nn.Module):
    """One MIMO diagonal SSM of P states over H features, discretised per state (and per position).

    Parameters: Lambda_re, Lambda_im (P_h,); B (P_h, H, 2) = V^-1 B_init; C (H, directions * P_h, 2)
    = C_init V; D (H,); log_step (P_h,). Complex values are stored as (real, imag) pairs.
    x_k = Lambda_bar_k x_{k-1} + B_bar_k u_k; y_k = Re(C x_k) (x2 under conj_sym) + D u_k.
    """

    ssm_parameter_names = ("Lambda_re", "Lambda_im", "B", "log_step")

    def __init__(self, hidden_size: int, state_size: int, *, blocks: int = 1, conj_sym: bool = True,
                 clip_eigs: bool = False, discretization: str = "zoh", C_init: str = "trunc_standard_normal",
                 dt_min: float = 1e-3, dt_max: float = 1e-1, step_rescale: float = 1.0, bidirectional: bool = False,
                 scan_chunk_size: int | None = None):
        super().__init__()
        self.hidden_size, self.state_size, self.blocks = hidden_size, state_size, blocks
        self.conj_sym, self.clip_eigs, self.discretization = conj_sym, clip_eigs, discretization
        self.C_init, self.dt_min, self.dt_max = C_init, dt_min, dt_max
        self.step_rescale, self.bidirectional, self.scan_chunk_size = step_rescale, bidirectional, scan_chunk_size
        half = state_size // 2 if conj_sym else state_size
        directions = 2 if bidirectional else 1
        dtype = parameter_dtype()
        self.Lambda_re = nn.Parameter(torch.empty(half, dtype=dtype))
        self.Lambda_im = nn.Parameter(torch.empty(half, dtype=dtype))
        self.B = nn.Parameter(torch.empty(half, hidden_size, 2, dtype=dtype))
        self.C = nn.Parameter(torch.empty(hidden_size, directions * half, 2, dtype=dtype))
        self.D = nn.Parameter(torch.empty(hidden_size, dtype=dtype))
        self.log_step = nn.Parameter(torch.empty(half, dtype=dtype))
        self.reset_parameters()

    def initial_values(self) -> dict[str, torch.Tensor]:
        """Freshly drawn initial values (global torch RNG)."""
        lam, v, vinv = hippo_n_blocks(self.state_size, self.blocks, self.conj_sym)
        h, p = self.hidden_size, self.state_size
        b = vinv @ lecun_normal((p, h), fan_in=h).to(torch.complex128)  # (P_h, H)
        cs = []
        for _ in range(2 if self.bidirectional else 1):
            if self.C_init == "complex_normal":
                c = torch.randn(h, lam.shape[0], dtype=torch.complex128)  # real and imag parts N(0, 1/2)
            else:
                c = lecun_normal((h, p), fan_in=p).to(torch.complex128)
                if self.C_init == "trunc_standard_normal":
                    c = c + 1j * lecun_normal((h, p), fan_in=p)
                c = c @ v
            cs.append(c)
        return {
            "Lambda_re": lam.real.float(), "Lambda_im": lam.imag.float(),
            "B": torch.view_as_real(b).float(), "C": torch.view_as_real(torch.cat(cs, dim=1)).float(),
            "D": torch.randn(h, dtype=parameter_dtype()),
            "log_step": log_dt_init(lam.shape[0], self.dt_min, self.dt_max),
        }

    @torch.no_grad()
    def reset_parameters(self):
        for name, value in self.initial_values().items():
            getattr(self, name).copy_(value)

    def discrete(self, timesteps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Lambda_bar and the B_bar scale, (P_h,) or (batch, L, P_h) with ``timesteps`` (batch, L); and B (P_h, H)."""
        dtype = compute_dtype(self.log_step)
        re = self.Lambda_re.to(dtype)
        if self.clip_eigs:
            re = re.clamp(max=-1e-4)
        lam = torch.complex(re, self.Lambda_im.to(dtype))
        step_size = torch.exp(self.log_step.to(dtype)) * self.step_rescale
        if timesteps is not None:
            step_size = step_size * timesteps.to(dtype).unsqueeze(-1)
        log_da, b_scale = discretize_diagonal(lam, step_size, self.discretization)
        return torch.exp(log_da), b_scale, pairs_to_complex(self.B.to(dtype))

    def _readout(self, c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        y = torch.einsum("hp,...p->...h", c, x).real
        return 2 * y if self.conj_sym else y

    def forward(self, u: torch.Tensor, timesteps: torch.Tensor | None = None) -> torch.Tensor:
        """u (batch, L, H) real -> y (batch, L, H) in float32 (float64 for float64 parameters).

        timesteps: optional (batch, L) positive intervals t_k - t_{k-1}; position k is discretised with
        step * timesteps[:, k] (the backward direction of a bidirectional layer uses timesteps[:, k + 1]).
        """
        with no_autocast(u.device.type):
            dtype = compute_dtype(self.log_step)
            u = u.to(dtype)
            c = pairs_to_complex(self.C.to(dtype))
            half = self.Lambda_re.shape[0]
            da, b_scale, b = self.discrete(timesteps)
            bu = torch.einsum("ph,blh->blp", b, u.to(b.dtype))
            x = associative_scan(_as_scan_transition(da), b_scale * bu, chunk_size=self.scan_chunk_size)
            y = self._readout(c[:, :half], x)
            if self.bidirectional:
                if timesteps is not None:
                    ones = torch.ones_like(timesteps[:, :1])
                    da, b_scale, _ = self.discrete(torch.cat([timesteps[:, 1:], ones], dim=1))
                    da, b_scale = da.flip(1), b_scale.flip(1)
                x_back = associative_scan(_as_scan_transition(da), b_scale * bu.flip(1),
                                          chunk_size=self.scan_chunk_size).flip(1)
                y = y + self._readout(c[:, half:], x_back)
            return y + self.D.to(dtype) * u

    def initial_state(self, batch_size: int) -> torch.Tensor:
        """Zero state (batch, P_h) complex."""
        if self.bidirectional:
            raise ValueError("a bidirectional S5 layer sees the future and cannot run step by step")
        dtype = complex_dtype(compute_dtype(self.log_step))
        return torch.zeros(batch_size, self.Lambda_re.shape[0], dtype=dtype, device=self.log_step.device)

    def step(self, u: torch.Tensor, state: torch.Tensor, timestep: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """One position: u (batch, H), state (batch, P_h), optional timestep (batch,) -> (y (batch, H), state)."""
        if self.bidirectional:
            raise ValueError("a bidirectional S5 layer sees the future and cannot run step by step")
        with no_autocast(u.device.type):
            dtype = compute_dtype(self.log_step)
            u = u.to(dtype)
            da, b_scale, b = self.discrete(None if timestep is None else timestep[:, None])
            if timestep is not None:
                da, b_scale = da[:, 0], b_scale[:, 0]
            state = da * state + b_scale * (u.to(b.dtype) @ b.T)
            c = pairs_to_complex(self.C.to(dtype))
            return self._readout(c, state) + self.D.to(dtype) * u, state
