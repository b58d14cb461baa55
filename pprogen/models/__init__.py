"""The zoo: importing this package registers every model family."""

from pprogen.models.autoencoder import Autoencoder, LinearAutoencoder, autoencoder, linear_ae, principal_angles
from pprogen.models.autoregressive import MADE, NADE, FVSBN, AutoregressiveBernoulli, RNNAutoregressive, fvsbn, made, nade, rnn_ar
from pprogen.models.bayesnet import BayesianNetwork, DirichletCPTGuide, bayesnet, sprinkler
from pprogen.dag import SpecError, fully_connected_spec, parse_spec
from pprogen.models.flows import ENERGIES, EnergyTarget, Flow, FlowGuide, glow, iaf, maf, nice, nsf, planar, radial, realnvp
from pprogen.models.gan import GAN, ProGAN, cgan, dcgan, gan, progan
from pprogen.models.mixture import BayesianGaussianMixture, BernoulliMixture, GaussianMixture, bayesian_gmm, gmm, mixture_of_bernoullis
from pprogen.models.pixelcnn import PixelCNN, pixelcnn
from pprogen.models.ppca import PPCA, ppca
from pprogen.models.translation import CycleGAN, Pix2Pix, cyclegan, pix2pix
from pprogen.models.vae import CVAE, HVAE, VAE, AmortizedNormalGuide, conv_vae, cvae, hvae, vae
from pprogen.models.vaegan import VAEGAN, vaegan
from pprogen.models.stylegan import StyleGAN, stylegan

__all__ = [
    "StyleGAN", "stylegan", "VAEGAN", "vaegan", "Autoencoder", "LinearAutoencoder", "autoencoder", "linear_ae", "principal_angles",
    "GAN", "ProGAN", "CycleGAN", "Pix2Pix", "cgan", "cyclegan", "dcgan", "gan", "pix2pix", "progan",
    "ENERGIES", "EnergyTarget", "Flow", "FlowGuide", "glow", "iaf", "maf", "nice", "nsf", "planar", "radial", "realnvp",
    "BayesianNetwork", "DirichletCPTGuide", "SpecError", "bayesnet", "fully_connected_spec", "parse_spec", "sprinkler",
    "BayesianGaussianMixture", "bayesian_gmm", "BernoulliMixture", "GaussianMixture", "gmm", "mixture_of_bernoullis", "FVSBN", "MADE", "NADE", "PPCA", "PixelCNN", "pixelcnn", "VAE", "AmortizedNormalGuide", "AutoregressiveBernoulli", "RNNAutoregressive",
    "CVAE", "HVAE", "conv_vae", "cvae", "hvae", "fvsbn", "made", "nade", "ppca", "rnn_ar", "vae",
]
