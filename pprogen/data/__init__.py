"""Data sets with train / valid / test splits, labels where they exist, and shape metadata, by registry.

Each data set is one loader registered with ``@register_dataset(name, ...)`` and a card of what is known of it
without loading it (``dataset_info(name)``); ``list_datasets(pattern)`` names them and ``load_dataset(name)``
loads one:

- ``digits`` (scikit-learn's 8x8 digits in [0, 1], shipped with scikit-learn: the offline default),
  ``digits_binary`` (the same images thresholded at 0.5) and ``digits28`` (the same images upsampled
  bilinearly to 28x28, a 28x28 image set that needs no download; ``digits28_binary`` thresholds them at 0.5,
  shaped like binarized MNIST);
- ``sprites``: 2880 binary 24x24 sprites, every combination of shape, scale, rotation, x and y, with those
  ground-truth factors (for disentanglement scores);
- translation pairs made from the digits, each example stacking an A image over a B image as ``(2, 8, 8)``:
  ``edges2digits`` (paired: A is the outline of the digit's pixels >= 0.5, B the digit), ``digits2inverted`` and
  ``digits2thick`` (unpaired: A a digit, B the inverted / dilated image of a *different* digit);
- ``binarized_mnist``: the static split of Larochelle & Murray, read from ``binarized_mnist_{train,valid,test}.amat``
  or a ``binarized_mnist.npz`` of packed bits, found in ``data_dir`` / ``$PPROGEN_DATA`` and downloaded
  from its usual location when online;
- ``mnist``, ``fashion_mnist``, ``cifar10`` through torchvision (the last 10 000 training images are the
  validation split);
- 2-D toys: ``moons``, ``circles``, ``ring8``, ``grid25``, ``pinwheel``, ``checkerboard``, ``swiss_roll``;
- discrete toys: ``sprinkler`` (samples of the sprinkler Bayesian network) and ``sprinkler_missing``
  (20% of its entries missing, as NaN);
- any other name is a user's file or folder: ``.npy``, ``.npz``, ``.pt``, ``.csv`` (empty cells read as NaN,
  a missing value) or a folder of images (one subfolder per label), checked before anything is allocated for
  it; the data read from one file is capped at 4 GiB, or at ``$PPROGEN_MAX_DATA_BYTES`` bytes (``16G``: K, M,
  G, T count in powers of 1024).

The files: ``dataset.py`` (:class:`Dataset`, :class:`DataError`), ``registry.py`` (the registry and
``load_dataset``), ``images.py``, ``downloads.py`` and ``toys.py`` (the built-in loaders, registered in that
order), ``files.py`` (a user's files) and ``readers.py`` (its checked reader of each format). ``NAMES`` is the
registered names in the order they were registered.
"""

from pprogen.data.dataset import DataError, Dataset, check_finite, intensity_levels
from pprogen.data.files import IMAGE_SUFFIXES, MAX_CLASSES, load_file, read_arrays
from pprogen.data.readers import MAX_BYTES_ENV, max_data_bytes
from pprogen.data.registry import (
    DATA_KINDS,
    NAMES,
    DatasetCard,
    dataset_info,
    list_datasets,
    load_dataset,
    register_dataset,
    unregister_dataset,
)

# the built-in data sets register themselves on import, in this order (the order of NAMES)
from pprogen.data.images import (  # noqa: E402  (erode: tests build the edges2digits outline with it)
    SPRITE_FACTORS,
    TRANSLATIONS,
    erode,
    load_digits,
    load_digits28,
    load_sprites,
    load_translation,
    render_sprites,
)
from pprogen.data.downloads import (  # noqa: E402
    BINARIZED_MNIST_URL,
    DATA_ENV,
    HAND_LABELS,
    data_dirs,
    hand_labels,
    load_binarized_mnist,
    load_torchvision,
)
from pprogen.data.toys import (  # noqa: E402
    DISCRETE_TOYS,
    GRID25_CENTERS,
    MODES,
    RING8_CENTERS,
    TOYS,
    load_toy,
)

__all__ = [
    "BINARIZED_MNIST_URL", "DATA_ENV", "DATA_KINDS", "DISCRETE_TOYS", "DataError", "Dataset", "DatasetCard",
    "GRID25_CENTERS", "HAND_LABELS", "IMAGE_SUFFIXES", "MAX_BYTES_ENV", "MAX_CLASSES", "MODES", "NAMES",
    "RING8_CENTERS", "SPRITE_FACTORS", "TOYS", "TRANSLATIONS", "check_finite", "data_dirs", "dataset_info",
    "hand_labels", "intensity_levels", "list_datasets", "load_binarized_mnist", "load_dataset", "load_digits",
    "load_digits28", "load_file", "load_sprites", "load_toy", "load_torchvision", "load_translation",
    "max_data_bytes", "read_arrays", "register_dataset", "render_sprites", "unregister_dataset",
]
