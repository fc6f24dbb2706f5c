"""Device profiling (method §4): line fits, B_max prediction and back-off, real CPU profiles, profile files."""

import json
import math
import random
import sys

import pytest
import torch

import hdbl_mpi.profiling.measure as P
import hdbl_mpi.profiling.memory as M
from hdbl_mpi.engine import is_out_of_memory
from hdbl_mpi.errors import ConfigError, HdblError
from hdbl_mpi.models import build_model
from hdbl_mpi.profiling.bmax import confirm_bmax, predict_bmax
from hdbl_mpi.profiling.entry import ProfileEntry, RankLine, StepSamples
from hdbl_mpi.profiling.fit import Fit, fit_line
from hdbl_mpi.profiling.measure import ProfileSettings, device_name, profile_resolution
from hdbl_mpi.profiling.memory import OutOfMemory, memory_capacity, parse_bytes, peak_memory
from hdbl_mpi.profiling.step import make_training_step, time_steps
from hdbl_mpi.profiling.store import Profile, average_entries, load_profile, lookup, profile_key, save_profile
from hdbl_mpi.report.plots import plot_profile

CPU = torch.device("cpu")
GiB = 2**30


def small_model():
    return build_model("resnet_small", 10, 1, 16, width=4)


def wide_model():
    return build_model("resnet_small", 10, 1, 32, width=8)


# ----------------------------------------------------------------------------------------------- fits


def test_fit_line_recovers_exact_and_noisy_lines():
    xs = [8, 16, 32, 64, 128, 256, 512]
    exact = fit_line(xs, [5.66e-4 * x + 0.014 for x in xs])
    assert exact.a == pytest.approx(5.66e-4, rel=1e-9) and exact.b == pytest.approx(0.014, rel=1e-9)
    assert exact.r2 == pytest.approx(1.0)
    rng = random.Random(0)
    noisy = fit_line(xs, [(5.66e-4 * x + 0.014) * (1 + rng.gauss(0, 0.03)) for x in xs])
    assert noisy.a == pytest.approx(5.66e-4, rel=0.1) and noisy.b == pytest.approx(0.014, abs=0.01)
    assert 0.9 < noisy.r2 < 1.0
    assert fit_line([1, 2, 3], [4, 4, 4]) == Fit(a=0.0, b=4.0, r2=1.0)  # SStot == 0


def test_fit_line_needs_two_distinct_x():
    with pytest.raises(ValueError, match="at least 2 distinct x"):
        fit_line([8, 8, 8], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="at least 2 distinct x"):
        fit_line([8], [1.0])
    with pytest.raises(ValueError, match="3 x values but 2 y values"):
        fit_line([1, 2, 3], [1.0, 2.0])


# ------------------------------------------------------------------------------------------- B_max


def test_predict_bmax_applies_the_margin():
    memory = Fit(a=1e6, b=2e8, r2=1.0)  # 200 MB fixed + 1 MB per sample
    assert predict_bmax(memory, 1e9, margin=0.9) == 700  # (0.9e9 - 2e8) / 1e6
    assert predict_bmax(memory, 1e9, margin=1.0) == 800
    assert predict_bmax(Fit(a=3.0, b=1.0, r2=1.0), 100, margin=1.0) == 33  # 3*33+1 = 100 fits exactly
    assert predict_bmax(Fit(a=1e6, b=2e8, r2=1.0), 2.01e8 / 0.9) == 1
    with pytest.raises(ValueError, match="even batch 1 needs"):
        predict_bmax(Fit(a=1e6, b=9e8, r2=1.0), 1e9)
    with pytest.raises(ValueError, match="slope a = 0"):
        predict_bmax(Fit(a=0.0, b=1e8, r2=1.0), 1e9)


@pytest.mark.parametrize("error", [torch.OutOfMemoryError, OutOfMemory,
                                   lambda msg: RuntimeError("CUDA error: out of memory " + msg)])
def test_confirm_bmax_backs_off_until_a_step_fits(error):
    tried, cleanups = [], []

    def step(batch):
        tried.append(batch)
        if batch > 37:
            raise error(f"batch {batch}")

    b_max, failed = confirm_bmax(step, 50, on_oom=lambda: cleanups.append(1))
    assert (b_max, failed) == (36, [50, 45, 40])  # floor(50*.9)=45, floor(45*.9)=40, floor(40*.9)=36
    assert tried == [50, 45, 40, 36] and len(cleanups) == 3
    # Small batches step down by at least one.
    b_max, failed = confirm_bmax(lambda b: (_ for _ in ()).throw(OutOfMemory()) if b > 2 else None, 5)
    assert (b_max, failed) == (2, [5, 4, 3])


def test_confirm_bmax_gives_up_below_min_batch_and_passes_other_errors():
    def never(batch):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(HdblError, match="does not fit in memory even at batch 4.*smaller model"):
        confirm_bmax(never, 10, min_batch=4)
    with pytest.raises(HdblError, match="even at batch 1 \\(tried 3, 2, 1\\)"):
        confirm_bmax(never, 3)

    def broken(batch):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        confirm_bmax(broken, 10)


def test_is_out_of_memory():
    assert is_out_of_memory(torch.OutOfMemoryError("x"))
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("x"))
    assert is_out_of_memory(OutOfMemory("over budget"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate: out of memory"))
    assert not is_out_of_memory(RuntimeError("size mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_parse_bytes():
    assert parse_bytes("8GiB") == 8 * GiB
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("2G") == 2 * GiB
    assert parse_bytes("1.5GB") == 1_500_000_000
    assert parse_bytes("1000000") == 1_000_000
    assert parse_bytes(" 64 kib ") == 65536 and parse_bytes("10KB") == 10_000 and parse_bytes("3M") == 3 * 2**20
    for bad in ("lots", "8 parsecs", "", "-1G", "1.2.3G"):
        with pytest.raises(ConfigError, match=f"{bad!r} is not a memory size"):
            parse_bytes(bad)


def test_memory_capacity(monkeypatch):
    with pytest.raises(ConfigError, match="on the CPU pass --memory-budget \\(e.g. 8GiB\\)"):
        memory_capacity(CPU, None)
    assert memory_capacity(CPU, 8 * GiB) == 8 * GiB
    with pytest.raises(ConfigError, match="must be positive"):
        memory_capacity(CPU, 0)
    # CUDA, simulated: the total of mem_get_info, capped by a budget when one is given.
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * GiB, 80 * GiB))
    assert memory_capacity(torch.device("cuda", 0), None) == 80 * GiB
    assert memory_capacity(torch.device("cuda", 0), 40 * GiB) == 40 * GiB


def test_device_name(monkeypatch):
    name = device_name(CPU)
    assert name.startswith("cpu:") and name.endswith(f" x{torch.get_num_threads()}") and len(name) > 7
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    assert device_name(torch.device("cuda", 0)) == "NVIDIA A100-SXM4-80GB"


# ------------------------------------------------------------------------------------------ steps


def test_training_step_trains_and_leaves_no_growing_state():
    torch.manual_seed(0)
    model = small_model()
    step = make_training_step(model, 10, 1, 16, CPU, pool_size=4)
    before = [p.detach().clone() for p in model.parameters()]
    step(10)  # more than the pool: indices repeat
    state_size = len(step.optimizer.state)
    assert state_size == len(list(model.parameters()))  # momentum buffers exist after the first step
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    step(3)
    assert len(step.optimizer.state) == state_size and step.pool.shape == (4, 1, 16, 16)
    assert step.pool.dtype == torch.uint8


def test_precision_checks():
    with pytest.raises(ConfigError, match="precision=amp .* needs a CUDA device, and this rank runs on cpu: use "
                                          "precision=bf16"):
        make_training_step(small_model(), 10, 1, 16, CPU, precision="amp")
    with pytest.raises(ConfigError, match="precision is 'fp16'; use one of fp32, amp, bf16"):
        make_training_step(small_model(), 10, 1, 16, CPU, precision="fp16")
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        profile_resolution(small_model, 10, 1, 16, CPU, ProfileSettings(precision="amp", memory_budget=8 * GiB))


def test_bf16_profiling_runs_on_the_cpu_under_autocast():
    """bf16 runs the forward pass in bfloat16 on the CPU too; the weights it updates stay float32."""
    step = make_training_step(small_model(), 10, 1, 16, CPU, precision="bf16")
    seen = []
    step.model.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    step(4)
    assert seen == [torch.bfloat16] and all(p.dtype == torch.float32 for p in step.model.parameters())


def test_time_steps_warms_up_and_synchronises_on_cuda(monkeypatch):
    calls = []
    assert len(time_steps(calls.append, 7, steps=4, warmup=2)) == 4 and calls == [7] * 6
    syncs = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: syncs.append(device))
    seconds = time_steps(lambda b: None, 8, steps=3, warmup=1, device=torch.device("cuda", 0))
    assert len(seconds) == 3 and all(s >= 0 for s in seconds)
    assert syncs == [torch.device("cuda", 0)] * 6  # before starting and before stopping each timer


def test_peak_memory_cuda_branch_simulated(monkeypatch):
    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append("sync"))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: events.append("empty"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: events.append("reset"))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 123456)
    assert peak_memory(lambda b: events.append(f"step{b}"), 32, torch.device("cuda", 0)) == 123456
    assert events[-4:] == ["empty", "reset", "step32", "sync"]
    assert M.memory_method(torch.device("cuda", 0)) == "cuda"


def test_peak_memory_on_the_cpu_grows_with_the_batch(monkeypatch):
    step = make_training_step(wide_model(), 10, 1, 32, CPU)
    step(8)
    if M.memory_method(CPU) == "rss":
        rss = [peak_memory(step, b, CPU) for b in (8, 64)]
        assert rss[1] > rss[0] > 100 * 2**20  # the whole process, torch included
    monkeypatch.setattr(M, "_CLEAR_REFS", "/nonexistent/clear_refs")
    assert M.memory_method(CPU) == "saved-tensors"
    counted = [peak_memory(step, b, CPU) for b in (8, 16, 32)]
    params = sum(p.numel() * 4 for p in step.model.parameters())
    assert counted[0] > 3 * params  # weights + gradients + momentum + activations
    # Saved activations are linear in the batch: equal increments per doubling of 8.
    assert counted[0] < counted[1] < counted[2]
    assert counted[2] - counted[1] == pytest.approx(2 * (counted[1] - counted[0]), rel=0.02)


# ----------------------------------------------------------------------------------------- profiles


@pytest.fixture(scope="module")
def cpu_entry():
    torch.manual_seed(0)
    # A 16x spread of batch sizes keeps the fitted slope positive even when a busy machine makes single steps
    # twice as slow; a narrower spread failed under load.
    return profile_resolution(small_model, 10, 1, 16, CPU, ProfileSettings(batches=(4, 16, 64), steps=3, warmup=1,
                              memory_budget=8 * GiB, max_batch=64))


def test_profile_resolution_on_the_cpu(cpu_entry):
    e = cpu_entry
    assert e.a > 0 and math.isfinite(e.b) and 0 <= e.r2 <= 1
    assert e.b_max == 64 and e.b_max_predicted == 64 and e.oom_backoffs == ()  # capped by max_batch
    assert e.model == "" and e.resolution == 16 and e.precision == "fp32"
    assert e.device == device_name(CPU) and e.torch == torch.__version__
    assert (e.steps, e.warmup) == (3, 1)
    s = e.samples
    assert s.batch == (4, 16, 64) and len(s.step_s) == 3 and all(len(t) == 3 for t in s.step_s)
    assert list(s.median_s) == [sorted(t)[1] for t in s.step_s]
    assert Fit(e.a, e.b, e.r2) == fit_line(s.batch, s.median_s, relative=True)
    m = e.memory
    assert m.batches == (8, 16, 32, 64) and len(m.bytes) == 4
    assert all(x <= y for x, y in zip(m.bytes, m.bytes[1:], strict=False)) and m.a > 0
    assert m.capacity == 8 * GiB and m.margin == 0.9
    assert m.method == ("rss" if sys.platform.startswith("linux") else "saved-tensors")
    assert ProfileEntry.from_dict(json.loads(json.dumps(e.to_dict()))) == e  # stored and read back unchanged


def test_a_tight_budget_gives_a_small_bmax():
    # Measure this process's memory line first, then allow about 40 samples' worth above its intercept.
    probe = profile_resolution(wide_model, 10, 1, 32, CPU, ProfileSettings(batches=(2, 4), steps=1, warmup=0,
                               memory_budget=8 * GiB, memory_batches=(2, 4, 8), max_batch=64))
    budget = int(probe.memory.b + 40 * probe.memory.a)
    e = profile_resolution(wide_model, 10, 1, 32, CPU, ProfileSettings(
        steps=1, warmup=0, memory_budget=budget, margin=1.0, memory_batches=(2, 4, 8), max_batch=64))
    assert 1 <= e.b_max < 64 and e.b_max <= e.b_max_predicted
    assert e.oom_backoffs or e.b_max_predicted < 64
    assert all(b > e.b_max for b in e.oom_backoffs)
    assert e.samples.batch[-1] == e.b_max and all(b <= e.b_max for b in e.samples.batch)
    assert e.memory.capacity == budget


def test_budget_overrun_backs_off_with_counted_memory(monkeypatch):
    # Counted bytes are deterministic, so the budget can sit exactly at batch 24 of the measured line.
    monkeypatch.setattr(M, "_CLEAR_REFS", "/nonexistent/clear_refs")
    probe = profile_resolution(wide_model, 10, 1, 32, CPU, ProfileSettings(batches=(2, 4), steps=1, warmup=0,
                               memory_budget=8 * GiB, memory_batches=(2, 4, 8), max_batch=64))
    assert probe.memory.method == "saved-tensors" and probe.memory.r2 > 0.999
    budget = int(probe.memory.b + 24.5 * probe.memory.a)
    e = profile_resolution(wide_model, 10, 1, 32, CPU, ProfileSettings(
        steps=1, warmup=0, memory_budget=budget, margin=1.0, memory_batches=(2, 4, 8), max_batch=64))
    assert e.b_max_predicted == 24 and e.b_max == 24 and e.oom_backoffs == ()
    assert e.samples.batch == (2, 3, 4, 6, 8, 12, 17, 24)  # ~8 sizes, geometric, from 2 up to B_max
    # A prediction that is too optimistic is caught by the confirmation step and backed off.
    monkeypatch.setattr(P, "predict_bmax", lambda memory, capacity, margin=0.9: 40)
    e = profile_resolution(wide_model, 10, 1, 32, CPU, ProfileSettings(
        batches=(4, 8), steps=1, warmup=0, memory_budget=budget, margin=1.0, memory_batches=(2, 4, 8), max_batch=64))
    assert (e.b_max_predicted, e.b_max, e.oom_backoffs) == (40, 22, (40, 36, 32, 28, 25))  # 25 * 0.9 -> 22


def test_profile_that_does_not_fit_says_so():
    with pytest.raises(HdblError, match="does not fit in the memory capacity.*larger --memory-budget"):
        profile_resolution(small_model, 10, 1, 16, CPU, ProfileSettings(batches=(2, 4), steps=1, warmup=0,
                           memory_budget=2**20, memory_batches=(2, 4), max_batch=8))


# ------------------------------------------------------------------------------------- profile files


def entry(device="cpu:test x2", model="resnet18", resolution=32, precision="fp32", a=1e-3, b=0.01, b_max=500):
    return ProfileEntry(device, torch.__version__, model, resolution, precision, a, b, 0.99, b_max,
                        b_max_predicted=b_max + 10, samples=StepSamples((8, 64), (0.018, 0.074), ((0.018,), (0.074,))))


def test_profile_key():
    assert profile_key("NVIDIA A100", "2.14.1", "resnet18", 32, "amp") == "NVIDIA A100|2.14.1|resnet18|32|amp"


def test_save_load_lookup_round_trip_and_merge(tmp_path):
    path = tmp_path / "sub" / "profile.json"
    first = save_profile(path, [entry(resolution=24, a=1.0), entry(resolution=32)])
    assert first.created and len(first.entries) == 2
    assert json.loads(path.read_text())["format"] == 1
    second = save_profile(path, [entry(resolution=24, a=2.0), entry(device="NVIDIA A100", precision="amp")])
    loaded = load_profile(path)
    assert loaded == second and len(loaded.entries) == 3  # the 24 px entry was replaced, one added
    key = profile_key("cpu:test x2", torch.__version__, "resnet18", 24, "fp32")
    assert loaded.entries[key].a == 2.0
    assert lookup(loaded, "resnet18", 24, "fp32").a == 2.0
    assert lookup(loaded, "resnet18", 32, "amp").device == "NVIDIA A100"
    assert [p.name for p in path.parent.iterdir()] == ["profile.json"]  # no temporary file left behind


def test_lookup_errors(tmp_path):
    profile = save_profile(tmp_path / "p.json", [entry(), entry(device="NVIDIA A100")])
    with pytest.raises(HdblError, match="no entry for resnet18 at 224 px, fp32; it holds: resnet18 @ 32 px fp32"):
        lookup(profile, "resnet18", 224, "fp32")
    with pytest.raises(HdblError, match="several devices \\(NVIDIA A100, cpu:test x2\\); pass the device"):
        lookup(profile, "resnet18", 32, "fp32")
    assert lookup(profile, "resnet18", 32, "fp32", device="NVIDIA A100").device == "NVIDIA A100"
    with pytest.raises(HdblError, match="no entry for resnet18 at 32 px, fp32 on TPU"):
        lookup(profile, "resnet18", 32, "fp32", device="TPU")
    with pytest.raises(ValueError, match="needs its model named"):
        save_profile(tmp_path / "p.json", [entry(model="")])


def test_load_profile_errors(tmp_path):
    with pytest.raises(HdblError, match="does not exist"):
        load_profile(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(HdblError, match="not readable JSON"):
        load_profile(tmp_path / "bad.json")
    (tmp_path / "old.json").write_text(json.dumps({"format": 0, "entries": {}}))
    with pytest.raises(HdblError, match="not a profile file of format 1"):
        load_profile(tmp_path / "old.json")
    with pytest.raises(HdblError, match="not a profile file"):
        save_profile(tmp_path / "old.json", [entry()])  # never overwrite a file that is not a profile


def test_average_entries():
    avg = average_entries([entry(a=1e-3, b=0.01, b_max=500), entry(device="gpu B", a=3e-3, b=0.03, b_max=450)])
    assert avg.a == pytest.approx(2e-3) and avg.b == pytest.approx(0.02) and avg.r2 == pytest.approx(0.99)
    assert avg.b_max == 450 and avg.b_max_predicted == 460 and avg.ranks == 2
    assert avg.per_rank == (RankLine("cpu:test x2", 1e-3, 0.01, 500), RankLine("gpu B", 3e-3, 0.03, 450))
    assert avg.to_dict()["ranks"] == 2 and avg.to_dict()["per_rank"][1] == {"device": "gpu B", "a": 3e-3, "b": 0.03,
                                                                            "b_max": 450}
    assert avg.device == "cpu:test x2 + gpu B" and avg.model == "resnet18"
    assert list(avg.samples.median_s) == pytest.approx([0.018, 0.074])
    same = average_entries([entry(), entry()])
    assert same.device == "cpu:test x2" and same.ranks == 2
    with pytest.raises(ValueError, match="must share model, resolution and precision"):
        average_entries([entry(), entry(resolution=24)])


def test_plot_profile_needs_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(HdblError, match="pip install matplotlib"):
        plot_profile(Profile({"k": entry()}), tmp_path / "p.png")


def test_relative_fit_follows_small_batches_on_a_superlinear_curve():
    # Measured on the development CPU (resnet_small, 16 px): per-sample cost grows at large batches.
    batches = [8, 16, 32, 64, 128, 256]
    seconds = [0.0072, 0.0099, 0.0140, 0.0244, 0.0436, 0.1147]
    plain, rel = fit_line(batches, seconds), fit_line(batches, seconds, relative=True)
    assert plain.b < 0 < rel.b  # the plain fit's intercept is meaningless here
    errors = [abs(rel.a * x + rel.b - y) / y for x, y in zip(batches[:4], seconds[:4], strict=True)]
    assert max(errors) < 0.1
    exact = fit_line([1, 2, 4], [3.0, 5.0, 9.0], relative=True)
    assert (exact.a, exact.b) == (pytest.approx(2.0), pytest.approx(1.0))


def test_a_stored_profile_is_read_at_the_configured_precision():
    """The plan comes from the entry measured at train.precision: the same model, resolution and device
    profiled in fp32 and in bf16 give two different lines, and training in bf16 takes the bf16 one."""
    from hdbl_mpi.profiling.auto import stored_entries
    from hdbl_mpi.rules.schedule import from_config
    from hdbl_mpi.run_config import load_run_config

    profile = Profile({str(i): e for i, e in enumerate([entry(precision="fp32", a=1e-3), entry(precision="bf16",
                                                                                                 a=4e-4)])})
    for precision, a in (("fp32", 1e-3), ("bf16", 4e-4)):
        config = load_run_config(None, ["model.name=resnet18", "data.resolution=32", f"train.precision={precision}",
                                        "dual.profile_device=cpu:test x2", "dual.batch_large=64"], None)
        (found,) = stored_entries(config, from_config(config, 32).resolutions, profile)
        assert found is not None and found.precision == precision and found.a == a
    config = load_run_config(None, ["model.name=resnet18", "data.resolution=32", "train.precision=amp",
                                    "dual.profile_device=cpu:test x2", "dual.batch_large=64"], None)
    with pytest.raises(HdblError, match="no entry for resnet18 at 32 px, amp"):
        stored_entries(config, from_config(config, 32).resolutions, profile)


@pytest.mark.parametrize("name, cls", [("adamw", "AdamW"), ("lars", "LARS")])
def test_the_profiler_times_the_configured_optimizer(name, cls):
    """dual.profile: auto hands the profiler the run's own optimizer, so tau(B) includes its update's cost."""
    from hdbl_mpi.optim.optimizers import optimizer_for
    from hdbl_mpi.run_config import load_run_config

    train = load_run_config(None, [f"train.optimizer={name}", "dual.batch_large=64"], None).train
    step = make_training_step(small_model(), 10, 1, 16, CPU, optimizer=lambda model: optimizer_for(model, train))
    step(4)
    assert type(step.optimizer).__name__ == cls and len(step.optimizer.state) > 0  # it stepped
    assert type(make_training_step(small_model(), 10, 1, 16, CPU).optimizer).__name__ == "SGD"  # hdbl profile
    if name == "adamw":  # the profile entry records what was timed
        entry = profile_resolution(small_model, 10, 1, 16, CPU, ProfileSettings(batches=[2, 4], steps=2, warmup=1,
                                   memory_budget=8 * GiB, max_batch=8,
                                   optimizer=lambda model: optimizer_for(model, train)))
        assert entry.optimizer == cls


# ------------------------------------------------------------------------- hdbl profile --config


def _synthetic_config(tmp_path, *sets: str):
    from hdbl_mpi.config import load_config

    path = tmp_path / "run.yaml"
    path.write_text("data: {name: synthetic, synthetic: {train_size: 256, test_size: 32, channels: 1, size: 16}}\n"
                    "model: {name: resnet_small, width: 4}\n"
                    "dual: {profile: profile.json}\n")  # what `hdbl profile --config` is run to make
    return path, load_config(path, list(sets))


def test_profile_config_times_the_configured_step_on_its_own_data(tmp_path):
    from hdbl_mpi.profiling.trained import profile_config

    _, config = _synthetic_config(tmp_path, "train.optimizer=adamw", "train.precision=bf16",
                                  "train.channels_last=true")
    entries = profile_config(config, CPU, None, batches=[4, 16], steps=2, warmup=1, memory_budget=8 * GiB,
                             max_batch=16)
    (e,) = entries  # the schedule's one resolution: the data's 16 px
    assert (e.resolution, e.precision, e.optimizer, e.channels_last, e.compile) == (
        16, "bf16", "AdamW", True, False)
    share = e.input
    assert (share.data, share.decoder) == ("synthetic", "in-memory")
    assert len(share.median_s) == 2 and all(0 < s < 1 for s in share.share)
    assert all(i < m for i, m in zip(share.median_s, e.samples.median_s, strict=True))


def test_profile_config_refuses_flags_the_config_decides(tmp_path, capsys):
    from hdbl_mpi.cli import main

    path, _ = _synthetic_config(tmp_path)
    code = main(["profile", "--config", str(path), "--device", "cpu", "--precision", "bf16", "--output",
                 str(tmp_path / "p.json")])
    assert code == 2
    assert "drop --precision (change them with --set, e.g. --set train.precision=bf16)" in capsys.readouterr().err
    assert not (tmp_path / "p.json").exists()


def test_a_compiled_profile_compiles_each_batch_size_before_measuring_it(monkeypatch):
    from hdbl_mpi import throughput

    prepared: list[int] = []
    real = throughput.CompileWarmup.__call__

    def recording(self, batch, resolution, precision):
        prepared.append(batch)
        real(self, batch, resolution, precision)

    monkeypatch.setattr(throughput.CompileWarmup, "__call__", recording)
    e = profile_resolution(small_model, 10, 1, 16, CPU, ProfileSettings(
        compile=True, batches=(2, 4), steps=1, warmup=0, memory_budget=8 * GiB, memory_batches=(2, 4), max_batch=4))
    assert e.compile is True and e.channels_last is False
    assert {2, 4} <= set(prepared)  # every memory probe and every timed size, compiled before its measurement
    assert len(prepared) >= 2 + 1 + 2  # memory probes, the B_max confirmation, the timing sweep
