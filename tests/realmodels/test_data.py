"""Loaders, k-shot splits and the task registry: counts and label sets of the shared data README."""
import json

import pytest

from ntkcheck.errors import UserError
from ntkcheck.realmodels.data import (SEEDS, Example, cap_test, k_shot_split, load_label_sentence, load_table,
                                      load_task)
from ntkcheck.realmodels.tasks import TASKS, check_template, custom_task, get_task

README_COUNTS = {  # file -> (lines, label set), from shared/data/README.md
    "stsa.binary.train": (6920, {0, 1}), "stsa.binary.dev": (872, {0, 1}), "stsa.binary.test": (1821, {0, 1}),
    "stsa.fine.train": (8544, set(range(5))), "stsa.fine.dev": (1101, set(range(5))),
    "stsa.fine.test": (2210, set(range(5))), "subj.all": (10000, {0, 1}),
    "TREC.train.all": (5452, set(range(6))), "TREC.test.all": (500, set(range(6))),
}


@pytest.mark.parametrize("name", sorted(README_COUNTS))
def test_shared_files_match_readme(data_dir, name):
    ex = load_label_sentence(data_dir / name)
    n, labels = README_COUNTS[name]
    assert len(ex) == n
    assert {e.label for e in ex} == labels
    assert all(e.text and e.text == e.text.strip() for e in ex)


def test_stray_bytes_decode(data_dir):
    trec = load_label_sentence(data_dir / "TREC.train.all")
    assert "sister" in trec[65].text  # line 66 has a byte that is not UTF-8
    subj = load_label_sentence(data_dir / "subj.all")
    assert "h\u00e9roes" in subj[20].text  # Latin-1 line


def test_tasks_load_with_splits(data_dir):
    for name, (ntr, nte) in {"sst2": (6920, 1821), "sst5": (8544, 2210), "trec": (5452, 500),
                             "subj": (8000, 2000)}.items():
        tr, te = load_task(get_task(name), data_dir)
        assert (len(tr), len(te)) == (ntr, nte)


def test_bad_line_names_file_and_line(tmp_path, capsys):
    p = tmp_path / "bad.txt"
    p.write_bytes(b"1 fine sentence\nx not a label\n0 another\n")
    with pytest.raises(UserError, match=r"bad.txt:2: .*'x'"):
        load_label_sentence(p)
    ex = load_label_sentence(p, on_error="skip")
    err = capsys.readouterr().err.splitlines()
    assert len(ex) == 2 and len(err) == 1 and err[0].startswith("ntkcheck: ") and "bad.txt:2" in err[0]
    p.write_bytes(b"1 ok\n3\n")
    with pytest.raises(UserError, match=r"bad.txt:2: .*no sentence"):
        load_label_sentence(p)
    p.write_bytes(b"1 ok\n7 out of range\n")
    with pytest.raises(UserError, match=r"bad.txt:2: .*label 7"):
        load_label_sentence(p, num_labels=2)
    with pytest.raises(UserError, match="cannot read"):
        load_label_sentence(tmp_path / "missing.txt")


def test_tables(tmp_path):
    task = get_task("rte")
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "p", "text_b": "h", "label": "entailment"}) + "\n"
                                      + json.dumps({"text": "p2", "text_b": "h2", "label": 1}) + "\n")
    ex = load_table(tmp_path / "a.jsonl", text2_col="text_b", task=task)
    assert ex == [Example("p", 0, "h"), Example("p2", 1, "h2")]
    (tmp_path / "b.tsv").write_bytes(b"sentence\tlabel\nnice \xe9t\xe9\t1\nbad\t0\n")
    ex = load_table(tmp_path / "b.tsv", text_col="sentence", task=get_task("sst2"))
    assert [e.label for e in ex] == [1, 0] and ex[0].text == "nice \u00e9t\u00e9"
    (tmp_path / "c.csv").write_text("text,label\n\"a, quoted\",positive\nb,2\n")
    with pytest.raises(UserError, match=r"c.csv:3: label 2 outside"):
        load_table(tmp_path / "c.csv", task=get_task("sst2"))
    (tmp_path / "d.jsonl").write_text('{"text": "a", "label": 0}\n{"text": oops}\n')
    with pytest.raises(UserError, match=r"d.jsonl:2: cannot parse JSON"):
        load_table(tmp_path / "d.jsonl")
    with pytest.raises(UserError, match="no column 'label'"):
        (tmp_path / "e.jsonl").write_text('{"text": "a", "y": 0}\n')
        load_table(tmp_path / "e.jsonl")
    (tmp_path / "f.jsonl").write_text('{"text": "a", "label": 0.5}\n')
    assert load_table(tmp_path / "f.jsonl", regression=True)[0].label == 0.5


def test_k_shot_split():
    pool = [Example(f"s{i}", i % 3) for i in range(90)]
    test = [Example(f"t{i}", i % 3) for i in range(50)]
    a = k_shot_split(pool, test, 4, 13, test_max=20, num_labels=3)
    assert [sum(e.label == c for e in a.train) for c in range(3)] == [4, 4, 4]
    assert [sum(e.label == c for e in a.dev) for c in range(3)] == [4, 4, 4]
    assert not {e.text for e in a.train} & {e.text for e in a.dev}
    assert len(a.test) == 20 and a.test == cap_test(test, 20)
    # a smaller cap is a prefix of a larger one, and of the whole set in the same fixed order
    assert cap_test(test, 20) == cap_test(test, 35)[:20] == cap_test(test, None)[:20]
    assert sorted(cap_test(test, None), key=lambda e: int(e.text[1:])) == test and cap_test(test, 50) != test
    assert k_shot_split(pool, test, 4, 13, test_max=20).train == a.train  # deterministic
    assert k_shot_split(pool, test, 4, 21, test_max=20).train != a.train
    assert SEEDS == (13, 21, 42, 87, 100)
    with pytest.raises(UserError, match="label 0 has only 7"):
        k_shot_split(pool[:20], test, 4, 13, num_labels=3)


def test_registry_and_templates():
    assert len(TASKS) == 14
    assert get_task("SST-2").template == "<S1> It was [MASK] ."
    assert get_task("sst5").label_words == ("terrible", "bad", "okay", "good", "great")
    assert get_task("trec").template == "[MASK] : <S1>" and get_task("trec").label_words[2] == "Expression"
    assert get_task("mnli").label_words == ("Yes", "Maybe", "No") and get_task("mnli").pair
    assert get_task("qqp").metric == "f1" and get_task("mrpc").metric == "f1"
    with pytest.raises(UserError, match="unknown task 'nope'"):
        get_task("nope")
    with pytest.raises(UserError, match=r"template '<S1> It was \.' has no \[MASK\]"):
        custom_task(get_task("sst2"), "<S1> It was .")
    with pytest.raises(UserError, match="has no <S1>"):
        check_template("It was [MASK] .", pair=False)
    with pytest.raises(UserError, match="has no <S2>"):
        check_template("<S1> ? [MASK] ,", pair=True)
    with pytest.raises(UserError, match="label-words"):
        custom_task(get_task("sst2"), label_words=["a", "b", "c"])
