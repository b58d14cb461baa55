"""The reader of a user's data files checks before it allocates: every damaged, hostile or unusable file is one
line of DataError naming the file, the problem and the fix; every usable file reads as the arrays it holds."""

import io
import os
import struct
import tempfile
import threading
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pprogen.data import DataError, load_dataset, read_arrays

CAP_ENV = "PPROGEN_MAX_DATA_BYTES"
FAST = settings(max_examples=50, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def refused(call, *patterns: str) -> str:
    """The one-line DataError ``call`` raises; each pattern must be in it (case-insensitive)."""
    with pytest.raises(DataError) as info:
        call()
    message = str(info.value)
    assert message and "\n" not in message, message
    for pattern in patterns:
        assert pattern.lower() in message.lower(), message
    return message


def load(path) -> object:
    return load_dataset(str(path))


def npy_with_header(header: dict, data: bytes = b"") -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, header)  # the magic string, then the header
    return out.getvalue() + data


def png_bytes(width: int, height: int, rows: bytes = b"") -> bytes:
    """A 1-bit greyscale PNG of that size whose pixel data is ``rows`` (deflated: a few bytes on disk)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def finishes(call, seconds: float = 10.0):
    """``call()``'s result or exception, or a failed test when it does not return within ``seconds`` (a read that
    blocks forever must not hang the suite)."""
    box = {}

    def target():
        try:
            box["result"] = call()
        except BaseException as err:  # noqa: BLE001 - handed back to the test
            box["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"the read did not return within {seconds} s"
    if "error" in box:
        raise box["error"]
    return box["result"]


# ---------------------------------------------------------------- one test per defect of the audit


@pytest.mark.parametrize("value", [[1.0, 2.0, 3.0], 7], ids=["list", "int"])
def test_a_pt_whose_x_is_not_a_tensor_is_refused(tmp_path, value):
    torch.save({"x": value}, tmp_path / "d.pt")
    refused(lambda: load(tmp_path / "d.pt"), "d.pt", "'x'", "tensor")


def test_a_pt_holding_a_list_is_refused(tmp_path):
    torch.save([torch.zeros(3, 2)], tmp_path / "d.pt")
    refused(lambda: load(tmp_path / "d.pt"), "d.pt", "list", "tensor")


def test_npz_splits_of_different_widths_are_refused(tmp_path):
    np.savez(tmp_path / "s.npz", train=np.zeros((5, 3)), valid=np.zeros((2, 4)))
    refused(lambda: load(tmp_path / "s.npz"), "s.npz", "train", "(3,)", "valid", "(4,)")


LABEL_CASES = {
    "shorter": (np.arange(9) % 2, "9 labels for 10"),
    "longer": (np.arange(11) % 2, "11 labels for 10"),
    "empty": (np.zeros(0, dtype=np.int64), "0 labels for 10"),
    "non_integer": (np.full(10, 0.5), "non-integer"),
    "nan": (np.full(10, np.nan), "non-integer"),
    "negative": (np.array([0, 1, -1, 0, 1, 0, 1, 0, 1, 0]), "negative"),
    "out_of_range": (np.array([0, 1, 10**12, 0, 1, 0, 1, 0, 1, 0]), "1000000000000"),
    "two_dimensional": (np.zeros((10, 3), dtype=np.int64), "shape (10, 3)"),
}


@pytest.mark.parametrize("case", sorted(LABEL_CASES))
def test_bad_labels_are_refused(tmp_path, case):
    y, says = LABEL_CASES[case]
    x = np.zeros((10, 2), dtype=np.float32)
    np.savez(tmp_path / "a.npz", x=x, y=y)
    refused(lambda: load(tmp_path / "a.npz"), "a.npz", "'y'", says)
    np.savez(tmp_path / "b.npz", train=x, train_labels=y)
    refused(lambda: load(tmp_path / "b.npz"), "b.npz", "'train_labels'", says)
    torch.save({"x": torch.from_numpy(x), "labels": torch.from_numpy(np.asarray(y))}, tmp_path / "c.pt")
    refused(lambda: load(tmp_path / "c.pt"), "c.pt", "'labels'", says)


def test_good_labels_give_the_classes_of_every_split(tmp_path):
    x = np.arange(24, dtype=np.float32).reshape(12, 2)
    np.savez(tmp_path / "s.npz", train=x[:8], train_labels=np.arange(8) % 3, test=x[8:],
             test_labels=np.array([5.0, 0.0, 1.0, 2.0]))
    ds = load(tmp_path / "s.npz")
    assert ds.num_classes == 6  # the largest label of any split, not only train's
    assert ds.labels["test"].dtype == torch.long and ds.labels["test"].tolist() == [5, 0, 1, 2]
    np.savez(tmp_path / "b.npz", x=x, y=(np.arange(12) % 2).astype(bool))
    assert load(tmp_path / "b.npz").num_classes == 2


def test_a_png_decompression_bomb_is_refused_before_it_is_decoded(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "bomb.png").write_bytes(png_bytes(40_000, 40_000, b"\0" * 100))
    refused(lambda: load(tmp_path / "imgs"), "bomb.png", "1600000000 pixels", "MAX_IMAGE_PIXELS")


def test_an_image_over_pils_pixel_limit_is_refused_even_where_pil_only_warns(tmp_path, monkeypatch):
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((12, 12), dtype=np.uint8)).save(tmp_path / "imgs" / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 144 pixels: PIL warns, and raises only above 200
    refused(lambda: load(tmp_path / "imgs"), "a.png", "144 pixels", "MAX_IMAGE_PIXELS")


def test_a_damaged_image_is_one_line(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(png_bytes(8, 8, b"\0" * 3))  # 3 bytes for 8 rows of pixels
    refused(lambda: load(tmp_path / "imgs"), "a.png")


def test_an_npz_that_inflates_past_the_cap_is_refused_before_inflating(tmp_path, monkeypatch):
    np.savez_compressed(tmp_path / "z.npz", x=np.zeros((4096, 2048)))  # 64 MiB of zeros in about 64 KiB
    assert (tmp_path / "z.npz").stat().st_size < 2**20
    monkeypatch.setenv(CAP_ENV, "16M")

    def no_inflating(*args, **kwargs):
        raise AssertionError("the array data was read before the size was checked")

    monkeypatch.setattr(np.lib.format, "read_array", no_inflating)
    monkeypatch.setattr(np, "load", no_inflating)
    refused(lambda: load(tmp_path / "z.npz"), "z.npz", CAP_ENV)
    refused(lambda: read_arrays(tmp_path / "z.npz"), "z.npz", CAP_ENV)


def test_an_npz_member_whose_header_claims_more_than_it_holds_is_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "lie.npz", "w") as archive:
        archive.writestr("x.npy", npy_with_header({"descr": "<f8", "fortran_order": False, "shape": (2**28, 2)}))
    refused(lambda: load(tmp_path / "lie.npz"), "lie.npz", "'x'")


def test_the_default_cap_refuses_four_gib_of_declared_data(tmp_path):
    header = {"descr": "<f8", "fortran_order": False, "shape": (2**20, 2**10)}  # 8 GiB of float64
    (tmp_path / "big.npy").write_bytes(npy_with_header(header))
    os.truncate(tmp_path / "big.npy", (tmp_path / "big.npy").stat().st_size + 2**33)  # sparse: no disk used
    refused(lambda: load(tmp_path / "big.npy"), "big.npy", CAP_ENV)


def test_each_format_keeps_to_the_cap(tmp_path, monkeypatch):
    x = np.random.default_rng(0).normal(size=(200, 64))  # 100 KiB of float64
    np.save(tmp_path / "a.npy", x)
    torch.save(torch.from_numpy(x), tmp_path / "a.pt")
    np.savetxt(tmp_path / "a.csv", x, delimiter=",")
    for name in ("a.npy", "a.pt", "a.csv"):
        assert load(tmp_path / name).shape == (64,)
    monkeypatch.setenv(CAP_ENV, "50000")
    for name in ("a.npy", "a.pt", "a.csv"):
        refused(lambda: load(tmp_path / name), name, CAP_ENV)
    monkeypatch.setenv(CAP_ENV, "a lot")
    refused(lambda: load(tmp_path / "a.npy"), CAP_ENV, "a lot")


def test_a_pt_tensor_that_expands_past_the_cap_is_refused(tmp_path):
    torch.save(torch.zeros(1).expand(10**6, 10**4), tmp_path / "e.pt")  # 1.5 KiB on disk, 40 GB as a tensor
    refused(lambda: load(tmp_path / "e.pt"), "e.pt", CAP_ENV)


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_a_csv_linked_to_a_device_is_refused(tmp_path):
    (tmp_path / "z.csv").symlink_to("/dev/zero")
    refused(lambda: finishes(lambda: load(tmp_path / "z.csv")), "z.csv", "/dev/zero", "not a regular file")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    os.mkfifo(tmp_path / "p.npy")
    refused(lambda: finishes(lambda: load(tmp_path / "p.npy")), "p.npy", "FIFO")
    refused(lambda: finishes(lambda: read_arrays(tmp_path / "p.npy")), "p.npy", "FIFO")
    (tmp_path / "imgs").mkdir()
    os.mkfifo(tmp_path / "imgs" / "a.png")
    refused(lambda: finishes(lambda: load(tmp_path / "imgs")), "a.png", "FIFO")


def test_a_folder_named_like_an_array_file_is_refused_by_read_arrays(tmp_path):
    (tmp_path / "d.npz").mkdir()
    refused(lambda: read_arrays(tmp_path / "d.npz"), "d.npz", "is a folder")


def test_complex_values_are_refused_not_cut_to_their_real_part(tmp_path):
    z = np.ones((6, 2)) + 1j
    np.save(tmp_path / "z.npy", z)
    np.savez(tmp_path / "z.npz", x=z)
    torch.save(torch.from_numpy(z), tmp_path / "z.pt")
    for name in ("z.npy", "z.npz", "z.pt"):
        refused(lambda: load(tmp_path / name), name, "complex")
        refused(lambda: read_arrays(tmp_path / name), name, "complex")


@pytest.mark.parametrize("array", [np.array([["a", "b"]] * 5), np.array([[1, None]] * 5, dtype=object),
                                   np.zeros(5, dtype=[("a", "<f4"), ("b", "<i4")])], ids=["str", "object", "record"])
def test_non_numeric_dtypes_are_refused(tmp_path, array):
    np.save(tmp_path / "s.npy", array, allow_pickle=True)
    refused(lambda: load(tmp_path / "s.npy"), "s.npy", "dtype", "not numbers")


def test_bool_and_integer_arrays_read_as_floats(tmp_path):
    x = np.arange(20, dtype=np.uint16).reshape(10, 2)
    np.save(tmp_path / "i.npy", x.astype(">i4"))  # big-endian as well
    np.save(tmp_path / "b.npy", x % 2 == 0)
    ints, bools = load(tmp_path / "i.npy"), load(tmp_path / "b.npy")
    merged = torch.cat([ints.train, ints.valid, ints.test])
    assert merged.dtype == torch.float32 and sorted(merged[:, 0].tolist()) == list(range(0, 20, 2))
    assert bools.binary and bools.train.dtype == torch.float32
    assert read_arrays(tmp_path / "i.npy")["x"].tolist() == x.tolist()


def test_a_csv_cell_that_is_no_number_is_refused_not_read_as_missing(tmp_path):
    (tmp_path / "c.csv").write_text("a,b\n1,2\n3,oops\n")
    refused(lambda: load(tmp_path / "c.csv"), "c.csv", "line 3", "column 2", "oops")
    (tmp_path / "r.csv").write_text("1,2\n3\n")
    refused(lambda: load(tmp_path / "r.csv"), "r.csv", "line 2")


def test_a_csv_line_too_long_to_parse_within_the_cap_is_refused(tmp_path, monkeypatch):
    (tmp_path / "w.csv").write_text("0," * 2100 + "0\n")  # 4.1 KiB; 1/64 of a 256 KiB cap is 4 KiB
    monkeypatch.setenv(CAP_ENV, "256K")
    refused(lambda: load(tmp_path / "w.csv"), "w.csv", "line 1", "longer than 4.0 KiB", CAP_ENV)
    monkeypatch.setenv(CAP_ENV, "1M")
    assert load(tmp_path / "w.csv").shape == (2101,)


def test_csv_columns_rows_and_missing_cells(tmp_path):
    (tmp_path / "one.csv").write_text("\n".join(str(v) for v in range(10)) + "\n")
    ds = load(tmp_path / "one.csv")
    assert ds.shape == (1,) and sum(t.shape[0] for t in (ds.train, ds.valid, ds.test)) == 10
    (tmp_path / "m.csv").write_text("\ufeff1,,3\n4,5,6\n")  # a byte-order mark, and a missing first-row cell
    ds = load(tmp_path / "m.csv")
    x = torch.cat([t for t in (ds.train, ds.valid, ds.test) if t is not None])
    x = x[x[:, 0].argsort()]
    assert x.shape == (2, 3) and x[0, 0] == 1 and torch.isnan(x[0, 1]) and x[1].tolist() == [4, 5, 6]


def test_nan_is_kept_as_missing_and_check_finite_tells_the_caller(tmp_path):
    from pprogen.data import check_finite

    x = np.ones((20, 3))
    x[4, 1] = np.nan
    np.save(tmp_path / "n.npy", x)
    ds = load(tmp_path / "n.npy")
    assert int(sum(torch.isnan(t).sum() for t in (ds.train, ds.valid, ds.test))) == 1
    refused(lambda: check_finite(ds), "'n'", "NaN", "1 example")
    check_finite(ds, missing_ok=True)
    x[7, 0] = np.inf
    np.save(tmp_path / "n.npy", x)
    refused(lambda: check_finite(load(tmp_path / "n.npy"), missing_ok=True), "Inf")


# ---------------------------------------------------------------- properties: anything in, one line or data out


def outcome(call):
    """``call()``'s result, or its DataError, which must be one non-empty line; any other exception fails."""
    try:
        return call()
    except DataError as err:
        assert str(err) and "\n" not in str(err), repr(str(err))
        return err


SUFFIXES = (".npy", ".npz", ".pt", ".csv")


def read_bytes_as(data: bytes, suffix: str) -> None:
    """Read ``data`` as a file of that suffix (a ``.png`` in an image folder) by every reader that takes it."""
    with tempfile.TemporaryDirectory() as folder:
        if suffix == ".png":
            Path(folder, "imgs").mkdir()
            Path(folder, "imgs", "a.png").write_bytes(data)
            outcome(lambda: load(Path(folder, "imgs")))
            return
        path = Path(folder, "f" + suffix)
        path.write_bytes(data)
        outcome(lambda: load(path))
        if suffix != ".csv":
            outcome(lambda: read_arrays(path))


@FAST
@given(data=st.binary(max_size=600), suffix=st.sampled_from(SUFFIXES + (".png",)))
def test_random_bytes_are_one_line_or_data(data, suffix):
    read_bytes_as(data, suffix)


DTYPES = ["<f4", ">f8", "<f2", np.dtype(np.longdouble).str, "<i8", ">i2", "|u1", "<u2", ">u4", "<u8", "|b1", "<c8",
          "<U3", "|S2", "<M8[s]"]
NAMES = ["x", "y", "labels", "train", "valid", "test", "train_labels", "test_labels", "other"]


@st.composite
def members(draw):
    out = {}
    for name in draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=4, unique=True)):
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
        dtype = np.dtype(draw(st.sampled_from(DTYPES)))
        values = draw(st.lists(st.integers(-3, 3), min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
        if dtype.kind in "US":
            out[name] = np.array([str(v) for v in values], dtype=dtype).reshape(shape)
        elif dtype.kind == "M":
            out[name] = np.array(values, dtype="<i8").astype(dtype).reshape(shape)
        else:
            with np.errstate(all="ignore"):
                out[name] = np.array(values).astype(dtype).reshape(shape)
    return out


def as_float(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(array, dtype=np.float64)).float()


@FAST
@given(arrays=members(), compressed=st.booleans())
def test_npz_with_random_members_is_one_line_or_exactly_its_arrays(arrays, compressed):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "r.npz")
        (np.savez_compressed if compressed else np.savez)(path, **arrays)
        result = outcome(lambda: load(path))
        read = outcome(lambda: read_arrays(path))
    if isinstance(read, dict):
        assert sorted(read) == sorted(arrays)
        for name, tensor in read.items():
            assert tuple(tensor.shape) == arrays[name].shape
            assert torch.equal(tensor.double(), torch.from_numpy(arrays[name].astype(np.float64)))
    if isinstance(result, DataError):
        return
    assert not any(a.dtype.kind in "cUSMO" for a in arrays.values())
    if "train" in arrays:
        for split in ("train", "valid", "test"):
            got = getattr(result, split)
            assert (got is None) == (split not in arrays)
            if got is not None:
                assert torch.equal(got, as_float(arrays[split]))
            if f"{split}_labels" in arrays:
                assert result.labels[split].tolist() == arrays[f"{split}_labels"].reshape(-1).astype(int).tolist()
        return
    key = "x"
    x = torch.cat([t for t in (result.train, result.valid, result.test) if t is not None])
    assert x.shape == arrays[key].shape
    flat = lambda t: t.reshape(t.shape[0], -1)  # noqa: E731
    assert sorted(map(tuple, flat(x).tolist())) == sorted(map(tuple, flat(as_float(arrays[key])).tolist()))


def valid_files(folder: Path) -> dict[str, bytes]:
    x = np.arange(24, dtype=np.float32).reshape(8, 3) / 24
    np.save(folder / "v.npy", x)
    np.savez_compressed(folder / "v.npz", x=x, y=np.arange(8) % 2)
    torch.save({"train": torch.from_numpy(x), "train_labels": torch.arange(8) % 2}, folder / "v.pt")
    np.savetxt(folder / "v.csv", x, delimiter=",", header="a,b,c", comments="")
    from PIL import Image

    Image.fromarray((x * 255).astype(np.uint8)).save(folder / "v.png")
    return {name: (folder / f"v{name}").read_bytes() for name in SUFFIXES + (".png",)}


VALID = valid_files(Path(tempfile.mkdtemp()))


@FAST
@given(suffix=st.sampled_from(SUFFIXES + (".png",)), data=st.data())
def test_truncated_or_corrupted_files_are_one_line_or_data(suffix, data):
    original = VALID[suffix]
    if data.draw(st.booleans(), label="truncate"):
        damaged = original[: data.draw(st.integers(0, len(original) - 1), label="length")]
    else:
        position = data.draw(st.integers(0, len(original) - 1), label="position")
        damaged = original[:position] + bytes([data.draw(st.integers(0, 255), label="byte")]) + original[position + 1:]
    read_bytes_as(damaged, suffix)


pt_values = st.recursive(
    st.none() | st.integers(-5, 5) | st.floats(allow_nan=True) | st.text(max_size=3)
    | st.builds(lambda n, m: torch.ones(n, m), st.integers(0, 3), st.integers(0, 3))
    | st.builds(lambda n: torch.ones(n, dtype=torch.complex64), st.integers(1, 3))
    | st.builds(lambda n: torch.arange(n).to_sparse(), st.integers(1, 3)),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(NAMES) | st.integers(0, 2), inner, max_size=3),
    max_leaves=6,
)


@FAST
@given(value=pt_values)
def test_pt_with_random_contents_is_one_line_or_data(value):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "r.pt")
        torch.save(value, path)
        outcome(lambda: load(path))
        outcome(lambda: read_arrays(path))
