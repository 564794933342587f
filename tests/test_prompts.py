from __future__ import annotations

import json

import pytest

from engine.errors import LabError
from engine.method.prompts import load_prompts


def test_builtins_are_varied_and_long_enough():
    harmless = load_prompts("builtin:harmless")
    harmful = load_prompts("builtin:harmful")
    assert len(harmless) >= 40 and len(harmful) >= 40
    assert len(set(harmless)) == len(harmless) and not set(harmless) & set(harmful)


def test_json_list_jsonl_and_csv(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"instruction": "x"}, "y", {"goal": "z"}]))
    assert load_prompts(str(tmp_path / "a.json")) == ["x", "y", "z"]
    (tmp_path / "b.jsonl").write_text('{"prompt": "p1"}\n\n{"instruction": "p2"}\n')
    assert load_prompts(str(tmp_path / "b.jsonl")) == ["p1", "p2"]
    (tmp_path / "c.csv").write_text("id,Goal\n1,first\n2,second\n")
    assert load_prompts(str(tmp_path / "c.csv"), limit=1) == ["first"]


def test_shared_data_loads(shared_data):
    prompts = load_prompts(str(shared_data / "advbench.json"), limit=5)
    assert len(prompts) == 5 and all(isinstance(p, str) and p for p in prompts)


@pytest.mark.parametrize(
    "name,content,msg",
    [
        ("bad.json", "{not json", "not valid JSON"),
        ("obj.json", '{"instruction": "x"}', "JSON list"),
        ("empty.json", "[]", "no prompts"),
        ("rows.json", '[{"text": "x"}]', "no instruction/prompt/goal"),
        ("bad.jsonl", '{"prompt": "ok"}\n{oops\n', "line 2"),
        ("cols.csv", "a,b\n1,2\n", "no prompt, instruction or goal column"),
        ("empty.csv", "", "no prompt, instruction or goal column"),
    ],
)
def test_bad_files(tmp_path, name, content, msg):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(LabError, match=msg):
        load_prompts(str(path))


def test_missing_file_unknown_builtin_and_bad_limit(tmp_path):
    with pytest.raises(LabError, match="does not exist"):
        load_prompts(str(tmp_path / "nope.json"))
    with pytest.raises(LabError, match="unknown built-in"):
        load_prompts("builtin:spicy")
    with pytest.raises(LabError, match="positive"):
        load_prompts("builtin:harmless", limit=0)
