"""The export gate's confirmation, rerun on another x86 CPU kind: QEMU's Haswell (AVX2 + FMA, no
AVX-512, no VNNI), whatever CPU runs the tests. `make test` installs Debian's qemu-user-static once;
without it the test is skipped."""

import pytest

from mstl.edge.bench.emulate import check, emulator


@pytest.mark.skipif(emulator() is None, reason="qemu-x86_64-static not installed (make test installs it as root)")
def test_int8_artifacts_keep_their_answers_on_an_avx2_cpu_without_vnni(smoke_exports):
    res = check(smoke_exports, images=60, cpu="Haswell")
    assert {r["format"] for r in res["artifacts"].values()} == {"tflite", "onnx"}
    for name, r in res["artifacts"].items():
        assert r["built_for_cpus"] != "exact-u8s8", name  # the smoke exports are --portable-int8
        assert r["status"] == "ok" and r["n_compared"] > 0, (name, r)
        # the portable ONNX int8 products are exact on both kinds: the same answers, not merely close
        assert r["top1_equal_native"] == 1.0, (name, r)
