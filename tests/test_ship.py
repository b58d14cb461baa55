"""Shipped runs (`pprogen ship`, :func:`pprogen.engine.ship_run`): small folders of config and float16 weights
that evaluate and sample like the run they came from, and refuse weights that do not fit their config."""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pprogen.cli import main
from pprogen.engine import load_run, ship_run
from pprogen.runs import PACKED, REBUILT, RunError


def exact_nll(path, split="valid", **kwargs):
    _, _, dataset, model, _, _ = load_run(str(path), torch.device("cpu"), **kwargs)
    with torch.no_grad():
        return -model.log_prob(dataset.split(split)).mean().item()


def train(tmp_path, *argv):
    out = tmp_path / "run"
    assert main(["train", *argv, "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def made_run(tmp_path_factory):
    return train(tmp_path_factory.mktemp("made"), "made", "--data", "digits_binary", "--epochs", "2",
                 "--set", "num_masks=3", "--set", "order_agnostic=true")


def test_a_shipped_made_leaves_its_masks_to_the_config_and_scores_as_the_run_did(made_run, tmp_path):
    half, full = tmp_path / "half", tmp_path / "full"
    sizes = ship_run(str(made_run), str(half))
    ship_run(str(made_run), str(full), half=False)
    with safe_open(str(half / "model.safetensors"), "pt") as f:
        keys, rebuilt = set(f.keys()), json.loads(f.metadata()[REBUILT])
        assert all(f.get_tensor(k).dtype == torch.float16 for k in keys if f.get_tensor(k).is_floating_point())
    assert {"masks_0", "masks_1", "mask_index"} <= set(rebuilt) and not keys & set(rebuilt)
    original = (made_run / "model.safetensors").stat().st_size
    assert sizes["model"] < original / 2.5  # masks out, weights in half precision
    config = json.loads((half / "config.json").read_text())
    assert "data_dir" not in config and config["shipped"]["data"]["shape"] == [64]
    assert exact_nll(full) == exact_nll(made_run)  # float32: bit for bit
    assert abs(exact_nll(half) - exact_nll(made_run)) < 0.05


def test_masked_weights_ship_as_the_entries_their_masks_let_through(tmp_path):
    """MADE's weights (and its direct input-to-output weights) are stored as the entries inside the union of its
    masks: the others never reach an output. The shipped folder scores as the run did."""
    run = train(tmp_path, "made", "--data", "digits_binary", "--epochs", "1", "--set", "direct=true",
                "--set", "hidden_dims=[40]")
    full, half = tmp_path / "full", tmp_path / "half"
    ship_run(str(run), str(full), half=False)
    ship_run(str(run), str(half))
    _, _, _, model, _, _ = load_run(str(run), torch.device("cpu"))
    masks = model.weight_masks()
    assert set(masks) == {"layers.0.weight", "layers.1.weight", "direct.weight"}
    assert masks["direct.weight"].sum() == 64 * 63 // 2  # strictly earlier inputs only
    with safe_open(str(full / "model.safetensors"), "pt") as f:
        assert json.loads(f.metadata()[PACKED]) == sorted(masks)
        for name, mask in masks.items():
            assert f.get_tensor(name).shape == (int(mask.sum()),)
            assert torch.equal(f.get_tensor(name), model.state_dict()[name][mask])
    assert exact_nll(full) == exact_nll(run)  # float32: bit for bit
    assert abs(exact_nll(half) - exact_nll(run)) < 0.05
    path = full / "model.safetensors"  # a packed tensor of another length: refused, not misplaced
    with safe_open(str(path), "pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    tensors["direct.weight"] = tensors["direct.weight"][:-1]
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(RunError, match="stores 'direct.weight' packed to a mask this model does not have"):
        load_run(str(full), torch.device("cpu"))


def test_shipped_weights_refuse_a_config_that_rebuilds_other_buffers_or_a_wrong_dtype(made_run, tmp_path):
    shipped = tmp_path / "s"
    ship_run(str(made_run), str(shipped))
    config = json.loads((shipped / "config.json").read_text())
    config["model_args"]["seed"] = 7  # other masks than the ones the weights were trained with
    (shipped / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunError, match="leaves 'masks_0' to be rebuilt from config.json, and this pprogen builds a "
                                       "different one"):
        load_run(str(shipped), torch.device("cpu"))
    config["model_args"].pop("seed")
    (shipped / "config.json").write_text(json.dumps(config))
    path = shipped / "model.safetensors"
    with safe_open(str(path), "pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    rebuilt = json.loads(metadata[REBUILT])
    del rebuilt["mask_index"]
    tensors["mask_index"] = torch.zeros(())  # an integer buffer stored as a float
    save_file(tensors, str(path), metadata={REBUILT: json.dumps(rebuilt)})
    with pytest.raises(RunError, match="'mask_index' is torch.float32 in the weights, torch.int64 in the model"):
        load_run(str(shipped), torch.device("cpu"))


def test_ship_refuses_a_folder_that_exists_and_a_gan_leaving_nothing_behind(made_run, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    assert main(["ship", str(made_run), str(taken)]) == 2
    assert "exists; remove it or choose another folder" in capsys.readouterr().err
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]
    gan = train(tmp_path, "gan", "--data", "moons", "--epochs", "1", "--limit", "64")
    assert main(["ship", str(gan), str(tmp_path / "g")]) == 2
    assert "only models with a likelihood ship this way" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "taken"]  # no staging folder left


def test_a_shipped_vae_keeps_its_guide_and_its_importance_sampled_score(tmp_path, capsys):
    run = train(tmp_path, "vae", "--data", "digits_binary", "--epochs", "2", "--set", "hidden_dims=[32]",
                "--set", "z_dim=4")
    shipped = tmp_path / "vae_s"
    assert main(["ship", str(run), str(shipped)]) == 0
    assert (shipped / "guide.safetensors").is_file()
    scores = []
    for folder in (run, shipped):
        assert main(["evaluate", str(folder), "--split", "valid", "--num-samples", "200"]) == 0
        scores.append(json.loads((folder / "summary.json").read_text())["valid_evaluation"]["nll"])
    assert abs(scores[0] - scores[1]) < 0.05


def test_a_shipped_binarized_mnist_run_samples_without_its_data_and_evaluates_with_data_dir(tmp_path, monkeypatch,
                                                                                               capsys):
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    splits = {s: np.packbits(rng.random((n, 784)) < 0.2, axis=1) for s, n in (("train", 120), ("valid", 40))}
    np.savez(data / "binarized_mnist.npz", **splits)
    monkeypatch.delenv("PPROGEN_DATA", raising=False)
    run = train(tmp_path, "fvsbn", "--data", "binarized_mnist", "--data-dir", str(data), "--epochs", "1")
    shipped = tmp_path / "shipped"
    assert main(["ship", str(run), str(shipped)]) == 0
    moved = tmp_path / "moved"
    data.rename(moved)  # the data is not where the run was trained from any more
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    assert main(["sample", str(shipped), "-n", "4", "--out", str(tmp_path / "s.npy")]) == 0
    samples = np.load(tmp_path / "s.npy")
    assert samples.shape == (4, 784) and set(np.unique(samples)) <= {0.0, 1.0}
    assert main(["evaluate", str(shipped), "--split", "valid"]) == 2
    assert "binarized_mnist not found" in capsys.readouterr().err
    assert main(["evaluate", str(shipped), "--split", "valid", "--data-dir", str(moved)]) == 0
    assert abs(exact_nll(shipped, data_dir=str(moved)) - exact_nll(run, data_dir=str(moved))) < 0.05


def test_int8_blocks_ship_at_about_half_float16s_size_and_score_as_the_run_did(made_run, tmp_path, capsys):
    from pprogen.runs import INT8_BLOCK, QUANTIZED, SCALE

    half, small = tmp_path / "half", tmp_path / "int8"
    ship_run(str(made_run), str(half))
    ship_run(str(made_run), str(small), int8=True)
    assert json.loads((small / "config.json").read_text())["shipped"]["dtype"] == "int8"
    _, _, _, model, _, _ = load_run(str(made_run), torch.device("cpu"))
    state, masks = model.state_dict(), model.weight_masks()
    with safe_open(str(small / "model.safetensors"), "pt") as f:
        quantized, metadata = json.loads(f.metadata()[QUANTIZED]), f.metadata()
        assert quantized and set(quantized) <= set(masks)  # MADE's weights: packed to their masks, then int8
        for name in quantized:  # each entry within half its block's step of the trained weight
            q, scale = f.get_tensor(name), f.get_tensor(name + SCALE)
            trained = state[name][masks[name]] if name in masks else state[name].reshape(-1)
            blocks = torch.nn.functional.pad(trained, (0, -trained.numel() % INT8_BLOCK)).reshape(-1, INT8_BLOCK)
            step = blocks.abs().amax(dim=1) / 127
            assert q.dtype == torch.int8 and torch.allclose(scale, step)
            err = (q.reshape(-1).float() * scale.repeat_interleave(INT8_BLOCK)[:q.numel()] - trained).abs()
            assert (err <= step.repeat_interleave(INT8_BLOCK)[:q.numel()] / 2 + 1e-6).all()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert (small / "model.safetensors").stat().st_size < 0.6 * (half / "model.safetensors").stat().st_size
    assert abs(exact_nll(small) - exact_nll(made_run)) < 0.05
    del tensors[quantized[0] + SCALE]  # a damaged file: refused, not read as raw int8 values
    save_file(tensors, str(small / "model.safetensors"), metadata=metadata)
    with pytest.raises(RunError, match=f"lists '{quantized[0]}' as int8 but lacks it or its block scales"):
        load_run(str(small), torch.device("cpu"))
    assert main(["ship", str(made_run), str(tmp_path / "both"), "--int8", "--float32"]) == 2
    assert "--float32 and --int8 ask for two encodings" in capsys.readouterr().err
    assert not (tmp_path / "both").exists()


def test_a_shipped_folder_with_absurd_metadata_or_int8_scales_is_refused_in_one_line(made_run, tmp_path):
    from pprogen.engine import load
    from pprogen.runs import QUANTIZED, SCALE

    shipped = tmp_path / "int8"
    ship_run(str(made_run), str(shipped), int8=True)
    config = json.loads((shipped / "config.json").read_text())
    original = json.dumps(config)
    config["shipped"]["data"]["shape"] = [10**6, 10**6]  # 10^12 entries a row: refused before anything is allocated
    (shipped / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunError, match=r"config.json: 'shipped' data shape must be a list of 1 to 4 positive") as err:
        load(str(shipped), torch.device("cpu"), need_data=False)
    assert "\n" not in str(err.value)
    (shipped / "config.json").write_text(original)
    path = shipped / "model.safetensors"
    with safe_open(str(path), "pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    name = json.loads(metadata[QUANTIZED])[0]
    tensors[name + SCALE][0] = float("inf")
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(RunError, match=f"holds block scales of '{name}' that include a value that is not finite"):
        load(str(shipped), torch.device("cpu"), need_data=False)
