"""ndpsim: cycle-approximate, differentiable simulator of MoE inference on GPU + NDP."""
__version__ = "0.1.0"
