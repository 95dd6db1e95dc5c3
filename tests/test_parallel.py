"""Several ranks (CPU processes, gloo) give the one-process result: guidance-parallel and
sequence-parallel sampling, the all-to-all reshapes for 2 and 4 ranks, the T5 broadcast and the
split VAE decode; and the plan refuses what cannot work, naming the numbers."""
import pytest
import torch
from parallel_ranks import (assert_exchange_is_exact, assert_latents_match, assert_videos_match, checks,
                            one_process_results, run_ranks)

from stdit_engine.cli import _parser, main
from stdit_engine.configs import get_preset
from stdit_engine.errors import ConfigError
from stdit_engine.models.stdit import LocalTokens
from stdit_engine.parallel.exchange import (pack_for_spatial, pack_for_temporal, simulate_all_to_all,
                                            unpack_spatial, unpack_temporal)
from stdit_engine.parallel.plan import plan_parallel, resolve_mode, setup_parallel


@pytest.fixture(scope="module")
def one_process():
    return one_process_results("cpu")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("two_ranks")
    run_ranks(2, folder, checks, folder, ("cfg", "dsp"), "dsp")
    return folder


@pytest.fixture(scope="module")
def two_ranks_fp8(tmp_path_factory):
    folder = tmp_path_factory.mktemp("two_ranks_fp8")
    run_ranks(2, folder, checks, folder, ("cfg", "dsp"), None, "cpu", True)
    return folder


@pytest.fixture(scope="module")
def four_ranks(tmp_path_factory):
    """auto on 4 ranks: two guidance halves, each sequence-parallel over 2 ranks."""
    folder = tmp_path_factory.mktemp("four_ranks")
    run_ranks(4, folder, checks, folder, ("auto",), None)
    return folder


@pytest.mark.parametrize("mode", ["cfg", "dsp"])
def test_two_ranks_give_the_one_process_latent(one_process, two_ranks, mode):
    assert_latents_match(two_ranks, mode, 2, one_process[0], tolerance=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["cfg", "dsp"])
def test_two_ranks_with_fp8_linears_give_the_one_process_latent(two_ranks_fp8, mode):
    """The FP8 model shards as the fp32 one does (its norms hand quantized rows to local linears
    only); on the CPU the bf16 latents come out equal."""
    reference = one_process_results("cpu", fp8=True)[0]
    assert_latents_match(two_ranks_fp8, mode, 2, reference, tolerance=1e-5)


def test_split_decode_gathers_the_video_on_rank_0(one_process, two_ranks):
    assert_videos_match(two_ranks, *one_process[1:])


@pytest.mark.slow
def test_four_ranks_cfg_and_dsp_together(one_process, four_ranks):
    assert_latents_match(four_ranks, "auto", 4, one_process[0], tolerance=1e-5, resolved="cfg+dsp")


# ---------------------------------------------------------------- the all-to-all reshapes

def _frame_shards(whole: torch.Tensor, ranks: int) -> list[torch.Tensor]:
    b, frames, positions, c = whole.shape
    return [s.reshape(b, frames // ranks * positions, c) for s in whole.chunk(ranks, dim=1)]


@pytest.mark.parametrize("ranks", [2, 4])
def test_simulated_exchange_is_the_direct_permutation(ranks):
    b, frames, positions, c = 2, 8, 12, 3
    whole = torch.randn(b, frames, positions, c)
    local = (b, frames // ranks, positions, ranks)
    sent = [pack_for_temporal(shard, *local) for shard in _frame_shards(whole, ranks)]
    temporal = [unpack_temporal(r, *local) for r in simulate_all_to_all(sent)]
    # Rank r holds positions block r over all frames, laid out as the unsharded model's temporal view.
    everything = LocalTokens.to_temporal(whole.reshape(b, frames * positions, c), b, frames, positions)
    for r, got in enumerate(temporal):
        assert torch.equal(got, everything.chunk(ranks, dim=2)[r])
    sent = [pack_for_spatial(t, *local) for t in temporal]
    back = [unpack_spatial(r, *local) for r in simulate_all_to_all(sent)]
    assert all(torch.equal(got, shard) for got, shard in zip(back, _frame_shards(whole, ranks)))


@pytest.mark.parametrize("ranks", [2, 4])
def test_real_all_to_all_matches_the_direct_permutation(ranks, request):
    assert_exchange_is_exact(request.getfixturevalue({2: "two_ranks", 4: "four_ranks"}[ranks]), ranks)


# ---------------------------------------------------------------- the plan and its errors

@pytest.mark.parametrize("mode, world, expected", [
    ("auto", 2, (2, 1)), ("cfg", 2, (2, 1)), ("dsp", 2, (1, 2)),
    ("auto", 4, (2, 2)), ("cfg", 4, (2, 2)), ("dsp", 4, (1, 4)), ("cfg+dsp", 8, (2, 4)), ("auto", 16, (2, 8)),
])
def test_modes_resolve_to_halves_and_shards(mode, world, expected):
    assert resolve_mode(mode, world, get_preset("64x512x512")) == expected  # 64 frames x 1024 positions


@pytest.mark.parametrize("mode, world, message", [
    ("dsp", 3, "sequence parallel over 3 ranks needs 3 to divide both the 64 frames and the 1024 spatial positions"),
    ("auto", 3, "over 3 ranks needs 3 to divide"),
    ("cfg", 3, "needs an even number of ranks, got 3"),
    ("cfg", 6, "over 3 ranks needs 3 to divide both the 64 frames"),
    ("cfg+dsp", 2, "needs 4 or more ranks"),
])
def test_a_world_size_that_does_not_divide_is_refused(mode, world, message):
    with pytest.raises(ConfigError, match=message):
        resolve_mode(mode, world, get_preset("64x512x512"))


def test_tiny_preset_refuses_8_ranks_of_sequence_parallel():
    with pytest.raises(ConfigError, match="8 ranks needs 8 to divide both the 4 frames and the 16 spatial"):
        resolve_mode("dsp", 8, get_preset("tiny"))


@pytest.mark.parametrize("mode, message", [
    ("cfg", "needs a process group of several ranks"), ("dsp", "torchrun --nproc_per_node"),
    ("pipeline", "unknown parallel mode 'pipeline'"),
])
def test_parallel_without_a_process_group_is_refused(mode, message):
    with pytest.raises(ConfigError, match=message):
        plan_parallel(mode, get_preset("tiny"))
    assert plan_parallel("auto", get_preset("tiny")) is None


def test_cli_parallel_none_under_torchrun_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun sets; the refusal comes before joining a group
    code = main(["generate", "--preset", "tiny", "--random-weights", "--device", "cpu", "--parallel", "none",
                 "--prompt", "x", "--out", str(tmp_path / "x.mp4")])
    assert code == 2
    assert "--parallel none under torchrun would make all 2 ranks compute and write the same files" \
        in capsys.readouterr().err


def test_cli_parallel_without_torchrun_says_how_to_launch(tmp_path, capsys):
    code = main(["generate", "--preset", "tiny", "--random-weights", "--device", "cpu", "--parallel", "dsp",
                 "--prompt", "x", "--out", str(tmp_path / "x.mp4")])
    assert code == 2
    printed = capsys.readouterr().err
    assert "needs a process group of several ranks: launch with `torchrun --nproc_per_node N`" in printed


@pytest.mark.parametrize("argv, expected", [([], "auto"), (["--parallel", "dsp"], "dsp"),
                                            (["--parallel", "cfg"], "cfg"), (["--parallel", "none"], "none")])
def test_cli_parallel_flag(argv, expected):
    args = _parser().parse_args(["generate", "--prompt", "x", "--out", "x.mp4", *argv])
    assert args.parallel == expected
    with pytest.raises(SystemExit):
        _parser().parse_args(["generate", "--prompt", "x", "--out", "x.mp4", "--parallel", "tp"])


def test_one_process_with_several_gpus_visible_warns(monkeypatch, recwarn):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.warns(UserWarning, match="2 GPUs are visible but this engine uses one; launch with `torchrun"):
        assert setup_parallel("auto", get_preset("tiny"), "cuda") == (None, "cuda")
    recwarn.clear()
    assert setup_parallel("none", get_preset("tiny"), "cuda") == (None, "cuda")  # asked for: no warning
    assert setup_parallel("auto", get_preset("tiny"), "cpu") == (None, "cpu")
    assert not recwarn.list
