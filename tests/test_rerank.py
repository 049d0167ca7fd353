"""Re-ranking per step (NNCF's accuracy control): the nodes added to float at step k are the most sensitive ones
ranked on the model of step k-1, and results.json shows which attempt each ranking read."""

from __future__ import annotations

from itertools import pairwise

import pytest

from quant.recipe.schema import Fallback
from tests.test_search_space import CLIPPED, _one_run

# Ranges at the 20th percentile: no text survives whatever stays in float, so every step of the float stage runs.
RERANK = {"max_nodes": 3, "samples": 4, "steps": [1, 2, 3], "rerank": True, "step_back": False, "objective": "ctc_exact_match"}


@pytest.fixture(scope="module")
def rerank_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _one_run(tmp_path_factory.mktemp("rerank"), outlier=False, variants={"rerank": {**CLIPPED, "fallback": RERANK}})


def test_each_step_adds_the_nodes_ranked_on_the_previous_steps_model(rerank_run: dict) -> None:
    search = rerank_run["variants"]["rerank"]["search"]
    float_steps = [(i, a) for i, a in enumerate(search["attempts"]) if a["stage"] == "float"]
    assert [a["nodes_in_float"] for _, a in float_steps] == [1, 2, 3]
    # Step 1 reads the ranking of the model with no node in float.
    assert float_steps[0][1]["excluded"] == [search["sensitivity"][0]["node"]] and "ranked_on_attempt" not in float_steps[0][1]
    rankings = {r["attempt"]: r for r in search["rerankings"]}
    for (previous_index, previous), (_, step) in pairwise(float_steps):
        assert step["ranked_on_attempt"] == previous_index
        ranking = rankings[previous_index]
        # Ranked on step k-1's model: its float nodes were no candidates there, one node fewer per node in float.
        assert not set(ranking["top"]) & set(previous["excluded"])
        assert ranking["nodes_in_float"] == len(previous["excluded"]) and ranking["ranked"] == len(search["sensitivity"]) - len(previous["excluded"])
        # Step k keeps step k-1's nodes in float and adds the most sensitive node of that ranking.
        assert step["excluded"] == [*previous["excluded"], ranking["top"][0]]


def test_rerank_is_for_single_nodes() -> None:
    with pytest.raises(ValueError, match="rerank"):
        Fallback(unit="block", rerank=True)
    assert Fallback(rerank=True).rerank and not Fallback().rerank


def test_the_trade_off_table_says_which_model_each_step_was_ranked_on(rerank_run: dict) -> None:
    summary = (rerank_run["run"] / "summary.md").read_text()
    search = rerank_run["variants"]["rerank"]["search"]
    second = next(i for i, a in enumerate(search["attempts"]) if a.get("ranked_on_attempt") is not None)
    assert f"| {second} | tuning | float, re-ranked on #{search['attempts'][second]['ranked_on_attempt']} |" in summary
    assert f"Re-ranked on attempt #{search['rerankings'][0]['attempt']}'s model" in summary
