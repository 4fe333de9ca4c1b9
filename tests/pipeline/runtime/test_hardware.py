"""The CPU's flags and its name as every measured figure states it, read from cpuinfo."""

from pipeline.runtime import hardware


def test_cpu_flags_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx2 amx_bf16\n\n")
    assert hardware.cpu_flags(info) == {"fpu", "avx2", "amx_bf16"}
    assert hardware.cpu_flags(tmp_path / "missing") is None


def test_the_cpu_is_named_with_its_family_model_and_bfloat16_units(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
        "model name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
    )
    assert hardware.cpu_model(cpuinfo) == "AMD EPYC 9R14 (family 25, model 17; avx512_bf16)"
    cpuinfo.write_text(
        "cpu family\t: 23\nmodel\t\t: 49\nmodel name\t: AMD EPYC 7B12\nflags\t: avx2\n"
    )
    assert hardware.cpu_model(cpuinfo) == ("AMD EPYC 7B12 (family 23, model 49; no bfloat16 units)")
