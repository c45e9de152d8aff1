"""One temp-then-rename writer (mstl.edge.core.outputs.write_then_rename) under the run dir's writes, the /device
rows, bench reports, file lists and export files (issue 22); each caller says what a failure means."""

import errno

import pytest

from mstl.edge.core.outputs import OutputError, write_then_rename


def test_the_file_is_replaced_whole(tmp_path):
    path, tmp = tmp_path / "a.json", tmp_path / ".a.json.tmp1"
    path.write_text("old")
    write_then_rename(path, tmp, lambda t: t.write_text("new"))
    assert path.read_text() == "new" and not tmp.exists()


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_write_leaves_the_old_file_and_no_temp_and_is_raised_as_it_came(tmp_path, error):
    path, tmp = tmp_path / "a.json", tmp_path / ".a.json.tmp1"
    path.write_text("old")

    def half_then_fail(t):
        t.write_text("ha")
        raise error
    with pytest.raises(type(error)) as e:
        write_then_rename(path, tmp, half_then_fail)
    assert e.value is error  # not translated: that is the caller's
    assert path.read_text() == "old" and list(tmp_path.iterdir()) == [path]


def test_the_run_dir_names_the_resume_fix_and_the_device_store_raises_the_oserror(tmp_path, monkeypatch):
    import mstl.edge.core.outputs
    from mstl.edge.app.device import _write_new
    from mstl.edge.core.rundir import RESUME_FIX, atomic_write_text

    def full(path, tmp, write):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(mstl.edge.core.outputs, "write_then_rename", full)
    with pytest.raises(OutputError, match=RESUME_FIX):
        atomic_write_text(tmp_path / "selection.json", "{}")
    monkeypatch.undo()
    monkeypatch.setattr("mstl.edge.app.device.write_then_rename", full)
    with pytest.raises(OSError) as e:  # DeviceBench.record turns it into its 507 line
        _write_new(tmp_path / "row.json", "{}")
    assert not isinstance(e.value, OutputError)
