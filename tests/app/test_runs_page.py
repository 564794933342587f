"""Runs page: delete moves a run to the trash with a message and a confirmation that resets; Trash restores and purges."""

from __future__ import annotations

import hashlib

from engine.store import catalogue, trash
from tests.app.apphelpers import goto, make_flips_run, new_app, problems


def _hashes(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _delete(at, name: str):
    at.selectbox(key="delete_run").set_value(name).run()
    at.checkbox(key="delete_sure").check().run()
    at.button(key="delete_go").click().run()
    return at


def test_delete_shows_where_it_went_and_unticks_the_confirmation(lab_env):
    make_flips_run(lab_env, "run-a", n=2)
    make_flips_run(lab_env, "run-b", n=2)
    make_flips_run(lab_env, "run-c", n=2)
    at = goto(new_app(), "runs")
    assert not problems(at)
    # nothing is picked at first, so nothing is armed
    assert at.selectbox(key="delete_run").value is None
    assert at.checkbox(key="delete_sure").disabled and at.button(key="delete_go").disabled
    _delete(at, "run-b")
    assert sorted(r.name for r in catalogue.list_runs()) == ["run-a", "run-c"]
    [entry] = trash.list_trash()
    message = " ".join(s.value for s in at.success)
    assert "Deleted run `run-b`" in message and "moved to the trash" in message and "Restore it under **Trash**" in message
    assert entry.id in message
    # the confirmation is unticked, the picker empty and the button off: one more click deletes nothing
    assert at.checkbox(key="delete_sure").value is False
    assert at.selectbox(key="delete_run").value is None
    assert at.button(key="delete_go").disabled  # (AppTest, like a browser, cannot click a disabled button)
    # a confirmation given for one run does not carry over to another picked afterwards
    at.selectbox(key="delete_run").set_value("run-a").run()
    at.checkbox(key="delete_sure").check().run()
    at.selectbox(key="delete_run").set_value("run-c").run()
    assert at.checkbox(key="delete_sure").value is False and at.button(key="delete_go").disabled
    # the trash lists it with a Restore button
    assert at.button(key=f"trash_restore:{entry.id}").label == "Restore"
    assert not at.exception


def test_restore_brings_the_run_back_and_an_occupied_name_is_refused(lab_env):
    run = make_flips_run(lab_env, "run-a", n=2)
    make_flips_run(lab_env, "run-b", n=2)
    before = _hashes(run)
    at = goto(new_app(), "runs")
    _delete(at, "run-a")
    [entry] = trash.list_trash()
    at.button(key=f"trash_restore:{entry.id}").click().run()
    assert sorted(r.name for r in catalogue.list_runs()) == ["run-a", "run-b"]
    assert _hashes(run) == before
    assert any("Restored run `run-a`" in s.value for s in at.success)
    assert trash.list_trash() == []
    assert "run-a" in at.selectbox(key="delete_run").options
    assert not problems(at)

    # deleted again, and a new run takes its name: restoring is refused and the trashed one is kept
    _delete(at, "run-a")
    [entry] = trash.list_trash()
    make_flips_run(lab_env, "run-a", n=1)
    at.run()
    at.button(key=f"trash_restore:{entry.id}").click().run()
    assert any("Not restored" in e.value and "taken by another folder" in e.value for e in at.error)
    assert [e.id for e in trash.list_trash()] == [entry.id]
    assert _hashes(entry.content) == before
    assert catalogue.get_run("run-a").summary["n_prompts"] == 1  # the newcomer is untouched


def test_purge_needs_its_own_confirmation(lab_env):
    make_flips_run(lab_env, "run-a", n=2)
    make_flips_run(lab_env, "run-b", n=2)
    at = goto(new_app(), "runs")
    _delete(at, "run-a")
    [entry] = trash.list_trash()
    assert at.button(key="purge_go").disabled
    at.selectbox(key="purge_pick").set_value(entry.id).run()
    assert at.button(key="purge_go").disabled  # picked, not confirmed
    at.checkbox(key="purge_sure").check().run()
    at.button(key="purge_go").click().run()
    assert trash.list_trash() == [] and not entry.path.exists()
    assert any("for good" in s.value for s in at.success)
    assert not problems(at)


def test_the_trash_shows_when_every_run_is_deleted(lab_env):
    make_flips_run(lab_env, "run-a", n=2)
    at = goto(new_app(), "runs")
    _delete(at, "run-a")
    assert catalogue.list_runs() == []
    [entry] = trash.list_trash()
    assert any("No runs yet" in i.value for i in at.info)
    at.button(key=f"trash_restore:{entry.id}").click().run()
    assert [r.name for r in catalogue.list_runs()] == ["run-a"]
    assert not problems(at)
