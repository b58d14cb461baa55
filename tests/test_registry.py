import pytest
import torch

import pprogen
from pprogen.registry import get_card, register_model, _REGISTRY


def test_list_models_matches_pattern_and_is_sorted():
    assert {"vae", "conv_vae"} <= set(pprogen.list_models())
    assert pprogen.list_models("conv_*") == ["conv_vae"]
    assert pprogen.list_models() == sorted(pprogen.list_models())


def test_overrides_replace_defaults():
    model = pprogen.create_model("vae", x_dim=10, z_dim=3, hidden_dims=(7,))
    assert model.z_dim == 3
    assert model.decoder[0].weight.shape == (7, 3)
    assert model.decoder[-1].weight.shape == (10, 7)


def test_unknown_override_names_the_valid_ones():
    with pytest.raises(TypeError, match="z_dim"):
        pprogen.create_model("vae", zdim=3)


def test_unknown_model_suggests_close_names():
    with pytest.raises(ValueError, match="did you mean 'vae'"):
        pprogen.create_model("vea")


def test_duplicate_name_raises_and_keeps_the_first():
    first = get_card("vae").factory
    with pytest.raises(ValueError, match="already registered"):
        @register_model(name="vae")
        def other():
            return None
    assert get_card("vae").factory is first


def test_card_carries_story_reference_kind_and_data():
    card = get_card("vae")
    assert card.kind == "latent"
    assert "Kingma" in card.reference
    assert card.default_data == "digits_binary"
    text = card.describe()
    assert "z ~ N(0, I)" in text and "z_dim=50" in text


def test_bare_decorator_registers_a_user_model():
    @register_model
    def my_test_model(x_dim: int = 3):
        """x ~ N(0, I)"""
        return torch.nn.Linear(x_dim, 1)

    try:
        assert "my_test_model" in pprogen.list_models()
        assert get_card("my_test_model").story == "x ~ N(0, I)"
        assert pprogen.create_model("my_test_model", x_dim=5).in_features == 5
    finally:
        del _REGISTRY["my_test_model"]


@pytest.mark.parametrize("kw, message", [
    ({"natural_order": "False"}, "argument 'natural_order' is true or false, got 'False'; give --set natural_order=true or"),
    ({"direct": 1}, "argument 'direct' is true or false, got 1"),
    ({"hidden_dims": "500,500"}, "argument 'hidden_dims' is a list of sizes, e.g. [500, 500], got the text '500,500'"),
    ({"x_dim": "784"}, "argument 'x_dim' is a number, got the text '784'"),
])
def test_an_argument_of_the_wrong_kind_is_refused(kw, message):
    # a text 'False' for a flag would be truthy: the opposite of what was asked, silently
    with pytest.raises(TypeError) as err:
        pprogen.create_model("made", **kw)
    assert message in str(err.value)


@pytest.mark.parametrize("text, value", [
    ("False", False), ("false", False), ("True", True), ("None", None), ("null", None), ("[500]", [500]),
    ("(16, 16)", (16, 16)), ("0.1", 0.1), ("relu", "relu"), ("1e-3", 1e-3), ("a=b", "a=b"),
])
def test_set_values_are_json_then_python_literals_then_text(text, value):
    from pprogen.engine import parse_pairs

    assert parse_pairs([f"key={text}"]) == {"key": value}


def test_set_false_reaches_the_model_as_false():
    from pprogen.engine import parse_pairs

    model = pprogen.create_model("made", x_dim=6, hidden_dims=(8,), seed=1,
                                 **parse_pairs(["natural_order=False", "direct=True"]))
    assert not torch.equal(model.order[0], torch.arange(6)) and model.direct is not None
