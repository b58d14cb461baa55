"""The zoo: importing this package registers every model family."""

from pprogen.models.vae import VAE, AmortizedNormalGuide, conv_vae, vae

__all__ = ["VAE", "AmortizedNormalGuide", "vae", "conv_vae"]
