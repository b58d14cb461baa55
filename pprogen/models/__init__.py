"""The zoo: importing this package registers every model family."""

from pprogen.models.ppca import PPCA, ppca
from pprogen.models.vae import VAE, AmortizedNormalGuide, conv_vae, vae

__all__ = ["PPCA", "VAE", "AmortizedNormalGuide", "conv_vae", "ppca", "vae"]
