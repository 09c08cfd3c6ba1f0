"""amr_fast.precision: what precision=auto gives on each device (bf16 on CPUs with native bf16)."""

import os

import pytest

from amr_fast import precision


@pytest.mark.parametrize("requested,expected", [("fp32", "no"), ("bf16", "bf16"), ("fp16", "fp16")])
def test_explicit_precisions_are_passed_through(requested, expected):
    assert precision.choose_precision(requested, "cpu") == expected
    assert precision.choose_precision(requested, "cuda") == expected


def test_auto_on_cpu_follows_native_bf16(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.setenv("AMR_FAST_CPU_BF16", "1")
    assert precision.choose_precision("auto", "cpu") == "bf16"
    monkeypatch.setenv("AMR_FAST_CPU_BF16", "0")
    assert precision.choose_precision("auto", "cpu") == "no"


def test_auto_reads_the_cpu_flags(monkeypatch):
    monkeypatch.delenv("AMR_FAST_CPU_BF16", raising=False)
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert not precision.cpu_has_native_bf16()  # AVX-512 without bf16 emulates it: not faster than fp32
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert precision.cpu_has_native_bf16()
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"amx_tile", "amx_bf16"}))
    assert precision.cpu_has_native_bf16()


def test_a_launcher_setting_wins_over_auto_but_its_default_no_does_not(monkeypatch):
    """`accelerate launch` always sets ACCELERATE_MIXED_PRECISION ("no" unless told): precision=auto must mean the
    same under it as in a plain run, and an explicit --mixed_precision bf16|fp16 is honoured."""
    monkeypatch.setenv("AMR_FAST_CPU_BF16", "1")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    assert precision.precision_choice("auto", "cpu") == ("bf16", "precision=auto: this CPU computes bf16 natively "
                                                         "(AMR_FAST_CPU_BF16 says)")  # fmt: skip
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    assert precision.choose_precision("auto", "cpu") == "bf16"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    mp, why = precision.precision_choice("auto", "cpu")
    assert mp == "fp16" and "--mixed_precision fp16" in why
    assert precision.choose_precision("bf16", "cpu") == "bf16"  # an explicit config value still wins
    assert precision.choose_precision("fp32", "cpu") == "no"


def test_the_trainers_use_it(monkeypatch):
    from amr_fast.run import mixed_precision

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    monkeypatch.setenv("AMR_FAST_CPU_BF16", "1")
    assert mixed_precision("auto") == "bf16"  # the harness of both trainers (amr_fast.run)
    monkeypatch.setenv("AMR_FAST_CPU_BF16", "0")
    assert mixed_precision("auto") == "no"


def test_keep_freed_memory_sets_glibc_malloc_once_and_can_be_turned_off(monkeypatch):
    import platform
    import subprocess
    import sys

    code = "from amr_fast.precision import keep_freed_memory as k; print(k(), k())"
    for env, expected in (({}, "True True"), ({"AMR_FAST_MALLOC": "0"}, "False False")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env})
        assert out.returncode == 0, out.stderr
        if platform.libc_ver()[0] == "glibc" or env:
            assert out.stdout.split() == expected.split()
