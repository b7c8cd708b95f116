import pytest
import torch

from zreward_diffusers import Rubric
from zreward_diffusers.rubric import RubricDimension


def test_default_rubric_is_the_papers():
    rubric = Rubric()
    assert rubric.dimension_names == ("alignment", "aesthetics", "realism", "physical_plausibility")
    assert rubric.levels == (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0)
    assert rubric.score_tokens == tuple("123456789")
    torch.testing.assert_close(rubric.weights_tensor(), torch.full((4,), 0.25))


def test_messages_put_the_image_first_and_name_the_dimension():
    messages = Rubric().messages("two red circles", "physical_plausibility")
    content = messages[0]["content"]
    assert content[0] == {"type": "image"}
    assert '"two red circles"' in content[1]["text"] and "physical plausibility" in content[1]["text"]


def test_round_trip_through_dict_and_json_lists():
    rubric = Rubric(weights=(1, 2, 3, 4))
    data = rubric.to_dict()
    data["levels"] = list(data["levels"])  # as JSON gives it back
    assert Rubric.from_dict(data) == rubric
    torch.testing.assert_close(rubric.weights_tensor(), torch.tensor([0.1, 0.2, 0.3, 0.4]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dimensions=()), "dimensions"),
        (dict(dimensions=(RubricDimension("a", "q"), RubricDimension("a", "q"))), "unique"),
        (dict(levels=(1.0, 1.0, 2.0), score_tokens=("1", "2", "3")), "levels"),
        (dict(score_tokens=("1", "2")), "score_tokens"),
        (dict(prompt_template="no field"), "prompt_template"),
        # an unknown field or a broken format string failed only when the first image was scored
        (dict(prompt_template="Rate {prompt} for {colour}"), r"prompt_template.*\('colour'\)"),
        (dict(prompt_template="Rate {prompt} {"), "prompt_template.*Single '{'"),
        (dict(prompt_template="Rate {0}: {prompt}"), "prompt_template"),
        (dict(weights=(1.0, -1.0, 1.0, 1.0)), "weights"),
        (dict(weights=(1.0, 1.0)), "weights"),
    ],
)
def test_bad_rubric_fields_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Rubric(**kwargs)


def test_unknown_dimension_and_unknown_field():
    with pytest.raises(ValueError, match="unknown rubric dimension 'colour'"):
        Rubric().dimension_index("colour")
    with pytest.raises(ValueError, match="unknown rubric fields"):
        Rubric.from_dict({"levels": [1, 2], "bogus": 1})
