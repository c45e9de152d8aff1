"""formats.py, the one table of export formats: its lookups, file names, ladders, threshold overrides
and selection rules, with their exact messages. No TensorFlow (builders are named, not imported)."""

import json

import pytest

from mstl.edge.core.formats import (DEFAULT_RECIPE, FORMATS, BuildOptions, Format, Recipe, by_key, for_file, precision_of, select,
                          thresholds)


def test_recipe_and_build_options_refuse_what_they_cannot_build():
    with pytest.raises(ValueError, match=r"recipe 'r': cpus must be one of \('any', 'exact-u8s8', 'saturating-u8s8'\), got 'x86'"):
        Recipe("r", cpus="x86")
    assert Recipe("r", (("io", "int8"), ("reduce_range", True))).kwargs == {"io": "int8", "reduce_range": True}
    assert Recipe("r").kwargs == {} and Recipe("r").cpus == "any"
    with pytest.raises(ValueError, match=r"io must be one of \('uint8', 'int8', 'float'\), got 'int4'"):
        BuildOptions(io="int4")
    with pytest.raises(ValueError, match=r"activations must be one of \('uint8', 'int8'\), got 'fp8'"):
        BuildOptions(activations="fp8")
    opts = BuildOptions(calibration=[1], io="float").with_recipe(Recipe("r", (("activations", "int8"), ("reduce_range", True))))
    assert (opts.io, opts.activations, opts.reduce_range, opts.calibration) == ("float", "int8", True, [1])
    assert BuildOptions().with_recipe(DEFAULT_RECIPE) == BuildOptions()
    with pytest.raises(ValueError) as e:
        BuildOptions().with_recipe(Recipe("typo", (("io", "int8"), ("reduce", True))))
    assert str(e.value) == ("recipe 'typo': unknown build option(s) ['reduce']; known: "
                            "['calibration', 'io', 'activations', 'reduce_range', 'float_nodes', 'rounding']")
    with pytest.raises(ValueError, match=r"rounding must be one of \('nearest', 'gptq'\), got 'stochastic'"):
        BuildOptions(rounding="stochastic")
    for none in (None, []):
        with pytest.raises(ValueError, match="this form needs calibration images"):
            BuildOptions(calibration=none).needs_calibration()
    assert BuildOptions(calibration=[0]).needs_calibration() is None


def _fmt(**kw):
    base = dict(key="x-int8", format="x", precision="int8", flag="int8", options=(), builder="json:dumps",
                runtime="litert", min_agreement=0.9)
    return Format(**{**base, **kw})


def test_a_format_names_its_files_and_loads_its_builder_lazily():
    f = _fmt()
    assert f.ladder == (DEFAULT_RECIPE,)
    assert f.suffix == ".x" and f.filename("clf") == "clf-int8.x" and f.rejected_filename("clf") == "clf-int8-rejected.x"
    assert f.load_module() is json and f.load_builder() is json.dumps
    assert _fmt(builder="json.decoder:JSONDecoder").load_builder() is json.decoder.JSONDecoder
    r = (Recipe("a"),)
    assert _fmt(recipes=r).ladder == r


def test_ladder_skips_each_rung_for_the_cpus_it_is_not_built_for():
    exact, sat, anyr, mixed = (Recipe("e", cpus="exact-u8s8"), Recipe("s", cpus="saturating-u8s8"), Recipe("a"),
                               Recipe("m", mixed=True, cpus="exact-u8s8"))
    f = _fmt(recipes=(exact, sat, anyr, mixed))
    on_exact = dict((r.name, skip) for r, skip in f.ladder_for(True))
    on_sat = dict((r.name, skip) for r, skip in f.ladder_for(False))
    assert list(on_exact) == ["e", "s", "a", "m"] == list(on_sat)
    assert on_exact["e"] is None and on_exact["a"] is None and on_exact["m"] is None
    assert on_exact["s"] == ("7-bit weights are only needed where u8s8 can saturate (x86 without VNNI); "
                             "this CPU has exact u8s8")
    assert on_sat["s"] is None and on_sat["a"] is None and on_sat["m"] is None  # the mixed rung is never skipped
    assert on_sat["e"] == ("8-bit weights: u8s8 int16 pair sums can saturate on x86 with AVX2 and no VNNI (s8 "
                           "activations run through the same kernels there), which this export is built for")


def test_lookups_by_key_suffix_and_file_name():
    assert by_key("onnx-int8").format == "onnx" and by_key("tflite-fp16").precision == "fp16"
    with pytest.raises(KeyError, match="unknown format 'coreml'; known: tflite-fp32, tflite-fp16, tflite-dynamic, "
                                       "tflite-int8, onnx-fp32, onnx-int8"):
        by_key("coreml")
    assert [for_file(p) for p in ("a.tflite", "b/c.onnx", "m.keras")] == ["tflite", "onnx", "keras"]
    with pytest.raises(ValueError, match=r"model.h5: unknown artifact type \(expected .tflite, .onnx or .keras\)"):
        for_file("model.h5")
    assert for_file("x.onnx.tflite") == "tflite"
    assert precision_of("a/classifier-dynamic.tflite") == "dynamic" and precision_of("c-fp32.onnx") == "fp32"
    assert precision_of("c-int8-rejected.tflite") == "int8" and precision_of("int8.tflite") == "unknown"
    assert precision_of("c-int8.rejected.onnx") == "unknown"


def test_thresholds_take_overrides_and_ignore_the_unset():
    table = {"fp32": 0.999, "fp16": 0.999, "dynamic": 0.98, "int8": 0.99}
    assert thresholds() == table and thresholds(None) == table and thresholds({}) == table
    assert thresholds({"int8": 0.5, "fp32": None}) == {**table, "int8": 0.5}
    assert thresholds({"dynamic": 0.0}) == {**table, "dynamic": 0.0}  # 0 is a value, not "unset"
    with pytest.raises(ValueError, match=r"unknown precision\(s\) \['fp8', 'int4'\] for a threshold; "
                                         "known: fp32, fp16, dynamic, int8"):
        thresholds({"int4": 0.9, "fp8": None, "int8": 0.9})


def test_select_adds_flagged_forms_to_the_references_and_names_what_is_wrong():
    keys = lambda fs: [f.key for f in fs]  # noqa: E731
    assert keys(select(["tflite"], {"fp16", "dynamic"})) == ["tflite-fp32", "tflite-fp16", "tflite-dynamic"]
    assert keys(select(["onnx", "tflite"], {"int8"})) == ["tflite-fp32", "tflite-int8", "onnx-fp32", "onnx-int8"]
    assert keys(select(["tflite", "onnx"], set(), {"io": None, "calibration": None})) == ["tflite-fp32", "onnx-fp32"]
    with pytest.raises(ValueError) as e:
        select(["tflite", "coreml", "tf"], set())
    assert str(e.value) == "unknown format(s) ['coreml', 'tf']: choose from tflite, onnx"
    with pytest.raises(ValueError) as e:
        select(["onnx"], {"fp16"})
    assert str(e.value) == "--fp16 applies to tflite only, which is not among --format onnx"
    with pytest.raises(ValueError) as e:
        select(["onnx"], {"int8"}, {"io": "int8"})
    assert str(e.value) == "--io is only accepted by tflite-int8; add the flag that exports one of them"
    with pytest.raises(ValueError, match="--calibration is only accepted by tflite-int8, onnx-int8"):
        select(["tflite"], set(), {"calibration": 10})
    assert keys(select(["tflite"], {"int8"}, {"io": "int8", "calibration": 5})) == ["tflite-fp32", "tflite-int8"]
    assert all(f in FORMATS for f in select(["tflite", "onnx"], {"int8", "fp16", "dynamic"}))
