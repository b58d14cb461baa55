"""Data-parallel training on 2 CPU processes (gloo), spawned by the tests as torchrun would start them."""


import pytest
import torch
import torch.distributed as dist

from pprogen.distributed import World, shard, shard_sizes
from tests.distributed_workers import launch

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is needed")


def ok(results):
    for r in results:
        assert "error" not in r and "missing" not in r, r.get("traceback") or r
    return results


def test_shards_are_disjoint_contiguous_and_cover_the_batch():
    index = torch.arange(10, 17)
    parts = [shard(index, World(rank=r, size=3)) for r in range(3)]
    assert torch.equal(torch.cat(parts), index)
    assert [p.numel() for p in parts] == shard_sizes(7, World(size=3)) == [3, 2, 2]


def test_two_ranks_keep_bit_identical_parameters(tmp_path):
    """(a) a VAE with a lazily built amortized guide and the stochastic ELBO: each rank draws its own noise,
    yet after 16 steps both hold the same parameters bit for bit."""
    a, b = ok(launch("fit_vae", 2, tmp_path))
    assert a.keys() == b.keys() and any(k.startswith("guide.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_each_rank_draws_its_own_noise_and_a_rerun_draws_the_same(tmp_path):
    """Per-rank reseeding: the ranks' latent draws differ (independent particles), yet a second run of the same
    command draws exactly the same on every rank."""
    first = ok(launch("rank_noise", 2, tmp_path))
    again = ok(launch("rank_noise", 2, tmp_path))
    a, b = first[0]["draws"], first[1]["draws"]
    assert a.shape == b.shape and a.shape[0] >= 8
    a, b = a[-8:], b[-8:]  # the training steps: 4 an epoch (64 rows, 2 ranks x 8), 2 epochs
    assert not torch.isclose(a, b).any()
    for rank in range(2):
        assert torch.equal(first[rank]["draws"], again[rank]["draws"])


@pytest.mark.parametrize("elbo", ["trace", "graph"])  # graph: Pyro's TraceGraph_ELBO, averaged by hand
def test_two_ranks_with_batch_b_equal_one_process_with_batch_2b(tmp_path, elbo):
    """(b) the all-reduced gradient is the single-process gradient of the union of the ranks' batches: the
    global latent counted once, the data plate scaled by N / global batch, the pyro.param averaged too."""
    two = ok(launch("fit_regression", 2, tmp_path, batch_size=4, epochs=3, elbo=elbo))
    one = ok(launch("fit_regression", 1, tmp_path, batch_size=8, epochs=3, elbo=elbo))[0]
    four = ok(launch("fit_regression", 1, tmp_path, batch_size=4, epochs=3, elbo=elbo))[0]  # must differ
    assert set(one) == {"AutoDelta.w", "sigma"}
    for key in one:
        assert one[key].dtype == torch.float64
        assert torch.equal(two[0][key], two[1][key])
        assert torch.allclose(two[0][key], one[key], rtol=1e-12, atol=1e-12), (key, two[0][key], one[key])
    assert not torch.allclose(four["AutoDelta.w"], one["AutoDelta.w"], rtol=1e-6, atol=1e-6)


def test_a_killed_two_rank_run_resumes_exactly_and_on_another_number_of_ranks(tmp_path):
    """(c) killed right after epoch 2's checkpoint, resumed to epoch 4: the same as the uninterrupted run,
    on 2 ranks bit for bit (the stochastic VAE) and on 1 rank with batch 2b to float64 precision."""
    whole = ok(launch("fit_vae", 2, tmp_path, epochs=4))[0]
    run = tmp_path / "vae_run"
    killed = launch("fit_vae", 2, tmp_path, epochs=4, run=str(run), die_after=2)
    assert all("missing" in r for r in killed)  # both ranks died in epoch 2's callback
    resumed = ok(launch("fit_vae", 2, tmp_path, epochs=4, run=str(run), resume=True))
    for key in whole:
        assert torch.equal(resumed[0][key], whole[key]), key

    reference = ok(launch("fit_regression", 2, tmp_path, batch_size=4, epochs=4))[0]
    run = tmp_path / "regression_run"
    killed = launch("fit_regression", 2, tmp_path, batch_size=4, epochs=4, run=str(run), die_after=2)
    assert all("missing" in r for r in killed)
    from pprogen.runs import Run

    assert Run.open(run).load_checkpoint()["epoch"] == 2  # the resume below has epochs 3 and 4 to run
    on_one = ok(launch("fit_regression", 1, tmp_path, batch_size=8, epochs=4, run=str(run), resume=True))[0]
    for key in reference:
        assert torch.allclose(on_one[key], reference[key], rtol=1e-12, atol=1e-12), key


@pytest.mark.parametrize("loss,r1", [("nonsaturating", 0.0), ("wgan_gp", 0.0), ("hinge", 1.0)])
def test_adversarial_trainer_keeps_both_networks_identical_across_ranks(tmp_path, loss, r1):
    """(d) G and D in DDP, the gradient penalty's and R1's double backward included; the moving average is
    kept on rank 0 only."""
    a, b = ok(launch("train_gan", 2, tmp_path, loss=loss, r1_weight=r1))
    trained = [k for k in a if k != "ema_updates" and "generator_ema" not in k]
    assert any(k.startswith("discriminator.") for k in trained) and any(k.startswith("generator.") for k in trained)
    for key in trained:
        assert torch.equal(a[key], b[key]), key
    assert a["ema_updates"] == 2 * (256 // 32) and b["ema_updates"] == 0


def test_a_killed_adversarial_run_resumes_exactly(tmp_path):
    whole = ok(launch("train_gan", 2, tmp_path, epochs=3))[0]
    run = tmp_path / "gan_run"
    launch("train_gan", 2, tmp_path, epochs=3, run=str(run), die_after=2)  # dies before epoch 2's checkpoint
    resumed = ok(launch("train_gan", 2, tmp_path, epochs=3, run=str(run), resume=True))[0]
    for key in whole:
        assert (whole[key] == resumed[key]) if key == "ema_updates" else torch.equal(whole[key], resumed[key]), key


def test_sharded_evidence_comes_back_in_data_order(tmp_path):
    """13 rows on 2 ranks (7 + 6): each rank's importance-sampled log p(x) is gathered in order; PPCA's
    exact log p(x) tells whether every row landed in its place."""
    a, b = ok(launch("evaluate_rows", 2, tmp_path))
    assert torch.equal(a["log_prob"], b["log_prob"]) and a["log_prob"].shape == (13,)
    assert a["estimated"] == [7] and b["estimated"] == [6]  # each rank estimated only its own rows
    assert torch.allclose(a["log_prob"], a["exact"], atol=0.05)
    assert (a["exact"][1:] - a["exact"][:-1]).abs().max() > 0.5  # a misplaced row would show


def test_a_rank_that_dies_makes_the_other_stop_with_a_clear_error(tmp_path):
    """Rank 1 dies after epoch 1; rank 0 does not hang: its next collective fails within the timeout, with
    a message that says what happened and how to resume, and the epoch-1 checkpoint stays intact."""
    run = tmp_path / "vae_run"
    results = launch("fit_vae", 2, tmp_path, epochs=3, run=str(run), die_after=1, die_rank=1, timeout=20,
                     timeout_s=120)
    assert "missing" in results[1]
    message = results[0]["error"]
    assert message.startswith("CollectiveError: rank 0 of 2:") and "--resume" in message, message
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and len(state["history"]["records"]) == 1


def test_sharded_exact_evaluation_scores_each_row_once_and_too_few_rows_is_an_error(tmp_path):
    """The CLI's exact log p(x) path on 2 ranks: 13 rows split 7 + 6, the mean NLL equal to one process's;
    1 row for 2 ranks is a one-line error on every rank, not a rank waiting for the other."""
    a, b = ok(launch("evaluate_exact", 2, tmp_path, limit=13))
    assert (a["scored"], b["scored"]) == (7, 6) and a["num_data"] == b["num_data"] == 13
    assert a["nll"] == pytest.approx(a["exact"], rel=1e-6) and a["nll"] == b["nll"]
    for r in launch("evaluate_exact", 2, tmp_path, limit=1, timeout_s=60):
        assert "the evaluation data have 1 examples but 2 ranks" in r["error"]


def test_more_ranks_than_examples_is_a_clear_error(tmp_path):
    results = launch("too_little_data", 2, tmp_path)
    for r in results:
        assert "the training data have 1 examples but 2 ranks" in r["error"] and "nproc_per_node" in r["error"]


def test_the_timeout_must_be_positive():
    from pprogen.distributed import init

    with pytest.raises(ValueError, match="timeout must be a positive number"):
        init("cpu", timeout=0)


def torchrun(*args, cwd):
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "pprogen", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_torchrun_trains_resumes_and_evaluates_through_the_cli(tmp_path):
    """The README's commands: rank 0 alone writes the run folder; the 2-rank run resumes on 1 process and
    on 2; the sharded evaluation reports every example of the split once."""
    import json

    from pprogen.cli import main

    run = tmp_path / "run"
    args = ["--set", "z_dim=2", "--set", "hidden_dims=[16]", "--no-progress", "--eval-samples", "20"]
    done = torchrun("train", "vae", "--data", "digits_binary", "--epochs", "1", "--out", str(run), *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("training vae on digits_binary (1258 examples, 2 ranks)") == 1  # rank 0 prints
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing written beside the run folder
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 0
    done = torchrun("train", "--resume", str(run), "--epochs", "3", "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["epoch"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == [1, 2, 3]
    done = torchrun("evaluate", str(run), "--num-samples", "20", "--split", "test", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    test = json.loads((run / "summary.json").read_text())["test_evaluation"]
    assert test["num_data"] == 269 and test["num_samples"] == 20


def test_a_launched_rank_leaves_without_the_interpreter_teardown(tmp_path):
    """Under a launcher (WORLD_SIZE > 1) the CLI flushes its output and leaves with its status but without the
    teardown, where gloo's worker threads could abort the process; a plain process tears down as usual."""
    import os
    import subprocess
    import sys

    code = ("import atexit, sys; atexit.register(lambda: print('teardown', flush=True)); "
            "sys.argv = ['pprogen'] + sys.argv[1:]; from pprogen.cli import run; run()")
    for world, torn_down in (("2", False), ("1", True)):
        env = {**os.environ, "WORLD_SIZE": world}
        listed = subprocess.run([sys.executable, "-c", code, "list"], env=env, capture_output=True, text=True)
        assert listed.returncode == 0 and "nade" in listed.stdout
        assert ("teardown" in listed.stdout) == torn_down
        missing = subprocess.run([sys.executable, "-c", code, "evaluate", str(tmp_path / "no-run")], env=env,
                                 capture_output=True, text=True)
        assert missing.returncode == 2 and "pprogen: error:" in missing.stderr
        assert ("teardown" in missing.stdout) == torn_down
