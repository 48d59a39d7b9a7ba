"""The XLA flags of every test process, the subprocesses the tests start included.

The tests' programs are tiny: XLA spends far longer compiling them than running them, and most of the
compile time is LLVM optimising the generated CPU code. At LLVM's lowest level the program XLA builds (its
HLO: fusion, sharding, collectives) is the same; the machine code is less tuned, and its values can differ
in the last bits (e.g. whether a multiply and an add are fused), as they do between two CPUs: measured on a
tiny Qwen2's jitted log-probs and gradients, at most 1e-6 apart. Every tolerance in the suite holds on any
CPU, and the bitwise comparisons are between processes with the same flags. Measured on test_packing.py:
59 vs 95 CPU-s for the file."""

import os

FAST_COMPILE = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")


def with_fast_compile(flags: str) -> str:
    """``flags`` plus each FAST_COMPILE flag it does not already set (a flag set by hand is kept)."""
    extra = [f for f in FAST_COMPILE if f.split("=")[0] not in flags]
    return " ".join([flags.strip(), *extra]).strip()


def cpu_flags(devices: int) -> str:
    """XLA_FLAGS for a subprocess with ``devices`` simulated CPU devices, compiled like the test process."""
    names = {f.split("=")[0] for f in FAST_COMPILE}
    kept = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if f.split("=")[0] in names)  # set by hand
    return with_fast_compile(f"--xla_force_host_platform_device_count={devices} {kept}")
