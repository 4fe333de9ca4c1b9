"""The native ops' library: which CPUs take it, how it is built and cached, and that a
machine that cannot build it still trains (the layers fall back, with the reason logged)."""

import logging

import pytest

from models.native import library


@pytest.fixture
def fresh_loader():
    """`load` forgets what it loaded before and after the test."""
    library.load.cache_clear()
    yield
    library.load.cache_clear()


def test_only_avx512_bf16_cpus_without_amx_take_it():
    assert library.pays_on(frozenset({"avx2", "avx512_bf16"}))
    assert not library.pays_on(frozenset({"avx2", "avx512_bf16", "amx_bf16"}))
    assert not library.pays_on(frozenset({"avx2", "fma"}))


def test_avx512_cpus_without_amx_take_the_float32_winograd_convs():
    avx512 = {"avx512f", "avx512bw", "avx512vl"}
    assert library.winograd_pays_on(frozenset({"avx2", *avx512}))
    assert not library.winograd_pays_on(frozenset({"avx2", "avx512f"}))
    assert not library.winograd_pays_on(frozenset({*avx512, "amx_bf16"}))  # not measured
    assert not library.winograd_pays_on(frozenset({"avx2", "fma"}))


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx512_bf16 sse2\n")
    assert library.cpu_flag_set(cpuinfo) == {"fpu", "avx512_bf16", "sse2"}
    assert library.cpu_flag_set(tmp_path / "missing") == frozenset()


def test_the_cached_library_is_keyed_by_its_source(tmp_path):
    source = tmp_path / "op.cc"
    source.write_text("// one\n")
    first = library.library_path(source, tmp_path / "cache")
    source.write_text("// two\n")
    assert library.library_path(source, tmp_path / "cache") != first
    assert first.parent == tmp_path / "cache" and first.name.startswith("op-")


def test_a_source_that_does_not_compile_names_the_compiler_error(tmp_path):
    source = tmp_path / "broken.cc"
    source.write_text("this is not C++;\n")
    with pytest.raises(RuntimeError, match="g\\+\\+ failed on broken.cc"):
        library.build(source, tmp_path / "cache")
    # Nothing half-built is left to be loaded later.
    assert not list((tmp_path / "cache").iterdir())


def test_a_machine_without_a_compiler_is_told_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(library.shutil, "which", lambda name: None)
    source = tmp_path / "op.cc"
    source.write_text("// any\n")
    with pytest.raises(RuntimeError, match="install g\\+\\+"):
        library.build(source, tmp_path / "cache")


def test_a_failed_build_falls_back_with_the_reason_logged(monkeypatch, caplog, fresh_loader):
    monkeypatch.setattr(
        library,
        "cpu_flag_set",
        lambda: frozenset({"avx512_bf16", "avx512f", "avx512bw", "avx512vl"}),
    )

    def no_compiler(source):
        raise RuntimeError("no C++ compiler: install g++")

    monkeypatch.setattr(library, "build", no_compiler)
    with caplog.at_level(logging.WARNING, logger=library.__name__):
        assert library.conv_filter_grad_bf16() is None
        assert library.gelu_bf16() is None
        assert library.winograd_conv_f32() is None and library.winograd_conv_bf16() is None
    assert "TensorFlow's kernel runs instead" in caplog.text and "install g++" in caplog.text
    assert "gelu_bf16.cc" in caplog.text and "winograd_conv.cc" in caplog.text


def test_cpus_that_do_not_take_it_never_build_it(monkeypatch, fresh_loader):
    monkeypatch.setattr(library, "cpu_flag_set", lambda: frozenset({"avx2"}))
    monkeypatch.setattr(library, "build", lambda source: pytest.fail("built without it"))
    assert library.conv_filter_grad_bf16() is None and library.gelu_bf16() is None
    assert library.winograd_conv_f32() is None
