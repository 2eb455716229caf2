"""What machine is this? Chip, cores, memory and how much of it a model may use.

Used by ``local-ai init`` (a manifest suited to the machine), ``local-ai doctor`` and the
model-fit estimates of the planner and search.

Parsing is pure (``parse_sysctl``, ``parse_meminfo``, ``parse_cpuinfo`` and the
``hardware_from_*`` builders) and tested against captured outputs; :func:`detect` only
gathers text (``sysctl`` on macOS, ``/proc`` on Linux, psutil as a fallback) and feeds it
to them.

Memory rules
------------
*GPU wired limit (macOS, Apple Silicon).* Metal keeps a model resident only up to the GPU
wired-memory limit, which Metal reports as ``recommendedMaxWorkingSetSize`` (MLX:
``mx.device_info()["max_recommended_working_set_size"]``). ``sysctl iogpu.wired_limit_mb``
overrides it (``debug.iogpu.wired_limit``, in bytes, on macOS 13); 0 means "macOS default",
which :func:`default_wired_limit_bytes` estimates as 2/3 of RAM up to 36 GB and 3/4 above
(sources next to that function).

*Headroom.* ``usable_memory_bytes`` is what model weights plus KV cache may take:

1. the memory budget: on Apple Silicon the wired limit (configured or default), clamped so
   macOS keeps at least ``OS_RESERVE_MIN_BYTES`` (4 GiB) outside it; elsewhere total RAM
   minus ``max(OS_RESERVE_MIN_BYTES, 1/4 of RAM)`` for the OS and other programs (the same
   share macOS itself keeps back above 36 GB);
2. minus runtime headroom, ``max(1 GiB, 5 % of the budget)``, for what the inference process
   needs besides weights and KV cache: activations and prefill buffers, Metal command
   buffers, the Python runtime, tokenizer and server.
"""

from __future__ import annotations

import functools
import os
import platform as pyplatform
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

KIB = 1024
MIB = 1024**2
GIB = 1024**3

BACKEND_METAL = "metal"
BACKEND_CPU = "cpu"
BACKEND_LABELS = {
    BACKEND_METAL: "Metal (Apple Silicon GPU, unified memory)",
    BACKEND_CPU: "CPU only (no Apple Silicon GPU: MLX runs on the CPU, slowly)",
}

# Default GPU wired limit when iogpu.wired_limit_mb is 0; see default_wired_limit_bytes().
DEFAULT_WIRED_SMALL_MAX_BYTES = 36 * GIB
# Memory macOS (or Linux) always keeps outside the model budget.
OS_RESERVE_MIN_BYTES = 4 * GIB
# Share of RAM kept for the OS on machines without a GPU wired limit (Linux, Intel Macs).
CPU_OS_RESERVE_NUM, CPU_OS_RESERVE_DEN = 1, 4
# Runtime headroom inside the budget: max(1 GiB, budget / 20).
RUNTIME_HEADROOM_MIN_BYTES = 1 * GIB
RUNTIME_HEADROOM_DEN = 20
# When suggesting a raised wired limit, leave max(8 GiB, RAM / 8) to macOS and apps.
SUGGESTED_WIRED_RESERVE_MIN_BYTES = 8 * GIB
SUGGESTED_WIRED_RESERVE_DEN = 8

SYSCTL_TIMEOUT_S = 2.0
# Keys read on macOS. Any of them may be missing (older macOS, Intel Macs): tolerated.
SYSCTL_KEYS = (
    "machdep.cpu.brand_string",
    "hw.model",
    "hw.memsize",
    "hw.ncpu",
    "hw.logicalcpu",
    "hw.physicalcpu",
    "hw.nperflevels",
    "hw.perflevel0.physicalcpu",
    "hw.perflevel1.physicalcpu",
    "hw.optional.arm64",
    "sysctl.proc_translated",
    "iogpu.wired_limit_mb",
    "debug.iogpu.wired_limit",
    "kern.osproductversion",
    "kern.osrelease",
)

# /proc/cpuinfo keys that name the CPU, best first.
_CPUINFO_NAME_KEYS = ("model name", "model", "hardware", "cpu model", "processor")
_SYSCTL_LINE = re.compile(r"^([A-Za-z0-9_.\-]+)(?::|\s*=)\s?(.*)$")


@dataclass(frozen=True)
class Hardware:
    """The machine, as far as model planning cares. Memory in bytes."""

    platform: str  # "macos", "linux", or sys.platform for anything else
    backend: str  # "metal" on Apple Silicon, "cpu" otherwise (see BACKEND_LABELS)
    chip: str  # "Apple M3 Max"; on Linux the CPU model name
    performance_cores: int | None  # Apple: perflevel0; Linux: physical cores
    efficiency_cores: int | None  # Apple: perflevel1; None where unknown (Linux)
    cpu_count: int  # logical CPUs
    total_memory_bytes: int  # unified memory on Apple Silicon
    # Apple Silicon only: the effective GPU wired limit, configured or the macOS default.
    wired_limit_bytes: int | None
    wired_limit_configured: bool  # iogpu.wired_limit_mb is set (non-zero)
    os_version: str  # kernel: "Darwin 24.3.0", "Linux 6.8.0-45-generic"
    macos_version: str | None  # "15.3.2"; None off macOS
    rosetta: bool = False  # an x86_64 Python under Rosetta 2 (MLX cannot run there)
    source: str = "detected"  # "sysctl", "proc", "psutil" or "simulated"

    @property
    def is_apple_silicon(self) -> bool:
        return self.backend == BACKEND_METAL

    @property
    def backend_label(self) -> str:
        return BACKEND_LABELS.get(self.backend, self.backend)

    @property
    def memory_budget_bytes(self) -> int:
        """Memory the inference process may use at all (step 1 of the module's rule)."""
        total = self.total_memory_bytes
        if self.wired_limit_bytes is not None:
            return max(0, min(self.wired_limit_bytes, total - OS_RESERVE_MIN_BYTES))
        os_reserve = max(OS_RESERVE_MIN_BYTES, total * CPU_OS_RESERVE_NUM // CPU_OS_RESERVE_DEN)
        return max(0, total - os_reserve)

    @property
    def runtime_headroom_bytes(self) -> int:
        """Kept free inside the budget for activations, buffers and the runtime."""
        budget = self.memory_budget_bytes
        return min(budget, max(RUNTIME_HEADROOM_MIN_BYTES, budget // RUNTIME_HEADROOM_DEN))

    @property
    def usable_memory_bytes(self) -> int:
        """What model weights plus KV cache may take on this machine."""
        return self.memory_budget_bytes - self.runtime_headroom_bytes

    def describe(self) -> str:
        """One line for ``doctor`` and ``init``."""
        parts = [self.chip]
        if self.performance_cores is not None and self.efficiency_cores is not None:
            parts.append(f"{self.performance_cores}P+{self.efficiency_cores}E cores")
        else:
            parts.append(f"{self.cpu_count} CPUs")
        kind = "unified memory" if self.is_apple_silicon else "RAM"
        parts.append(f"{format_gib(self.total_memory_bytes)} {kind}")
        if self.wired_limit_bytes is not None:
            how = "iogpu.wired_limit_mb" if self.wired_limit_configured else "macOS default"
            parts.append(f"GPU limit {format_gib(self.wired_limit_bytes)} ({how})")
        parts.append(f"{format_gib(self.usable_memory_bytes)} usable for models")
        parts.append(f"backend {self.backend}")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, object]:
        """Fields plus derived values, for JSON output."""
        data: dict[str, object] = asdict(self)
        data["backend_label"] = self.backend_label
        data["memory_budget_bytes"] = self.memory_budget_bytes
        data["runtime_headroom_bytes"] = self.runtime_headroom_bytes
        data["usable_memory_bytes"] = self.usable_memory_bytes
        return data


@dataclass(frozen=True)
class CpuInfo:
    """What /proc/cpuinfo says about the CPU."""

    model_name: str | None
    logical_cpus: int
    physical_cores: int | None  # distinct (physical id, core id); None when not reported


@dataclass(frozen=True)
class FitResult:
    """Whether weights plus KV cache fit in ``hw.usable_memory_bytes``."""

    fits: bool
    needed: int
    available: int
    headroom: int  # available - needed; negative when it does not fit
    explanation: str


def format_gib(n: int) -> str:
    """Bytes as GiB with one decimal: ``17179869184`` -> ``"16.0 GiB"``."""
    return f"{n / GIB:.1f} GiB"


def default_wired_limit_bytes(total_memory_bytes: int) -> int:
    """The GPU wired limit macOS applies when ``iogpu.wired_limit_mb`` is 0.

    2/3 of RAM up to 36 GB, 3/4 above. Evidence (Metal's recommendedMaxWorkingSetSize as
    printed by llama.cpp on macOS 13-15):
    16 GB -> 10922.67 MB = 2/3 (abetlen/llama-cpp-python#687),
    32 GB -> 21845.34 MB = 2/3 (ggml-org/llama.cpp#2011, ollama/ollama#434),
    64 GB -> 49152 MiB = 3/4 (ggml-org/llama.cpp#1870),
    96 GB -> 73728 MB = 3/4 (ggml-org/llama.cpp#3213); "usually 0.75 * the total RAM"
    (MLX developer, ml-explore/mlx#64). The 36 GB boundary is community lore: no 36 GB
    measurement was found, so 36 GB takes the lower (safer) share.
    macOS 26 reports more (about 74 % on 16/24 GB, 84 % on 128 GB: AlexsJones/llmfit#754,
    sgl-project/sglang#29949, antirez/ds4#893); this estimate is then conservative. A
    configured ``iogpu.wired_limit_mb`` replaces the default both up and down (llmfit#754).
    """
    if total_memory_bytes <= DEFAULT_WIRED_SMALL_MAX_BYTES:
        return total_memory_bytes * 2 // 3
    return total_memory_bytes * 3 // 4


# --- parsers ---------------------------------------------------------------------------


def parse_sysctl(text: str) -> dict[str, str]:
    """``key: value`` lines (``sysctl -a`` or ``sysctl KEY...``) to a dict.

    ``key = value`` (BSD/Linux style) is accepted too; values are stripped; lines that are
    not ``key: value`` (continuations, blanks, noise) are skipped. A repeated key keeps the
    last value.
    """
    result: dict[str, str] = {}
    for line in text.splitlines():
        match = _SYSCTL_LINE.match(line.strip())
        if match:
            result[match.group(1)] = match.group(2).strip()
    return result


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo to ``{field: bytes}`` (``kB`` values converted; unitless kept)."""
    result: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        if not sep:
            continue
        fields = rest.split()
        if not fields or not fields[0].isdigit():
            continue
        value = int(fields[0])
        if len(fields) > 1 and fields[1].lower() == "kb":
            value *= KIB
        result[key.strip()] = value
    return result


def parse_cpuinfo(text: str) -> CpuInfo:
    """/proc/cpuinfo: the CPU model name, logical CPUs and physical cores.

    The name comes from ``model name`` (x86), else ``Model`` (Raspberry Pi), ``Hardware``,
    ``cpu model`` or a non-numeric ``Processor`` line (old ARM kernels); many ARM64 kernels
    print none of them, giving ``None``.
    """
    names: dict[str, str] = {}
    logical = 0
    cores: set[tuple[str, str]] = set()
    physical_id: str | None = None
    core_id: str | None = None
    for line in [*text.splitlines(), ""]:
        key, sep, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if not sep:  # a blank line ends one processor's block
            if core_id is not None:
                cores.add((physical_id or "0", core_id))
            physical_id = core_id = None
            continue
        lowered = key.lower()
        if key == "processor" and value.isdigit():
            logical += 1
        elif key == "physical id":
            physical_id = value
        elif key == "core id":
            core_id = value
        elif lowered in _CPUINFO_NAME_KEYS and value and not value.isdigit():
            names.setdefault(lowered, value)
    model = next((names[k] for k in _CPUINFO_NAME_KEYS if k in names), None)
    return CpuInfo(model_name=model, logical_cpus=logical, physical_cores=len(cores) or None)


# --- builders --------------------------------------------------------------------------


def _int_or_none(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        return None


def hardware_from_sysctl(
    sysctl: Mapping[str, str],
    *,
    cpu_count: int | None = None,
    macos_version: str | None = None,
    os_version: str | None = None,
    source: str = "sysctl",
) -> Hardware:
    """A macOS :class:`Hardware` from sysctl values (see :data:`SYSCTL_KEYS`).

    Only ``hw.memsize`` is required (``ValueError`` without it). Keyword arguments fill in
    what the mapping lacks; the mapping wins where it has a value.
    """
    total = _int_or_none(sysctl.get("hw.memsize"))
    if total is None or total <= 0:
        raise ValueError("sysctl output has no usable hw.memsize")
    chip = sysctl.get("machdep.cpu.brand_string", "").strip() or "Unknown CPU"
    apple_silicon = sysctl.get("hw.optional.arm64") == "1" or chip.startswith("Apple ")

    perf0 = _int_or_none(sysctl.get("hw.perflevel0.physicalcpu"))
    perf1 = _int_or_none(sysctl.get("hw.perflevel1.physicalcpu"))
    if perf0 is not None:
        performance: int | None = perf0
        levels = _int_or_none(sysctl.get("hw.nperflevels"))
        efficiency = perf1 if perf1 is not None else (0 if levels == 1 else None)
    else:
        performance = _int_or_none(sysctl.get("hw.physicalcpu"))
        efficiency = None

    logical = (
        _int_or_none(sysctl.get("hw.logicalcpu"))
        or _int_or_none(sysctl.get("hw.ncpu"))
        or cpu_count
        or os.cpu_count()
        or 1
    )

    wired: int | None = None
    configured = False
    if apple_silicon:
        limit_mb = _int_or_none(sysctl.get("iogpu.wired_limit_mb"))
        legacy_bytes = _int_or_none(sysctl.get("debug.iogpu.wired_limit"))  # macOS 13
        if limit_mb:
            configured, wired = True, limit_mb * MIB
        elif legacy_bytes:
            configured, wired = True, legacy_bytes
        wired = min(wired, total) if wired else default_wired_limit_bytes(total)

    release = sysctl.get("kern.osrelease")
    return Hardware(
        platform="macos",
        backend=BACKEND_METAL if apple_silicon else BACKEND_CPU,
        chip=chip,
        performance_cores=performance,
        efficiency_cores=efficiency,
        cpu_count=logical,
        total_memory_bytes=total,
        wired_limit_bytes=wired,
        wired_limit_configured=configured,
        os_version=f"Darwin {release}" if release else (os_version or "Darwin"),
        macos_version=sysctl.get("kern.osproductversion") or macos_version,
        rosetta=sysctl.get("sysctl.proc_translated") == "1",
        source=source,
    )


def hardware_from_linux(
    meminfo: Mapping[str, int],
    cpuinfo: CpuInfo,
    *,
    cpu_count: int | None = None,
    os_version: str = "Linux",
    platform: str = "linux",
    source: str = "proc",
) -> Hardware:
    """A CPU-backend :class:`Hardware` from parsed /proc/meminfo and /proc/cpuinfo.

    ``MemTotal`` is required (``ValueError`` without it). ``cpu_count``, when given, wins
    over the processors listed in cpuinfo (it can honour CPU affinity).
    """
    total = meminfo.get("MemTotal")
    if not total or total <= 0:
        raise ValueError("meminfo has no usable MemTotal")
    logical = cpu_count or cpuinfo.logical_cpus or os.cpu_count() or 1
    return Hardware(
        platform=platform,
        backend=BACKEND_CPU,
        chip=cpuinfo.model_name or "Unknown CPU",
        performance_cores=cpuinfo.physical_cores or cpuinfo.logical_cpus or logical,
        efficiency_cores=None,
        cpu_count=logical,
        total_memory_bytes=total,
        wired_limit_bytes=None,
        wired_limit_configured=False,
        os_version=os_version,
        macos_version=None,
        source=source,
    )


def simulated(
    total_gb: int,
    chip: str | None = None,
    platform: str = "macos",
    *,
    wired_limit_mb: int = 0,
    performance_cores: int | None = None,
    efficiency_cores: int | None = None,
    macos_version: str = "15.5",
) -> Hardware:
    """A made-up machine with ``total_gb`` GB (GiB, as Apple counts) for fit-decision tests.

    ``platform="macos"`` gives Apple Silicon with the default wired limit unless
    ``wired_limit_mb`` is set; any other platform gives a CPU machine.
    """
    if total_gb <= 0:
        raise ValueError(f"total_gb must be positive, not {total_gb}")
    total = total_gb * GIB
    cpus = (performance_cores or 0) + (efficiency_cores or 0) or 8
    if platform == "macos":
        sysctl = {
            "hw.memsize": str(total),
            "hw.optional.arm64": "1",
            "machdep.cpu.brand_string": chip or f"Apple Silicon (simulated {total_gb} GB)",
            "hw.logicalcpu": str(cpus),
            "iogpu.wired_limit_mb": str(wired_limit_mb),
            "kern.osproductversion": macos_version,
        }
        if performance_cores is not None:
            sysctl["hw.perflevel0.physicalcpu"] = str(performance_cores)
        if efficiency_cores is not None:
            sysctl["hw.perflevel1.physicalcpu"] = str(efficiency_cores)
        return hardware_from_sysctl(sysctl, os_version="Darwin (simulated)", source="simulated")
    return hardware_from_linux(
        {"MemTotal": total},
        CpuInfo(chip or f"CPU (simulated {total_gb} GB)", cpus, performance_cores),
        os_version=f"{platform} (simulated)",
        platform=platform,
        source="simulated",
    )


# --- detection -------------------------------------------------------------------------


def _platform_name() -> str:
    if sys.platform == "darwin":
        return "macos"
    if sys.platform.startswith("linux"):
        return "linux"
    return sys.platform


def _run(argv: list[str]) -> tuple[int, str] | None:
    """Run a command without a shell; ``(returncode, stdout)`` or None if it could not run."""
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=SYSCTL_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.returncode, done.stdout


def _sysctl_binary() -> str:
    return (
        "/usr/sbin/sysctl"
        if Path("/usr/sbin/sysctl").exists()
        else shutil.which("sysctl") or "sysctl"
    )


def _read_sysctl(keys: tuple[str, ...] = SYSCTL_KEYS) -> dict[str, str]:
    """The values of ``keys`` that exist. One ``sysctl KEY...`` call; if it reports an
    error (an unknown key may stop some versions early), missing keys are asked one by one
    with ``sysctl -n``."""
    binary = _sysctl_binary()
    ran = _run([binary, *keys])
    if ran is None:
        return {}
    returncode, out = ran
    values = {k: v for k, v in parse_sysctl(out).items() if k in keys}
    if returncode != 0:
        for key in keys:
            if key in values:
                continue
            single = _run([binary, "-n", key])
            if single is not None and single[0] == 0 and single[1].strip():
                values[key] = single[1].strip()
    return values


def _read_text(path: str) -> str:
    return Path(path).read_text(encoding="utf-8", errors="replace")


def _psutil_memory_and_cores() -> tuple[int, int | None, int]:
    """(total memory, physical cores, logical CPUs) from psutil."""
    import psutil

    total = int(psutil.virtual_memory().total)
    physical = psutil.cpu_count(logical=False)
    logical = psutil.cpu_count(logical=True)
    return (
        total,
        int(physical) if physical else None,
        int(logical) if logical else (os.cpu_count() or 1),
    )


def _os_version() -> str:
    return f"{pyplatform.system() or sys.platform} {pyplatform.release()}".strip()


def _detect_macos() -> Hardware:
    values = _read_sysctl()
    if "hw.memsize" not in values:
        total, physical, _ = _psutil_memory_and_cores()
        values["hw.memsize"] = str(total)
        if physical and "hw.physicalcpu" not in values:
            values["hw.physicalcpu"] = str(physical)
        source = "psutil"
    else:
        source = "sysctl"
    if "hw.optional.arm64" not in values and pyplatform.machine() == "arm64":
        values["hw.optional.arm64"] = "1"
    if "machdep.cpu.brand_string" not in values and pyplatform.processor():
        values["machdep.cpu.brand_string"] = pyplatform.processor()
    return hardware_from_sysctl(
        values,
        cpu_count=os.cpu_count(),
        macos_version=pyplatform.mac_ver()[0] or None,
        os_version=_os_version(),
        source=source,
    )


def _detect_other(platform: str) -> Hardware:
    """Linux from /proc; anything else (or an unreadable /proc) from psutil."""
    meminfo: dict[str, int] = {}
    cpu: CpuInfo | None = None
    if platform == "linux":
        try:
            meminfo = parse_meminfo(_read_text("/proc/meminfo"))
            cpu = parse_cpuinfo(_read_text("/proc/cpuinfo"))
        except OSError:
            pass
    source = "proc"
    if not meminfo.get("MemTotal") or cpu is None:
        total, physical, logical = _psutil_memory_and_cores()
        if not meminfo.get("MemTotal"):
            meminfo["MemTotal"] = total
        if cpu is None:
            name = pyplatform.processor() or pyplatform.machine() or None
            cpu = CpuInfo(model_name=name, logical_cpus=logical, physical_cores=physical)
        source = "psutil"
    return hardware_from_linux(
        meminfo,
        cpu,
        cpu_count=os.cpu_count(),
        os_version=_os_version(),
        platform=platform,
        source=source,
    )


@functools.cache
def detect() -> Hardware:
    """This machine, detected once per process (``detect.cache_clear()`` to redo)."""
    platform = _platform_name()
    if platform == "macos":
        return _detect_macos()
    return _detect_other(platform)


# --- memory fit ------------------------------------------------------------------------


def fits(weights_bytes: int, kv_bytes: int, hw: Hardware) -> FitResult:
    """Do ``weights_bytes + kv_bytes`` fit in ``hw.usable_memory_bytes``?"""
    if weights_bytes < 0 or kv_bytes < 0:
        raise ValueError("weights_bytes and kv_bytes must not be negative")
    needed = weights_bytes + kv_bytes
    available = hw.usable_memory_bytes
    headroom = available - needed
    ok = headroom >= 0
    detail = f"weights {format_gib(weights_bytes)} + KV cache {format_gib(kv_bytes)}"
    if ok:
        explanation = (
            f"fits: needs {format_gib(needed)} ({detail}) of {format_gib(available)} usable; "
            f"{format_gib(headroom)} to spare"
        )
    else:
        explanation = (
            f"does not fit: needs {format_gib(needed)} ({detail}) but only "
            f"{format_gib(available)} is usable; {format_gib(-headroom)} short"
        )
    return FitResult(
        fits=ok, needed=needed, available=available, headroom=headroom, explanation=explanation
    )


# --- wired limit hints -----------------------------------------------------------------


def suggested_wired_limit_mb(hw: Hardware) -> int:
    """A raised GPU wired limit that still leaves ``max(8 GiB, RAM/8)`` to macOS and apps;
    never below the current limit (on 16 GB machines raising is not worth it)."""
    total = hw.total_memory_bytes
    reserve = max(SUGGESTED_WIRED_RESERVE_MIN_BYTES, total // SUGGESTED_WIRED_RESERVE_DEN)
    current = hw.wired_limit_bytes or default_wired_limit_bytes(total)
    return max(current, total - reserve) // MIB


def recommended_wired_limit_command(hw: Hardware, target_mb: int | None = None) -> str:
    """The command that sets the GPU wired limit to ``target_mb`` (default: suggested).

    ``sudo sysctl iogpu.wired_limit_mb=N`` (macOS 14+), ``sudo sysctl
    debug.iogpu.wired_limit=BYTES`` on macOS 13. Lasts until reboot; 0 restores the default.
    ``ValueError`` off Apple Silicon, or for a target not below total memory (MLX requires
    the wired limit to stay strictly below it: mlx.core.set_wired_limit docs).
    """
    if not hw.is_apple_silicon:
        raise ValueError("the GPU wired limit (iogpu.wired_limit_mb) exists only on Apple Silicon")
    if target_mb is None:
        target_mb = suggested_wired_limit_mb(hw)
    total_mb = hw.total_memory_bytes // MIB
    if target_mb < 0 or target_mb >= total_mb:
        raise ValueError(
            f"wired limit must be 0 (default) or below total memory ({total_mb} MB), "
            f"not {target_mb}"
        )
    major = _int_or_none((hw.macos_version or "").split(".")[0])
    if major is not None and major <= 13:
        return f"sudo sysctl debug.iogpu.wired_limit={target_mb * MIB}"
    return f"sudo sysctl iogpu.wired_limit_mb={target_mb}"
