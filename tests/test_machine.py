"""Where the bench runs: CPU, int8 features, board and emulation, from /proc/cpuinfo texts as a
Raspberry Pi 4, a Raspberry Pi 5 and a user-mode emulated aarch64 process see them."""

from mstl.edge.core.machine import parse_cpu

_CORE = """processor\t: {i}
BogoMIPS\t: 108.00
Features\t: {features}
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: {part}
CPU revision\t: 3
"""

PI4 = "\n".join(_CORE.format(i=i, features="fp asimd evtstrm crc32 cpuid", part="0xd08") for i in range(4)) + \
    "\nRevision\t: c03114\nSerial\t\t: 10000000abcdef01\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n"
PI5 = "\n".join(_CORE.format(i=i, part="0xd0b", features="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp "
                             "asimdhp cpuid asimdrdm lrcpc dcpop asimddp") for i in range(4)) + \
    "\nRevision\t: d04170\nSerial\t\t: 1234567890abcdef\nModel\t\t: Raspberry Pi 5 Model B Rev 1.0\n"
X86_HOST = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_vnni avx_vnni
"""


def test_a_raspberry_pi_4_is_a_cortex_a72_with_neon_and_no_dot_product():
    cpu = parse_cpu(PI4, "aarch64")
    assert cpu["cpu"] == "Cortex-A72 (Raspberry Pi 4 Model B Rev 1.4)"
    assert cpu["cpu_flags"] == ["asimd"] and not cpu["emulated"]
    assert cpu["board"] == "Raspberry Pi 4 Model B Rev 1.4"


def test_a_raspberry_pi_5_has_the_dot_product_extension_and_the_device_tree_names_the_board():
    cpu = parse_cpu(PI5, "aarch64", board="Raspberry Pi 5 Model B Rev 1.0")
    assert cpu["cpu"].startswith("Cortex-A76") and "asimddp" in cpu["cpu_flags"] and "i8mm" not in cpu["cpu_flags"]
    from mstl.edge.core.machine import int8_speed_hint
    assert "dot-product" in int8_speed_hint(cpu["cpu_flags"])


def test_an_emulated_aarch64_process_does_not_take_the_hosts_flags_for_its_own():
    cpu = parse_cpu(X86_HOST, "aarch64")
    assert cpu["emulated"] and cpu["cpu_flags"] == [] and "avx512_vnni" in cpu["host_cpu_flags"]
    assert cpu["cpu"] == "aarch64 emulated on AMD EPYC"
    native = parse_cpu(X86_HOST, "x86_64")
    assert not native["emulated"] and "avx512_vnni" in native["cpu_flags"] and native["cpu"] == "AMD EPYC"


def test_the_bench_marks_an_emulated_run_and_recommends_nothing_from_its_timings():
    from mstl.edge.bench.report import header_lines, recommendations
    row = {"format": "tflite", "status": "ok", "latency": {"1": {"p50": 1.0}}, "size_mb": 1.0, "verified": True}
    report = {"machine": {"cpu": "aarch64 emulated on AMD EPYC", "arch": "aarch64", "cores": 2, "os": "Linux",
                          "python": "3.11", "runtimes": {}, "cpu_flags": [], "emulated": True},
              "threads": [1], "runs": 3, "warmup": 1, "data": None, "n_images": 0,
              "results": [{**row, "precision": "fp32", "artifact": "a.tflite"},
                          {**row, "precision": "int8", "artifact": "b.tflite", "latency": {"1": {"p50": 0.1}}}]}
    assert any("EMULATED" in h and "timings are not this device's" in h for h in header_lines(report))
    (line,) = recommendations(report)
    assert line.startswith("none") and "b.tflite" not in line
    report["machine"]["emulated"] = False
    assert "deploy b.tflite" in recommendations(report)[0]
