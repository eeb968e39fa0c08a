"""The knowledge graphs: loading and validation, mention finding, entity-aware masking, descriptions."""

from __future__ import annotations

import numpy as np
import pytest

from sonodistill.data.text import TextTokenizer
from sonodistill.errors import ConfigError
from sonodistill.knowledge import KnowledgeGraph, available_graphs, entity_aware_mask, load_graph


@pytest.fixture(scope="module")
def lung() -> KnowledgeGraph:
    return load_graph("lung")


def test_packaged_graphs_load(lung):
    assert {"lung", "carotid"} <= set(available_graphs())
    assert lung.categories == ["organ", "finding", "location", "descriptor"]
    assert {"b-lines", "a-lines", "effusion", "consolidation", "pleural irregularity"} <= set(lung.of_category("finding"))
    assert lung.related("effusion", "occurs_in") == ["pleura"]
    assert "subpleural" in lung.related("consolidation", "located_at")
    carotid = load_graph("carotid")
    assert carotid.related("plaque", "occurs_in") == ["carotid artery"]


def test_every_finding_occurs_in_an_organ(lung):
    for f in lung.of_category("finding"):
        organs = lung.related(f, "occurs_in")
        assert organs and all(lung.entities[o].category == "organ" for o in organs), f


def test_mentions_longest_form_wins_and_spelling_is_fixed(lung):
    words = lung.words("Pleural effusion, pleural irregularties and normal lung sliding; b lines")
    found = [(m.entity, " ".join(words[m.start:m.end])) for m in lung.find_mentions(words)]
    assert found == [("effusion", "pleural effusion"), ("pleural irregularity", "pleural irregularities"),
                     ("normal lung", "normal lung sliding"), ("b-lines", "b lines")]
    assert lung.entities_in("Small sub pleural consolidation") == ["small", "subpleural", "consolidation"]


def test_neighbours_are_one_hop_and_undirected(lung):
    n = lung.neighbours("consolidation")
    assert {"lung", "subpleural", "small", "air bronchogram"} <= n
    assert "b-lines" not in n  # two hops away (through 'lung')
    assert "consolidation" in lung.neighbours("subpleural")


def test_entity_aware_masking_masks_neighbours_together(lung):
    """Hand case: seeding 'consolidation' masks its location, descriptor and organ, not the B-lines."""
    tok = TextTokenizer.train(["small subpleural consolidation and b-lines in the lung"] + lung.terms(), 400)
    words = lung.words("small subpleural consolidation and b-lines in the lung")
    enc = tok.encode_words(words, 32)
    plan = entity_aware_mask(lung, words, enc.word_ids, np.random.default_rng(0), mask_rate=0.0,
                             seeds=["consolidation"])
    masked_words = {words[enc.word_ids[i]] for i in np.flatnonzero(plan.masked)}
    assert masked_words == {"small", "subpleural", "consolidation", "lung"}
    assert not plan.masked[0] and not plan.masked[len(enc.ids) - 1]  # [CLS], [SEP]
    cats = {words[enc.word_ids[i]]: lung.categories[plan.category[i]] for i in range(len(enc.ids)) if plan.category[i] >= 0}
    assert cats == {"small": "descriptor", "subpleural": "location", "consolidation": "finding",
                    "b-lines": "finding", "lung": "organ"}
    # seeding the B-lines masks them and their organ only
    plan = entity_aware_mask(lung, words, enc.word_ids, np.random.default_rng(0), mask_rate=0.0, seeds=["b-lines"])
    assert {words[enc.word_ids[i]] for i in np.flatnonzero(plan.masked)} == {"b-lines", "lung"}


def test_masking_fills_up_to_the_rate_with_random_tokens(lung):
    words = "the image quality is low and nothing can be seen here today".split()
    tok = TextTokenizer.train([" ".join(words)], 300)
    enc = tok.encode_words(words, 32)
    plan = entity_aware_mask(lung, words, enc.word_ids, np.random.default_rng(1), mask_rate=0.25, entity_prob=1.0)
    n_word_tokens = sum(w is not None for w in enc.word_ids)
    assert plan.masked.sum() == round(0.25 * n_word_tokens) and plan.seeds == []
    assert (plan.category == -1).all()


def test_describe_groups_findings_by_organ(lung):
    text = lung.describe(["b-lines", "effusion", "consolidation"], extras={"severity score": "2"}, absent=["a-lines"])
    assert text == ("Lung ultrasound shows B-lines and consolidation in the lung, and pleural effusion at the "
                    "pleural line. No A-lines. Severity score: 2.")
    assert lung.describe([]) == "Lung ultrasound without the annotated findings."
    with pytest.raises(ConfigError, match="no entity"):
        lung.describe(["unicorn"])


@pytest.mark.parametrize("bad, message", [
    ({"name": "x", "categories": ["organ"], "entities": {"a": {"category": "finding"}}, "relations": []}, "category"),
    ({"name": "x", "categories": ["organ"], "entities": {"a": {"category": "organ"}}, "relations": [["a", "occurs_in", "b"]]},
     "unknown entity 'b'"),
    ({"name": "x", "categories": ["organ"], "entities": {"a": {"category": "organ"}}, "relations": [["a", "likes", "a"]]},
     "unknown relation"),
    ({"name": "x", "categories": ["organ"], "entities": {"a": {"category": "organ", "forms": ["z"]},
                                                         "b": {"category": "organ", "forms": ["z"]}}, "relations": []},
     "names both"),
    ({"name": "x", "categories": ["organ"], "entities": {}}, "missing key 'relations'"),
])
def test_invalid_graphs_are_rejected_naming_the_item(bad, message):
    with pytest.raises(ConfigError, match=message):
        KnowledgeGraph.from_dict(bad, "test.yaml")


def test_load_graph_errors(tmp_path):
    with pytest.raises(ConfigError, match="no packaged knowledge graph"):
        load_graph("kidney")
    with pytest.raises(ConfigError, match="not found"):
        load_graph(tmp_path / "none.yaml")
    p = tmp_path / "g.yaml"
    p.write_text("name: g\ncategories: [organ]\nentities: {heart: {category: organ}}\nrelations: []\n")
    assert load_graph(p).entities["heart"].forms == ("heart",)
