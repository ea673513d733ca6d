"""Precision settings: which autocast dtype and memory format a run gets."""

import pytest
import torch

from semiseg_helpers.precision import (
    autocast_dtype,
    cpu_bf16_flags,
    hardware,
    hardware_label,
    precision_name,
    use_channels_last,
)

CPU = torch.device("cpu")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nflags : fpu sse avx512f avx512_bf16 amx_tile\n")
    assert cpu_bf16_flags(str(info)) == {"avx512_bf16"}
    info.write_text("processor : 0\nflags : fpu sse avx2\n")
    assert cpu_bf16_flags(str(info)) == frozenset()
    assert cpu_bf16_flags(str(tmp_path / "missing")) == frozenset()


def test_auto_takes_bf16_exactly_where_the_cpu_has_it(monkeypatch):
    import semiseg_helpers.precision as precision

    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: frozenset({"amx_bf16"}))
    assert autocast_dtype("auto", CPU) == torch.bfloat16
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: frozenset())
    assert autocast_dtype("auto", CPU) is None
    assert autocast_dtype("bf16", CPU) == torch.bfloat16     # asked for: given
    assert autocast_dtype("fp32", CPU) is None


def test_hardware_names_the_cpu_and_its_bf16(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nmodel name : AMD EPYC 9B14\n"
                    "flags : fpu avx2 avx512f avx512_bf16\n")
    assert hardware(CPU, str(info)) == {"cpu": "AMD EPYC 9B14", "cpu_bf16": ["avx512_bf16"],
                                        "gpu": None, "torch": torch.__version__}
    info.write_text("processor : 0\nmodel name : AMD EPYC\nflags : fpu avx2\n")
    assert hardware(CPU, str(info))["cpu_bf16"] == []
    # a file of many processors: the first one's block names the CPU
    info.write_text("processor\t: 0\nmodel name\t: Intel Xeon\nflags\t\t: avx2 amx_bf16\n\n"
                    "processor\t: 1\nmodel name\t: other\nflags\t\t: avx2\n\n")
    assert hardware(CPU, str(info))["cpu"] == "Intel Xeon"
    assert cpu_bf16_flags(str(info)) == {"amx_bf16"}
    assert set(hardware(CPU)) == {"cpu", "cpu_bf16", "gpu", "torch"}    # this machine's


def test_hardware_label_says_what_a_runs_seconds_were_measured_on():
    assert hardware_label({"cpu": "Intel Xeon", "cpu_bf16": ["amx_bf16", "avx512_bf16"],
                           "gpu": None}) == "Intel Xeon (amx_bf16, avx512_bf16)"
    assert hardware_label({"cpu": "AMD EPYC", "cpu_bf16": [], "gpu": None}) == \
        "AMD EPYC (no native bf16)"
    assert hardware_label({"cpu": "AMD EPYC", "cpu_bf16": [], "gpu": "NVIDIA H200"}) == \
        "NVIDIA H200"
    assert hardware_label(None) == "" and hardware_label({}) == ""   # not recorded


def test_unknown_precision_names_the_setting():
    with pytest.raises(ValueError, match="precision"):
        autocast_dtype("fp16", CPU)


def test_channels_last_auto_follows_bf16_on_cpu():
    assert use_channels_last(None, CPU, torch.bfloat16) is True
    assert use_channels_last(None, CPU, None) is False
    assert use_channels_last(None, torch.device("cuda"), None) is True
    assert use_channels_last(False, CPU, torch.bfloat16) is False
    assert precision_name(torch.bfloat16) == "bf16" and precision_name(None) == "fp32"
