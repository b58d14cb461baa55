import numpy as np
import pytest
import torch

from pprogen.data import (
    GRID25_CENTERS,
    NAMES,
    RING8_CENTERS,
    TOYS,
    DataError,
    Dataset,
    dataset_info,
    list_datasets,
    load_binarized_mnist,
    load_dataset,
    register_dataset,
    unregister_dataset,
)

BUILT_IN = ("digits", "digits_binary", "digits28", "digits28_binary", "sprites", "edges2digits", "digits2inverted",
            "digits2thick", "binarized_mnist", "mnist", "fashion_mnist", "cifar10", "moons", "circles", "ring8",
            "grid25", "pinwheel", "checkerboard", "swiss_roll", "sprinkler", "sprinkler_missing")


def test_digits_grayscale_and_binary_views():
    gray = load_dataset("digits")
    binary = load_dataset("digits_binary")
    assert gray.shape == binary.shape == (1, 8, 8)
    total = sum(s.shape[0] for s in (gray.train, gray.valid, gray.test))
    assert total == 1797
    assert 0.0 <= gray.train.min() and gray.train.max() <= 1.0 and not gray.binary
    assert binary.binary and set(binary.train.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(binary.train, (gray.train >= 0.5).float())
    assert gray.labels["train"].shape[0] == gray.train.shape[0] and gray.num_classes == 10


def test_flat_view_keeps_the_image_shape_for_pictures():
    flat = load_dataset("digits").flat()
    assert flat.shape == (64,) and flat.train.shape[1] == 64 and flat.image_shape == (1, 8, 8)


@pytest.mark.parametrize("name", sorted(TOYS))
def test_toys_are_2d_deterministic_and_split(name):
    a, b = load_dataset(name), load_dataset(name)
    assert a.shape == (2,) and a.train.shape == (10000, 2) and a.valid.shape == a.test.shape == (2000, 2)
    assert torch.equal(a.train, b.train)
    assert torch.isfinite(a.train).all()


@pytest.mark.parametrize("name, centers, sigma", [("ring8", RING8_CENTERS, 0.01), ("grid25", GRID25_CENTERS, 0.05)])
def test_mixture_toys_follow_their_published_definition(name, centers, sigma):
    x = load_dataset(name).train
    distance, nearest = torch.cdist(x, centers).min(1)
    assert (distance < 4 * sigma).float().mean() > 0.999
    assert torch.bincount(nearest, minlength=len(centers)).min() > 0.8 * len(x) / len(centers)
    assert len(centers) == (8 if name == "ring8" else 25)
    assert torch.allclose(centers.norm(dim=1), torch.ones(8)) if name == "ring8" else centers.abs().max() == 4


def tiny_binary(n, seed):
    return (np.random.default_rng(seed).random((n, 784)) < 0.2).astype(np.uint8)


def test_binarized_mnist_from_amat_files(tmp_path):
    for i, split in enumerate(("train", "valid", "test")):
        np.savetxt(tmp_path / f"binarized_mnist_{split}.amat", tiny_binary(3 + i, i), fmt="%d")
    ds = load_binarized_mnist(tmp_path, download=False)
    assert ds.train.shape == (3, 1, 28, 28) and ds.valid.shape[0] == 4 and ds.test.shape[0] == 5
    assert torch.equal(ds.train.reshape(3, -1), torch.from_numpy(tiny_binary(3, 0)).float())


def test_binarized_mnist_from_packed_npz_via_environment(tmp_path, monkeypatch):
    train, valid = tiny_binary(4, 1), tiny_binary(2, 2)
    np.savez(tmp_path / "binarized_mnist.npz", train=np.packbits(train, axis=1), valid=np.packbits(valid, axis=1))
    monkeypatch.setenv("PPROGEN_DATA", str(tmp_path))
    ds = load_dataset("binarized_mnist", download=False)
    assert torch.equal(ds.valid.reshape(2, -1), torch.from_numpy(valid).float())
    assert ds.test is None
    with pytest.raises(DataError, match="no 'test' split; use --split valid"):
        ds.split("test")


def test_missing_binarized_mnist_offline_says_which_files_to_put_where(tmp_path, monkeypatch):
    monkeypatch.delenv("PPROGEN_DATA", raising=False)
    with pytest.raises(DataError, match=r"binarized_mnist_\{train,valid,test\}.amat or binarized_mnist.npz.*--data-dir"):
        load_binarized_mnist(tmp_path, download=False)


URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/binarized_mnist_{train,valid,test}.amat"


def test_binarized_mnist_offline_names_the_files_the_folder_the_address_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("PPROGEN_DATA", raising=False)
    with pytest.raises(DataError) as err:
        load_binarized_mnist(tmp_path, download=False)
    text = str(err.value)
    assert "\n" not in text
    assert f"looked for binarized_mnist_{{train,valid,test}}.amat or binarized_mnist.npz in {tmp_path}," in text
    assert f"the download from {URL} is off (download=False)" in text
    assert text.endswith("put binarized_mnist.npz (or the three .amat files) in a folder DIR and pass --data-dir DIR "
                         "(or set PPROGEN_DATA=DIR), or load with download=True")


def test_binarized_mnist_without_a_network_names_the_address_it_tried_and_why_it_failed(tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    asked = []

    def no_network(url, timeout=None):
        asked.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.delenv("PPROGEN_DATA", raising=False)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(DataError) as err:
        load_dataset("binarized_mnist", data_dir=tmp_path)  # download allowed, as the command line asks
    text = str(err.value)
    assert asked == [URL.replace("{train,valid,test}", "train")] and "\n" not in text
    assert f"looked for binarized_mnist_{{train,valid,test}}.amat or binarized_mnist.npz in {tmp_path}," in text
    assert (f"downloading {URL} into {tmp_path} failed: <urlopen error [Errno -3] Temporary failure in name "
            "resolution>;") in text
    assert text.endswith("--data-dir DIR (or set PPROGEN_DATA=DIR), or run again where that address can be reached")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no half-written file left behind


def test_unknown_data_name_suggests_close_ones():
    with pytest.raises(ValueError, match="did you mean 'moons'"):
        load_dataset("mons")


def test_user_files_npy_npz_pt_csv(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    np.save(tmp_path / "a.npy", x)
    np.savez(tmp_path / "b.npz", x=x, y=np.arange(50) % 2)
    torch.save({"train": torch.from_numpy(x[:40]), "valid": torch.from_numpy(x[40:])}, tmp_path / "c.pt")
    np.savetxt(tmp_path / "d.csv", x, delimiter=",", header="a,b,c", comments="")
    for name in ("a.npy", "b.npz", "d.csv"):
        ds = load_dataset(str(tmp_path / name))
        assert ds.shape == (3,) and sum(s.shape[0] for s in (ds.train, ds.valid, ds.test)) == 50
        merged = torch.cat([ds.train, ds.valid, ds.test])
        assert torch.allclose(merged.sort(0).values, torch.from_numpy(x).sort(0).values, atol=1e-6)
    assert load_dataset(str(tmp_path / "b.npz")).num_classes == 2
    ds = load_dataset(str(tmp_path / "c.pt"))
    assert ds.train.shape == (40, 3) and ds.valid.shape == (10, 3) and ds.test is None


def test_image_folder_with_label_subfolders(tmp_path):
    from PIL import Image

    for label in ("cat", "dog"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(5):
            pixels = np.full((6, 4), 255 if label == "dog" else 0, dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "imgs" / label / f"{i}.png")
    ds = load_dataset(str(tmp_path / "imgs"))
    assert ds.shape == (1, 6, 4) and ds.num_classes == 2 and ds.binary
    x = torch.cat([ds.train, ds.valid, ds.test])
    y = torch.cat([ds.labels[s] for s in ("train", "valid", "test")])
    assert torch.equal(x.mean((1, 2, 3)), y.float())


def test_unreadable_user_file_is_a_clear_error(tmp_path):
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match="cannot read data file"):
        load_dataset(str(tmp_path / "bad.npy"))
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(str(tmp_path / "nothing.npy"))
    np.save(tmp_path / "empty.npy", np.zeros((0, 4), dtype=np.float32))
    with pytest.raises(DataError, match="is empty"):
        load_dataset(str(tmp_path / "empty.npy"))
    (tmp_path / "x.txt").write_text("1")
    with pytest.raises(DataError, match="unsupported data file"):
        load_dataset(str(tmp_path / "x.txt"))


def _write_idx(path, array, magic):
    import struct

    with open(path, "wb") as fh:
        fh.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape))
        fh.write(array.astype(np.uint8).tobytes())


def test_torchvision_mnist_read_from_local_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 6)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), 0x0803)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, (n,)), 0x0801)
    ds = load_dataset("mnist", data_dir=tmp_path, download=False)
    assert ds.shape == (1, 28, 28) and ds.train.shape[0] == 10 and ds.valid.shape[0] == 2 and ds.test.shape[0] == 6
    assert 0.0 <= ds.train.min() and ds.train.max() <= 1.0
    assert ds.labels["test"].shape == (6,)


def test_torchvision_data_missing_offline_names_the_folder(tmp_path):
    with pytest.raises(DataError, match="put torchvision's FashionMNIST files under"):
        load_dataset("fashion_mnist", data_dir=tmp_path, download=False)


def test_sprinkler_data_are_network_samples_with_the_stated_missing_fraction():
    from pprogen.models import BayesianNetwork

    full, missing = load_dataset("sprinkler"), load_dataset("sprinkler_missing")
    assert full.shape == (4,) and torch.equal(full.train, load_dataset("sprinkler").train)
    assert set(full.train.unique().tolist()) == {0.0, 1.0}
    marginals = BayesianNetwork("sprinkler", cpt="fixed").marginals()
    for i, name in enumerate(["Cloudy", "Sprinkler", "Rain", "GrassWet"]):
        assert abs(full.train[:, i].mean().item() - marginals[name][1].item()) < 0.02
    assert abs(torch.isnan(missing.train).float().mean().item() - 0.2) < 0.01


def test_hand_labels_land_only_on_the_images_they_were_read_from(tmp_path):
    import hashlib
    import json

    from pprogen.data import hand_labels

    x = (torch.rand(10, 1, 4, 4, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    rows = [1, 4, 7]
    digest = hashlib.sha256((x[rows].reshape(3, -1) > 0.5).to(torch.uint8).numpy().tobytes()).hexdigest()
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"splits": {"train": {"index": rows, "label": [3, 1, 4], "sha256": digest},
                                           "valid": {"index": [20], "label": [0], "sha256": digest}}}))
    found = hand_labels({"train": x, "valid": x}, path)
    assert list(found) == ["train"]  # valid has no row 20
    assert found["train"][0].tolist() == rows and found["train"][1].tolist() == [3, 1, 4]
    other = x.clone()
    other[4, 0, 0, 0] = 1 - other[4, 0, 0, 0]  # another file under the same name: one pixel differs
    assert hand_labels({"train": other}, path) == {}


def test_the_shipped_binarized_mnist_hand_labels_match_the_data_beside_the_project():
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not (folder / "binarized_mnist.npz").is_file():
        pytest.skip("binarized MNIST is not beside the project (../shared/data)")
    data = load_dataset("binarized_mnist", folder)
    assert {k: len(r) for k, (r, _) in data.labelled_rows.items()} == {"train": 597, "valid": 200}
    for rows, labels in data.labelled_rows.values():
        assert torch.bincount(labels, minlength=10).min() >= 10 and labels.max() == 9
        assert len(set(rows.tolist())) == len(rows)
    assert data.subset(1000).labelled_rows["train"][0].max() < 1000


# ---------------------------------------------------------------- the registry


def test_the_registry_lists_every_built_in_data_set_in_order():
    assert list_datasets() == sorted(BUILT_IN)
    assert NAMES == BUILT_IN and tuple(NAMES) == BUILT_IN and "moons" in NAMES and "vae" not in NAMES
    assert list_datasets("digits28*") == ["digits28", "digits28_binary"]


@pytest.mark.parametrize("name", list_datasets())
def test_each_card_says_what_its_data_set_loads_as(name, tmp_path, monkeypatch):
    card = dataset_info(name)
    assert card.name == name and card.description and card.kind in ("image", "translation", "points", "discrete")
    if not card.offline:  # needs files or a download: offline and without files, a one-line error naming the fix
        monkeypatch.delenv("PPROGEN_DATA", raising=False)
        with pytest.raises(DataError, match="--data-dir") as err:
            load_dataset(name, data_dir=tmp_path, download=False)
        assert "\n" not in str(err.value)
        return
    data = load_dataset(name)
    assert (data.name, data.shape, data.binary, data.num_classes) == (name, card.shape, card.binary, card.num_classes)
    assert data.is_image == (card.kind in ("image", "translation"))
    assert (data.pairing is not None) == (card.kind == "translation")


@pytest.fixture
def tiny_registered(tmp_path):
    """A data set registered for one test (read from its ``data_dir``) and removed after it."""
    np.save(tmp_path / "tiny.npy", np.arange(12, dtype=np.float32).reshape(6, 2))

    @register_dataset("test_tiny", kind="points", shape=(2,), binary=False, offline=False)
    def test_tiny(data_dir=None):
        """Six rows read from ``tiny.npy``."""
        x = torch.from_numpy(np.load(f"{data_dir}/tiny.npy"))
        return Dataset("test_tiny", x[:4], x[4:], None, shape=(2,), binary=False)

    try:
        yield tmp_path
    finally:
        if "test_tiny" in NAMES:
            unregister_dataset("test_tiny")


def test_a_registered_data_set_loads_through_load_dataset(tiny_registered):
    data = load_dataset("test_tiny", data_dir=tiny_registered)
    assert data.train.tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]] and data.valid.shape == (2, 2) and data.test is None
    assert "test_tiny" in NAMES and NAMES[-1] == "test_tiny" and list_datasets("test_*") == ["test_tiny"]
    card = dataset_info("test_tiny")
    assert card.description == "Six rows read from ``tiny.npy``." and card.options == ("data_dir",)
    assert "test_tiny  (points)" in card.describe()


def test_unregistering_removes_the_name(tiny_registered):
    unregister_dataset("test_tiny")
    assert "test_tiny" not in NAMES and tuple(NAMES) == BUILT_IN
    with pytest.raises(ValueError, match="unknown data set 'test_tiny'"):
        load_dataset("test_tiny")


def test_a_duplicate_registration_raises_and_keeps_the_first():
    first = dataset_info("digits").loader
    with pytest.raises(ValueError, match="a data set named 'digits' is already registered"):
        register_dataset("digits")(lambda: None)
    assert dataset_info("digits").loader is first and tuple(NAMES) == BUILT_IN


def test_registration_refuses_what_load_dataset_could_not_serve():
    with pytest.raises(ValueError, match="reads as a file path"):
        register_dataset("mine.npy")(lambda: None)
    with pytest.raises(ValueError, match="unknown data set kind 'pictures'"):
        register_dataset("mine", kind="pictures")(lambda: None)
    with pytest.raises(TypeError, match="needs 'size'"):
        register_dataset("mine")(lambda size: None)
    assert "mine" not in NAMES


def test_a_loader_that_returns_no_dataset_is_a_clear_error():
    register_dataset("test_broken")(lambda: {"x": torch.zeros(3)})
    try:
        with pytest.raises(TypeError, match="returned a dict, not a pprogen.data.Dataset"):
            load_dataset("test_broken")
    finally:
        unregister_dataset("test_broken")


def test_unknown_data_name_with_nothing_close_lists_every_name_in_one_line():
    with pytest.raises(ValueError) as err:
        load_dataset("zzzqqq")
    assert str(err.value) == "unknown data set 'zzzqqq'; choose one of " + ", ".join(sorted(BUILT_IN))


def test_dataset_fields_after_the_splits_are_keyword_only():
    x = torch.zeros(3, 2)
    with pytest.raises(TypeError):
        Dataset("d", x, None, None, (2,), False)
    data = Dataset("d", x, None, None, shape=(2,), binary=True, labels={"train": torch.arange(3)}, num_classes=3)
    assert data.subset(2).labels["train"].tolist() == [0, 1] and data.subset(2).num_classes == 3
    image = Dataset(name="i", train=torch.zeros(2, 1, 2, 2), valid=None, test=None, shape=(1, 2, 2), binary=True)
    assert image.flat().shape == (4,) and image.flat().image_shape == (1, 2, 2) and image.flat().binary
