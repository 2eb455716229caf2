"""local_ai.hardware: parsers on captured outputs, detection, simulated machines, memory fit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from local_ai import hardware
from local_ai.hardware import (
    GIB,
    MIB,
    CpuInfo,
    Hardware,
    default_wired_limit_bytes,
    detect,
    fits,
    hardware_from_linux,
    hardware_from_sysctl,
    parse_cpuinfo,
    parse_meminfo,
    parse_sysctl,
    recommended_wired_limit_command,
    simulated,
    suggested_wired_limit_mb,
)
from local_ai.sizing import kv_cache_bytes

DATA = Path(__file__).parent / "data" / "hardware"


def fixture_text(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


def from_fixture(name: str) -> Hardware:
    return hardware_from_sysctl(parse_sysctl(fixture_text(name)))


@pytest.fixture
def fresh_detect() -> Iterator[None]:
    """detect() is cached per process: start and leave each such test with a clean cache."""
    detect.cache_clear()
    yield
    detect.cache_clear()


# --- parse_sysctl ------------------------------------------------------------------------


def test_parse_sysctl_key_value_lines() -> None:
    text = (
        "machdep.cpu.brand_string: Apple M2 Pro\n"
        "hw.memsize: 34359738368\n"
        "hw.perflevel0.physicalcpu: 8\n"
        "hw.perflevel1.physicalcpu: 4\n"
        "iogpu.wired_limit_mb: 0\n"
    )
    assert parse_sysctl(text) == {
        "machdep.cpu.brand_string": "Apple M2 Pro",
        "hw.memsize": "34359738368",
        "hw.perflevel0.physicalcpu": "8",
        "hw.perflevel1.physicalcpu": "4",
        "iogpu.wired_limit_mb": "0",
    }


def test_parse_sysctl_tolerates_noise_and_other_styles() -> None:
    text = (
        "\n"
        "kern.clockrate: { hz = 100, tick = 10000, tickadj = 0, profhz = 100, stathz = 100 }\n"
        "kern.version: Darwin Kernel Version 24.1.0: Thu Oct 10 21:05:14 PDT 2024; root:xnu\n"
        "kern.bootargs: \n"
        "   continuation line without a key\n"
        "kernel.ostype = Linux\n"
        "hw.ncpu: 8\n"
        "hw.ncpu: 10\n"
    )
    parsed = parse_sysctl(text)
    assert parsed["kern.clockrate"].startswith("{ hz = 100")
    assert parsed["kern.version"].endswith("PDT 2024; root:xnu")
    assert parsed["kern.bootargs"] == ""
    assert parsed["kernel.ostype"] == "Linux"
    assert parsed["hw.ncpu"] == "10"  # the last value wins
    assert len(parsed) == 5


# --- captured Mac fixtures -----------------------------------------------------------------

MAC_FIXTURES = {
    # file: (chip, P, E, cpus, memory GiB, wired limit GiB or None, configured, macOS)
    "macos_m1_8gb_ventura.txt": ("Apple M1", 4, 4, 8, 8, 8 * 2 / 3, False, "13.6.9"),
    "macos_m1_16gb.txt": ("Apple M1", 4, 4, 8, 16, 16 * 2 / 3, False, "14.6.1"),
    "macos_m2_pro_32gb.txt": ("Apple M2 Pro", 8, 4, 12, 32, 32 * 2 / 3, False, "15.1"),
    "macos_m3_max_64gb_wired.txt": ("Apple M3 Max", 12, 4, 16, 64, 56, True, "14.5"),
    "macos_m3_max_128gb_wired.txt": ("Apple M3 Max", 12, 4, 16, 128, 112, True, "15.3.2"),
    "macos_m3_ultra_512gb.txt": ("Apple M3 Ultra", 24, 8, 32, 512, 384, False, "15.4"),
    "macos_m4_max_36gb.txt": ("Apple M4 Max", 10, 4, 14, 36, 24, False, "15.2"),
}


@pytest.mark.parametrize("name", sorted(MAC_FIXTURES))
def test_mac_fixture_fields(name: str) -> None:
    chip, perf, eff, cpus, mem_gib, wired_gib, configured, macos = MAC_FIXTURES[name]
    hw = from_fixture(name)
    assert hw.platform == "macos"
    assert hw.backend == "metal"
    assert hw.is_apple_silicon
    assert "Metal" in hw.backend_label
    assert hw.chip == chip
    assert (hw.performance_cores, hw.efficiency_cores, hw.cpu_count) == (perf, eff, cpus)
    assert hw.total_memory_bytes == mem_gib * GIB
    assert hw.wired_limit_bytes == pytest.approx(wired_gib * GIB, abs=1)
    assert hw.wired_limit_configured is configured
    assert hw.macos_version == macos
    assert hw.os_version.startswith("Darwin ")
    assert hw.rosetta is False
    assert hw.source == "sysctl"
    assert 0 < hw.usable_memory_bytes < hw.wired_limit_bytes < hw.total_memory_bytes


def test_mac_usable_memory_follows_the_headroom_rule() -> None:
    # 64 GB with the wired limit raised to 56 GiB: 56 GiB budget - 5 % runtime headroom.
    m3_64 = from_fixture("macos_m3_max_64gb_wired.txt")
    assert m3_64.memory_budget_bytes == 56 * GIB
    assert m3_64.runtime_headroom_bytes == 56 * GIB // 20
    assert m3_64.usable_memory_bytes == 56 * GIB - 56 * GIB // 20
    # 16 GB default: 2/3 of RAM, minus 1 GiB (5 % would be less).
    m1_16 = from_fixture("macos_m1_16gb.txt")
    assert m1_16.memory_budget_bytes == 16 * GIB * 2 // 3
    assert m1_16.usable_memory_bytes == 16 * GIB * 2 // 3 - GIB
    # 8 GB: macOS keeps 4 GiB, so the budget is 4 GiB, not the 5.3 GiB default limit.
    m1_8 = from_fixture("macos_m1_8gb_ventura.txt")
    assert m1_8.memory_budget_bytes == 4 * GIB
    assert m1_8.usable_memory_bytes == 3 * GIB


def test_mac_describe_and_to_dict() -> None:
    hw = from_fixture("macos_m3_max_128gb_wired.txt")
    line = hw.describe()
    assert "Apple M3 Max" in line
    assert "12P+4E" in line
    assert "128.0 GiB unified memory" in line
    assert "GPU limit 112.0 GiB (iogpu.wired_limit_mb)" in line
    data = hw.to_dict()
    assert data["usable_memory_bytes"] == hw.usable_memory_bytes
    assert data["backend"] == "metal"
    assert data["wired_limit_bytes"] == 112 * GIB


def test_ventura_legacy_wired_limit_key_is_bytes() -> None:
    values = parse_sysctl(fixture_text("macos_m1_8gb_ventura.txt"))
    assert "iogpu.wired_limit_mb" not in values
    values["debug.iogpu.wired_limit"] = str(6 * GIB)
    hw = hardware_from_sysctl(values)
    assert hw.wired_limit_configured
    assert hw.wired_limit_bytes == 6 * GIB


def test_wired_limit_below_default_and_above_ram() -> None:
    values = parse_sysctl(fixture_text("macos_m1_16gb.txt"))
    values["iogpu.wired_limit_mb"] = "8192"
    assert hardware_from_sysctl(values).wired_limit_bytes == 8 * GIB
    values["iogpu.wired_limit_mb"] = str(64 * 1024)
    assert hardware_from_sysctl(values).wired_limit_bytes == 16 * GIB  # clamped to RAM
    # ... and the OS still keeps its 4 GiB.
    assert hardware_from_sysctl(values).memory_budget_bytes == 12 * GIB


def test_intel_mac_is_cpu_backend_without_wired_limit() -> None:
    hw = from_fixture("macos_intel_i9_32gb.txt")
    assert hw.platform == "macos"
    assert hw.backend == "cpu"
    assert not hw.is_apple_silicon
    assert "CPU only" in hw.backend_label
    assert hw.chip.startswith("Intel(R) Core(TM) i9-9880H")
    assert (hw.performance_cores, hw.efficiency_cores, hw.cpu_count) == (8, 0, 16)
    assert hw.wired_limit_bytes is None
    # No GPU limit: RAM minus max(4 GiB, 1/4 of RAM), minus runtime headroom.
    assert hw.memory_budget_bytes == 24 * GIB
    assert hw.usable_memory_bytes == 24 * GIB - 24 * GIB // 20
    with pytest.raises(ValueError, match="Apple Silicon"):
        recommended_wired_limit_command(hw)


def test_missing_keys_are_tolerated() -> None:
    hw = hardware_from_sysctl({"hw.memsize": str(16 * GIB)}, cpu_count=10)
    assert hw.chip == "Unknown CPU"
    assert hw.backend == "cpu"  # nothing says Apple Silicon
    assert hw.performance_cores is None
    assert hw.efficiency_cores is None
    assert hw.cpu_count == 10
    assert hw.macos_version is None
    # An Apple brand string alone is enough for Apple Silicon; no iogpu key: default limit.
    hw = hardware_from_sysctl(
        {"hw.memsize": str(16 * GIB), "machdep.cpu.brand_string": "Apple M2", "hw.physicalcpu": "8"}
    )
    assert hw.backend == "metal"
    assert hw.performance_cores == 8
    assert hw.wired_limit_bytes == 16 * GIB * 2 // 3
    assert not hw.wired_limit_configured
    with pytest.raises(ValueError, match=r"hw\.memsize"):
        hardware_from_sysctl({"machdep.cpu.brand_string": "Apple M1"})
    with pytest.raises(ValueError, match=r"hw\.memsize"):
        hardware_from_sysctl({"hw.memsize": "garbage"})


def test_rosetta_is_flagged() -> None:
    values = parse_sysctl(fixture_text("macos_m1_16gb.txt"))
    values["sysctl.proc_translated"] = "1"
    hw = hardware_from_sysctl(values)
    assert hw.rosetta
    assert hw.backend == "metal"


def test_default_wired_limit_rule() -> None:
    assert default_wired_limit_bytes(16 * GIB) == 16 * GIB * 2 // 3
    assert round(default_wired_limit_bytes(16 * GIB) / MIB, 2) == 10922.67  # llama.cpp logs
    assert round(default_wired_limit_bytes(32 * GIB) / MIB, 2) == 21845.33
    assert default_wired_limit_bytes(36 * GIB) == 24 * GIB
    assert default_wired_limit_bytes(48 * GIB) == 36 * GIB
    assert default_wired_limit_bytes(64 * GIB) == 49152 * MIB
    assert default_wired_limit_bytes(96 * GIB) == 73728 * MIB
    assert default_wired_limit_bytes(128 * GIB) == 96 * GIB


# --- Linux ---------------------------------------------------------------------------------


def test_parse_meminfo_captured() -> None:
    info = parse_meminfo(fixture_text("linux_epyc_vm_meminfo.txt"))
    assert info["MemTotal"] == 24684092 * 1024
    assert info["MemAvailable"] == 24408048 * 1024
    assert info["SwapTotal"] == 0
    assert info["HugePages_Total"] == 0  # unitless, kept as is
    assert "Active(anon)" in info


def test_parse_cpuinfo_captured_x86() -> None:
    cpu = parse_cpuinfo(fixture_text("linux_epyc_vm_cpuinfo.txt"))
    assert cpu == CpuInfo(model_name="AMD EPYC", logical_cpus=2, physical_cores=2)


def test_parse_cpuinfo_arm64_without_model_name() -> None:
    cpu = parse_cpuinfo(fixture_text("linux_arm64_cpuinfo.txt"))
    assert cpu == CpuInfo(model_name=None, logical_cpus=4, physical_cores=None)


def test_parse_cpuinfo_hyperthreads_and_other_name_keys() -> None:
    block = (
        "processor\t: {n}\nmodel\t\t: 85\nmodel name\t: Intel(R) Xeon(R) Gold\n"
        "physical id\t: 0\ncore id\t\t: {c}\n"
    )
    text = "\n".join(block.format(n=n, c=n // 2) for n in range(4))
    assert parse_cpuinfo(text) == CpuInfo("Intel(R) Xeon(R) Gold", 4, 2)
    pi = (
        "processor\t: 0\nmodel name\t: ARMv7 Processor rev 4 (v7l)\n\n"
        "Hardware\t: BCM2835\nModel\t\t: Raspberry Pi 3\n"
    )
    assert parse_cpuinfo(pi).model_name == "ARMv7 Processor rev 4 (v7l)"
    assert parse_cpuinfo("processor : 0\nHardware : BCM2835\n").model_name == "BCM2835"
    assert parse_cpuinfo("") == CpuInfo(None, 0, None)


def test_hardware_from_linux_captured() -> None:
    hw = hardware_from_linux(
        parse_meminfo(fixture_text("linux_epyc_vm_meminfo.txt")),
        parse_cpuinfo(fixture_text("linux_epyc_vm_cpuinfo.txt")),
        os_version="Linux 6.18.44",
    )
    assert hw.platform == "linux"
    assert hw.backend == "cpu"
    assert hw.chip == "AMD EPYC"
    assert (hw.performance_cores, hw.efficiency_cores, hw.cpu_count) == (2, None, 2)
    total = 24684092 * 1024
    assert hw.total_memory_bytes == total
    assert hw.wired_limit_bytes is None
    assert hw.macos_version is None
    assert hw.memory_budget_bytes == total - total // 4
    assert hw.usable_memory_bytes == hw.memory_budget_bytes - GIB  # 5 % < 1 GiB here
    arm = hardware_from_linux(
        {"MemTotal": 8 * GIB}, parse_cpuinfo(fixture_text("linux_arm64_cpuinfo.txt"))
    )
    assert arm.chip == "Unknown CPU"
    assert arm.performance_cores == 4
    assert arm.memory_budget_bytes == 4 * GIB  # 4 GiB floor beats 1/4 of 8 GiB
    with pytest.raises(ValueError, match="MemTotal"):
        hardware_from_linux({}, CpuInfo("x", 1, 1))


# --- detect --------------------------------------------------------------------------------


def test_detect_on_this_machine(fresh_detect: None) -> None:
    hw = detect()
    assert detect() is hw  # cached
    assert hw.backend == "cpu"
    assert hw.platform == "linux"
    assert hw.source == "proc"
    assert hw.wired_limit_bytes is None
    assert hw.cpu_count >= 1
    assert hw.chip
    assert 256 * MIB < hw.total_memory_bytes < 64 * 1024 * GIB
    assert 0 <= hw.usable_memory_bytes < hw.total_memory_bytes


def test_detect_falls_back_to_psutil(fresh_detect: None, monkeypatch: pytest.MonkeyPatch) -> None:
    import psutil

    def unreadable(path: str) -> str:
        raise PermissionError(path)

    monkeypatch.setattr(hardware, "_read_text", unreadable)
    hw = detect()
    assert hw.source == "psutil"
    assert hw.backend == "cpu"
    assert hw.total_memory_bytes == psutil.virtual_memory().total


def test_detect_macos_uses_sysctl(fresh_detect: None, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    output = fixture_text("macos_m4_max_36gb.txt")

    def fake_run(argv: list[str]) -> tuple[int, str]:
        calls.append(argv)
        return 0, output

    monkeypatch.setattr(hardware, "_platform_name", lambda: "macos")
    monkeypatch.setattr(hardware, "_run", fake_run)
    hw = detect()
    assert len(calls) == 1
    assert "hw.memsize" in calls[0]
    assert "iogpu.wired_limit_mb" in calls[0]
    assert hw.source == "sysctl"
    assert hw.chip == "Apple M4 Max"
    assert hw.backend == "metal"
    assert hw.wired_limit_bytes == 24 * GIB


def test_detect_macos_retries_missing_keys_one_by_one(
    fresh_detect: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unknown key makes sysctl exit non-zero: keys it did not print are asked singly."""
    single = {"iogpu.wired_limit_mb": "40960", "machdep.cpu.brand_string": "Apple M3 Max"}
    calls: list[list[str]] = []

    def fake_run(argv: list[str]) -> tuple[int, str] | None:
        calls.append(argv)
        if "-n" in argv:
            key = argv[-1]
            return (0, single[key] + "\n") if key in single else (1, "")
        return 1, f"hw.memsize: {48 * GIB}\nhw.optional.arm64: 1\n"

    monkeypatch.setattr(hardware, "_platform_name", lambda: "macos")
    monkeypatch.setattr(hardware, "_run", fake_run)
    hw = detect()
    assert hw.chip == "Apple M3 Max"
    assert hw.total_memory_bytes == 48 * GIB
    assert hw.wired_limit_bytes == 40 * GIB
    assert hw.wired_limit_configured
    assert all(c[-2] == "-n" for c in calls[1:])
    assert len(calls) == 1 + len(hardware.SYSCTL_KEYS) - 2


def test_detect_macos_without_sysctl_uses_psutil(
    fresh_detect: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hardware, "_platform_name", lambda: "macos")
    monkeypatch.setattr(hardware, "_run", lambda argv: None)
    hw = detect()
    assert hw.platform == "macos"
    assert hw.source == "psutil"
    assert hw.total_memory_bytes > 0


def test_run_has_no_shell_and_survives_missing_binary() -> None:
    assert hardware._run(["/nonexistent/sysctl-binary", "hw.memsize"]) is None


# --- simulated machines --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total_gb", "budget_gib", "usable_gib"),
    [
        (16, 16 * 2 / 3, 16 * 2 / 3 - 1),
        (36, 24, 24 * 0.95),
        (64, 48, 48 * 0.95),
        (128, 96, 96 * 0.95),
        (512, 384, 384 * 0.95),
    ],
)
def test_simulated_usable_memory(total_gb: int, budget_gib: float, usable_gib: float) -> None:
    hw = simulated(total_gb)
    assert hw.source == "simulated"
    assert hw.backend == "metal"
    assert hw.total_memory_bytes == total_gb * GIB
    assert hw.memory_budget_bytes == pytest.approx(budget_gib * GIB, abs=1)
    assert hw.usable_memory_bytes == pytest.approx(usable_gib * GIB, abs=2)


def test_simulated_options() -> None:
    hw = simulated(
        64, chip="Apple M3 Max", wired_limit_mb=57344, performance_cores=12, efficiency_cores=4
    )
    assert hw.chip == "Apple M3 Max"
    assert hw.wired_limit_bytes == 56 * GIB
    assert hw.usable_memory_bytes == from_fixture("macos_m3_max_64gb_wired.txt").usable_memory_bytes
    assert (hw.performance_cores, hw.efficiency_cores, hw.cpu_count) == (12, 4, 16)
    linux = simulated(32, platform="linux")
    assert (linux.platform, linux.backend, linux.wired_limit_bytes) == ("linux", "cpu", None)
    assert linux.usable_memory_bytes == 24 * GIB - 24 * GIB // 20
    with pytest.raises(ValueError):
        simulated(0)


# --- memory fit ----------------------------------------------------------------------------


def test_fits_examples() -> None:
    weights = 16 * GIB  # Qwen3-30B-A3B at 4 bits
    kv_32k = kv_cache_bytes(48, 4, 128, 32768)  # 3 GiB
    kv_64k = kv_cache_bytes(48, 4, 128, 65536)  # 6 GiB

    small = fits(weights, kv_32k, simulated(16))
    assert not small.fits
    assert small.needed == 19 * GIB
    assert small.available == simulated(16).usable_memory_bytes
    assert small.headroom == small.available - small.needed < 0
    assert small.explanation.startswith("does not fit: needs 19.0 GiB")
    assert "9.7 GiB is usable" in small.explanation
    assert "short" in small.explanation

    snug = fits(weights, kv_64k, simulated(36))  # 22.8 GiB usable
    assert snug.fits
    assert 0 < snug.headroom < GIB
    assert snug.explanation.startswith(
        "fits: needs 22.0 GiB (weights 16.0 GiB + KV cache 6.0 GiB) of 22.8 GiB usable"
    )

    roomy = fits(weights, kv_64k, simulated(128))
    assert roomy.fits
    assert roomy.headroom == roomy.available - 22 * GIB
    assert "to spare" in roomy.explanation

    exact = simulated(64)
    assert fits(exact.usable_memory_bytes, 0, exact).fits
    assert not fits(exact.usable_memory_bytes, 1, exact).fits
    with pytest.raises(ValueError):
        fits(-1, 0, exact)


# --- wired limit command -------------------------------------------------------------------


def test_recommended_wired_limit_command() -> None:
    assert recommended_wired_limit_command(simulated(128), 114688) == (
        "sudo sysctl iogpu.wired_limit_mb=114688"
    )
    # Default target: RAM minus max(8 GiB, RAM/8), never below the current limit.
    assert suggested_wired_limit_mb(simulated(128)) == 112 * 1024
    assert (
        recommended_wired_limit_command(simulated(64)) == "sudo sysctl iogpu.wired_limit_mb=57344"
    )
    assert suggested_wired_limit_mb(simulated(16)) == 16 * 1024 * 2 // 3
    assert recommended_wired_limit_command(simulated(16), 0) == "sudo sysctl iogpu.wired_limit_mb=0"
    # macOS 13 has the older key, in bytes.
    ventura = from_fixture("macos_m1_8gb_ventura.txt")
    assert recommended_wired_limit_command(ventura, 6144) == (
        f"sudo sysctl debug.iogpu.wired_limit={6 * GIB}"
    )
    with pytest.raises(ValueError, match="below total memory"):
        recommended_wired_limit_command(simulated(64), 64 * 1024)
    with pytest.raises(ValueError, match="below total memory"):
        recommended_wired_limit_command(simulated(64), -1)
    with pytest.raises(ValueError, match="Apple Silicon"):
        recommended_wired_limit_command(simulated(64, platform="linux"))
