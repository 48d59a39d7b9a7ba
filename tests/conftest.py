"""Test session setup: 16 simulated CPU devices (for 4x4 meshes) and no network, before JAX starts."""

import atexit
import os
import shutil
import tempfile

from xla_flags import with_fast_compile

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=16"
# Tiny programs: compile time dominates, so LLVM optimises the CPU code least (see xla_flags.py).
os.environ["XLA_FLAGS"] = with_fast_compile(os.environ["XLA_FLAGS"])
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One XLA compilation cache for the whole run, inherited by the xdist workers and by every subprocess the tests
# start: the same tiny programs recur across tests, files and CLI runs, and a cached executable is the very
# code the first compile produced. The first process to get here (the xdist controller) creates and removes it.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="justrl_jax_tests_xla_cache_")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


# The files that take longest, longest first (measured under the README's command): with ``--dist loadfile``
# each worker takes the next file when it is nearly done, so starting the long files first and ending on
# short ones lets the two workers finish together (longest-processing-time-first scheduling).
LONGEST_FILES = (
    "test_train_loop.py",
    "test_resume.py",
    "test_multihost.py",
    "test_packing.py",
    "test_continuous_batching.py",
    "test_train_step.py",
    "test_gcs_run.py",
    "test_generate_cli.py",
    "test_page_pool.py",
    "test_sampler.py",
    "test_sampler_parity.py",
    "test_qwen2.py",
    "test_attention.py",
    "test_verification_overlap.py",
    "test_run_dir.py",
    "test_convert.py",
    "test_ragged_rows.py",
    "test_memory_plan.py",
    "test_activation_sharding.py",
    "test_wandb.py",
    "test_evaluation_judge.py",
    "test_losses.py",
    "test_verifier_pool.py",
    "test_paged_attention.py",
    "test_evaluation_run.py",
    "test_plan_cli.py",
    "test_evaluation_stream.py",
    "test_checkpoint.py",
    "test_sampling.py",
)


def pytest_configure(config):
    """pytest-xdist hands out files biggest test count first by default, which puts the many small verifier
    tests first and the long RL files last; the order below is the one that balances the workers."""
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    """Files in LONGEST_FILES order first, then the other files that hold slow tests, then the rest (the
    order within a file is kept)."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}

    def rank(item):
        name = item.path.name
        if name in LONGEST_FILES:
            return (0, LONGEST_FILES.index(name))
        return (1, 0) if item.path in slow_files else (2, 0)

    items.sort(key=rank)
