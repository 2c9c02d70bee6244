"""Reading Hydra overrides as text (one reader for tvr-train's resume, tvr-results and sweep folder names) and
quoting a value to write one."""

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from tvr.overrides import hydra_quote, parse_overrides


def test_parse_overrides_strips_plus_and_marks_removals():
    assert parse_overrides(["head=seqtransf", "+foo=bar", "++baz=1", "~x", "~y=3", "lr=a=b"]) == {
        "head": "seqtransf",
        "foo": "bar",
        "baz": "1",
        "x": "(removed)",
        "y": "(removed)",
        "lr": "a=b",
    }


def test_strings_are_read_as_hydra_reads_them_and_other_values_kept_as_written():
    assert parse_overrides(["data.root='/data/my videos'", "+train.tag=a b", r"name=a\,b"]) == {
        "data.root": "/data/my videos",
        "train.tag": "a b",
        "name": "a,b",
    }
    assert parse_overrides(["optim.lr=1e-4", "flag=true", "frames=[1,2]", "seed=0,1", "head=null"]) == {
        "optim.lr": "1e-4",
        "flag": "true",
        "frames": "[1,2]",
        "seed": "0,1",
        "head": "null",
    }


def test_flags_and_their_arguments_are_not_overrides():
    assert parse_overrides(["-m", "--cfg", "job", "ckpt_path=last"]) == {"ckpt_path": "last"}


@pytest.mark.parametrize("text", ["/runs/head=seqtransf,seed=1", "it's here", "C:\\runs\\", "a\\'b", ""])
def test_a_quoted_value_reads_back_as_itself(text):
    item = f"hydra.run.dir={hydra_quote(text)}"
    assert OverridesParser.create().parse_override(item).value() == text
    assert parse_overrides([item]) == {"hydra.run.dir": text}
