"""cast_floating: 16-bit tensors cast, every container kind rebuilt with its own type, the rest left untouched."""

from __future__ import annotations

import collections
import dataclasses

import pytest
import torch

from mixq.amp.tree import cast_floating

BF16 = torch.bfloat16


def low(*shape: int, dtype: torch.dtype = BF16) -> torch.Tensor:
    return torch.randn(*shape or (2,)).to(dtype)


Pair = collections.namedtuple("Pair", "first second")


@dataclasses.dataclass
class Record:
    hidden: torch.Tensor
    steps: int = 0
    extra: dict = dataclasses.field(default_factory=dict)
    derived: str = dataclasses.field(init=False, default="set-later")


@dataclasses.dataclass(frozen=True)
class Frozen:
    value: torch.Tensor


class Tagged(list):
    tag = "kept"


def test_tensors_cast_only_from_16_bit():
    x16, x32, ids = low(3), torch.randn(3), torch.arange(3)
    assert cast_floating(x16, torch.float32).dtype == torch.float32
    assert cast_floating(x32, torch.float32) is x32
    assert cast_floating(ids, torch.float32) is ids, "integer tensors are never cast"
    assert cast_floating(low(3, dtype=torch.float16), BF16).dtype == BF16
    assert cast_floating(x32, BF16) is x32, "only the 16-bit sources are cast (a float32 tensor stays float32)"


@pytest.mark.parametrize("make", [
    pytest.param(lambda t: [t, 1], id="list"),
    pytest.param(lambda t: (t, "a"), id="tuple"),
    pytest.param(lambda t: {"a": t, "b": None}, id="dict"),
    pytest.param(lambda t: collections.OrderedDict(b=1, a=t), id="OrderedDict"),
    pytest.param(lambda t: Pair(t, 2), id="namedtuple"),
    pytest.param(lambda t: Tagged([t, 3]), id="list-subclass"),
])
def test_containers_keep_type_order_and_other_items(make):
    original = make(low(4))
    out = cast_floating(original, torch.float32)
    assert type(out) is type(original)
    assert out is not original, "a changed container is a new object; the caller's is not mutated"
    items = list(out.values()) if isinstance(out, dict) else list(out)
    before = list(original.values()) if isinstance(original, dict) else list(original)
    if isinstance(out, dict):
        assert list(out) == list(original)
    for new, old in zip(items, before, strict=True):
        if isinstance(old, torch.Tensor):
            assert old.dtype == BF16 and new.dtype == torch.float32
            torch.testing.assert_close(new, old.float(), atol=0, rtol=0)
        else:
            assert new is old


def test_defaultdict_keeps_its_factory():
    d = collections.defaultdict(list, x=low(2))
    out = cast_floating(d, torch.float32)
    assert type(out) is collections.defaultdict and out.default_factory is list and out["x"].dtype == torch.float32


def test_list_subclass_keeps_class_attributes():
    out = cast_floating(Tagged([low(2)]), torch.float32)
    assert isinstance(out, Tagged) and out.tag == "kept" and out[0].dtype == torch.float32


def test_dataclasses_plain_frozen_and_init_false_fields():
    rec = Record(low(2), steps=5, extra={"k": low(1)})
    rec.derived = "computed"
    out = cast_floating(rec, torch.float32)
    assert type(out) is Record and out is not rec
    assert out.hidden.dtype == out.extra["k"].dtype == torch.float32
    assert (out.steps, out.derived) == (5, "computed"), "fields not passed to __init__ survive"
    assert rec.hidden.dtype == BF16, "the original is not mutated"
    frozen = cast_floating(Frozen(low(2)), torch.float32)
    assert type(frozen) is Frozen and frozen.value.dtype == torch.float32


def test_torch_return_types():
    result = torch.max(low(3, 4), dim=1)
    out = cast_floating(result, torch.float32)
    assert type(out) is type(result) and out.values.dtype == torch.float32 and out.indices.dtype == torch.int64


def test_nested_and_unchanged_subtrees_are_the_same_objects():
    untouched = {"ids": torch.arange(3), "mask": [torch.ones(2)]}
    tree = {"untouched": untouched, "pairs": [Pair(low(2), Record(low(1)))]}
    out = cast_floating(tree, torch.float32)
    assert out["untouched"] is untouched
    assert type(out["pairs"][0]) is Pair and type(out["pairs"][0].second) is Record
    assert out["pairs"][0].first.dtype == out["pairs"][0].second.hidden.dtype == torch.float32
    assert cast_floating(untouched, torch.float32) is untouched


def test_hf_model_output_keeps_type_attributes_and_items():
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    hidden, pooled = low(1, 3, 4), low(1, 4)
    output = BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooled, hidden_states=(hidden,))
    out = cast_floating(output, torch.float32)
    assert type(out) is BaseModelOutputWithPooling
    assert out.last_hidden_state.dtype == out["pooler_output"].dtype == out[0].dtype == torch.float32
    assert out.last_hidden_state is out["last_hidden_state"] is out[0], "attribute, key and index agree"
    assert type(out.hidden_states) is tuple and out.hidden_states[0].dtype == torch.float32
    assert out.attentions is None and list(out.keys()) == list(output.keys())
    assert output.last_hidden_state.dtype == BF16


def test_a_container_that_cannot_be_rebuilt_keeps_its_type_and_warns():
    class Strict(tuple):
        def __new__(cls, a, b):  # not constructible from one iterable
            return super().__new__(cls, (a, b))

    value = Strict(low(2), 1)
    with pytest.warns(UserWarning, match="cannot rebuild a Strict"):
        out = cast_floating(value, torch.float32)
    assert out is value
